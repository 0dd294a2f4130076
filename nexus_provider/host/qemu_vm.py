"""nexus:host:QemuVm, the QEMU process of the VM.

Consumers describe the machine (CPUs, memory, accelerator, ports...); the command line is
built here by the same pure function the reference program uses (`qemu_argv`), on the
machine that runs QEMU, and kept in the state: a changed command line restarts the VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nexus_components.core.lifecycle import Props
from nexus_components.host import lifecycles, mounts
from nexus_components.host.hostfacts import host_os
from nexus_components.host.qemu_argv import GuestMachine, HostFacts, VmFiles, default_qemu_binary, qemu_argv

from ..settings import setting
from ..spec import UNKNOWN, Failure, ResourceSpec, absolute_path, contains_unknown, port, prop
from .base_image import DISK_SIZE, DISK_SIZE_RULE
from .cloud_init_seed import Arch
from .connection import HostConnection, host_input, on_host


class Accelerator(Enum):
    """How QEMU runs the guest's CPU: a hypervisor (KVM on Linux, HVF on macOS, WHPX on Windows) or TCG."""

    KVM = "kvm"
    HVF = "hvf"
    WHPX = "whpx"
    TCG = "tcg"


class VmState(Enum):
    """Whether QEMU runs the VM, or its running state is saved in its disk and QEMU is stopped."""

    RUNNING = "running"
    SUSPENDED = "suspended"


class BindAddress(Enum):
    """The host address forwarded ports listen on (QEMU's user networking forwards only from IPv4)."""

    LOOPBACK = "127.0.0.1"
    ALL_INTERFACES = "0.0.0.0"


class Protocol(Enum):
    """A forwarded port's protocol."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded to a guest port (QEMU user networking)."""

    host: int = port("The port on the host.")
    guest: int = port("The port in the guest.")
    protocol: Protocol = prop("tcp or udp.")


class MountType(Enum):
    """How a host folder is shared: 9p (QEMU's file server; Linux and macOS hosts), virtiofs
    (virtiofsd, Linux hosts) or reverse-sshfs (the guest's sshfs served by the host's sftp-server
    over the VM's SSH connection; any host)."""

    NINE_P = "9p"
    VIRTIOFS = "virtiofs"
    REVERSE_SSHFS = "reverse-sshfs"


@dataclass(frozen=True)
class VmMount:
    """A host folder the VM mounts at each start (nexus:mounts, with its type resolved)."""

    host: str = absolute_path("The folder on this machine.")
    vm: str = prop("Where the VM mounts it.", pattern=mounts.GUEST_PATH, rule=mounts.GUEST_PATH_RULE)
    type: MountType = prop("How it is shared.")
    read_only: bool | None = prop(
        "Mounted read-only (and served read-only where the type can); unset: false."
    )
    container: str | None = prop(
        "Where the playground container bind-mounts the VM path (informational here).",
        pattern=mounts.GUEST_PATH,
        rule=mounts.GUEST_PATH_RULE,
    )


@dataclass(frozen=True)
class QemuVmArgs:
    name: str = setting(
        "The VM's name: the resource's id, QEMU's process name, and its entry in the stack's SSH config.",
        "vm",
        "name",
    )
    state_dir: str = absolute_path(
        "The stack's directory: QEMU's pid file, QMP socket, serial log and the connect script live there; "
        "the disk (`disk.qcow2`) and seed (`cidata.iso`) are read from there."
    )
    arch: Arch = prop("The guest's architecture: x86_64 boots a q35 PC, aarch64 a virt machine with UEFI.")
    accelerator: Accelerator = prop(
        "The accelerator QEMU runs the guest with; it must work on this host (tcg always does)."
    )
    cpus: int = setting("The guest's vCPUs.", "vm", "cpus")
    memory_mib: int = setting("The guest's memory in MiB.", "vm", "memoryMiB")
    machine: str | None = setting(
        "QEMU's machine type (`-machine`); unset: q35 for x86_64, virt for aarch64.", "vm", "machine"
    )
    cpu_model: str | None = setting(
        "QEMU's CPU model (`-cpu`); unset: host under kvm and hvf, max for aarch64 otherwise, QEMU's "
        "default for x86_64 under tcg and whpx.",
        "vm",
        "cpuModel",
    )
    qemu_binary: str | None = setting(
        "The QEMU system emulator (a name on PATH or a path); unset: qemu-system-<arch>.", "vm", "qemuBinary"
    )
    firmware_code: str | None = setting(
        "aarch64 (required there): the UEFI code image for the virt machine's 64 MiB flash; "
        "unset for x86_64.",
        "vm",
        "firmwareCode",
    )
    firmware_vars_template: str | None = setting(
        "aarch64: the template of the VM's own UEFI variable store (kept across restarts); unset: a "
        "blank store the size of the code image.",
        "vm",
        "firmwareVars",
    )
    bind_address: BindAddress = prop("The host address the forwarded ports listen on.")
    ssh_port: int = port("The host port forwarded to the guest's sshd (port 22).")
    forwards: list[PortForward] = prop("More forwarded ports, after SSH's.")
    username: str = prop("The guest's login user (CloudInitSeed's `username`).")
    private_key: str = prop("The private key's file the VM is reached with (SshKey's `privateKeyPath`).")
    instance_id: str = prop(
        "The seed's instance id (CloudInitSeed's `instanceId`): a new seed restarts the VM."
    )
    overlay_id: str = prop("The disk's id (OverlayDisk's `id`): a new disk makes a new VM.")
    boot_timeout_seconds: float = prop(
        "How long `up` waits for SSH to answer and cloud-init to finish.", minimum=1, maximum=86400
    )
    qmp_tcp_port: int | None = port("Windows hosts: the QMP port (a TCP socket); unset elsewhere.")
    disk_size: str | None = prop(
        "The disk's size (OverlayDisk's `diskSize`): when it grows while the VM runs, the guest's root "
        "partition and file system are grown over SSH, without a restart (a boot grows them by itself).",
        pattern=DISK_SIZE,
        rule=DISK_SIZE_RULE,
    )
    state: VmState | None = prop(
        "running (unset: the same), or suspended: the running VM is saved into its disk (RAM and "
        "device state) and QEMU stopped, freeing the host's memory and CPU; running again resumes it "
        "where it was, without a boot."
    )
    mounts: list[VmMount] | None = prop(
        "Host folders shared into the VM (QEMU devices; the guest mounts them at each start and lists "
        "them in its fstab): a change restarts the VM."
    )
    virtiofsd: str | None = prop("virtiofs mounts: the virtiofsd binary (a path); unset otherwise.")
    sftp_server: str | None = prop(
        "reverse-sshfs mounts: the host's OpenSSH sftp-server (a path); unset otherwise."
    )
    host: HostConnection | None = host_input()


@dataclass(frozen=True)
class QemuVmState:
    argv: list[str] = prop("QEMU's whole command line, program first, as built from the inputs.")
    ssh_host: str = prop("The address SSH reaches the VM at: the bind address, or 127.0.0.1 for 0.0.0.0.")
    pid: int = prop("QEMU's process id (0 when `refresh` found it not running).")
    ready_seconds: float = prop("How long the VM took to be ready: SSH answering and cloud-init done.")


def _firmware_for_aarch64(props: Props) -> list[Failure]:
    if props["arch"] == Arch.AARCH64.value and not props.get("firmware_code"):
        return [Failure("firmwareCode", "missing while arch is aarch64; allowed: the UEFI code image's path")]
    return []


# What the command line is made of (the rest only decides when QEMU starts again).
_COMMAND_LINE_INPUTS = (
    "name",
    "state_dir",
    "arch",
    "accelerator",
    "cpus",
    "memory_mib",
    "machine",
    "cpu_model",
    "qemu_binary",
    "firmware_code",
    "firmware_vars_template",
    "bind_address",
    "ssh_port",
    "forwards",
    "qmp_tcp_port",
    "mounts",
)


def _with_command_line(props: Props) -> Props:
    """The command line QEMU gets on this host, and where SSH reaches the guest."""
    if contains_unknown([props.get(name) for name in _COMMAND_LINE_INPUTS]):
        return {**props, "argv": UNKNOWN, "ssh_host": UNKNOWN}
    os_name = host_os()
    network = lifecycles.vm_network(props)
    machine = GuestMachine(
        name=props["name"],
        arch=props["arch"],
        cpus=int(props["cpus"]),
        memory_mib=int(props["memory_mib"]),
        machine=props.get("machine"),
        cpu_model=props.get("cpu_model"),
        firmware_code=props.get("firmware_code"),
    )
    host = HostFacts(
        os=os_name,
        accelerator=props["accelerator"],
        qemu_binary=props.get("qemu_binary") or default_qemu_binary(props["arch"], os_name),
        firmware_code=props.get("firmware_code"),
        firmware_vars_template=props.get("firmware_vars_template"),
    )
    argv = qemu_argv(
        machine,
        network,
        host,
        VmFiles.of(lifecycles.vm_paths(props)),
        mounts.from_props(props.get("mounts")),
    )
    return {**props, "argv": argv, "ssh_host": network.ssh_host}


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:QemuVm",
    description="The VM: a QEMU process, ready when SSH answers and cloud-init has finished. "
    "`preview` shows a VM that was killed, or a guest that hangs, as a restart on the same disk; "
    "`destroy` powers it off (ACPI, then QMP quit, then kill).",
    inputs=QemuVmArgs,
    outputs=QemuVmState,
    lifecycle=on_host("QemuVm", lifecycles.QemuVm()),
    checks=_firmware_for_aarch64,
    derive=_with_command_line,
)

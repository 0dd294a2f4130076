"""nexus:host:QemuVm, the QEMU process of the VM."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nexus_components import lifecycles
from nexus_components.config import VM_MIN_MEMORY_MIB

from ..spec import ResourceSpec, absolute_path, port, prop


class Accelerator(Enum):
    """How QEMU runs the guest's CPU: a hypervisor (KVM on Linux, HVF on macOS, WHPX on Windows) or TCG."""

    KVM = "kvm"
    HVF = "hvf"
    WHPX = "whpx"
    TCG = "tcg"


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


@dataclass(frozen=True)
class QemuVmArgs:
    name: str = prop("The VM's name: the resource's id, and its entry in the stack's SSH config.")
    state_dir: str = absolute_path(
        "The stack's directory: QEMU's pid file, QMP socket, serial log and the connect script live there."
    )
    argv: list[str] = prop("QEMU's whole command line, program first; a changed one restarts the VM.")
    accelerator: Accelerator = prop("The accelerator the command line uses (for progress messages).")
    cpus: int = prop(
        "The vCPUs the command line gives the guest (for progress messages).", minimum=1, maximum=64
    )
    memory_mib: int = prop(
        "The memory the command line gives the guest, in MiB (for progress messages).",
        minimum=VM_MIN_MEMORY_MIB,
        maximum=262144,
    )
    firmware_code: str | None = prop("aarch64: the UEFI code image; unset for x86_64.")
    firmware_vars_template: str | None = prop(
        "aarch64: the template of the VM's own UEFI variable store (kept across restarts); unset: a "
        "blank store the size of the code image."
    )
    bind_address: str = prop("The host address the forwarded ports listen on.")
    ssh_host: str = prop("The address SSH reaches the VM at (the bind address, or 127.0.0.1 for 0.0.0.0).")
    ssh_port: int = port("The host port forwarded to the guest's sshd.")
    forwards: list[PortForward] = prop("More forwarded ports.")
    username: str = prop("The guest's login user.")
    private_key: str = prop("The private key's file the VM is reached with (SshKey's `privateKeyPath`).")
    instance_id: str = prop(
        "The seed's instance id (CloudInitSeed's `instanceId`): a new seed restarts the VM."
    )
    overlay_id: str = prop("The disk's id (OverlayDisk's `id`): a new disk makes a new VM.")
    boot_timeout_seconds: float = prop(
        "How long `up` waits for SSH to answer and cloud-init to finish.", minimum=1, maximum=86400
    )
    qmp_tcp_port: int | None = port("Windows hosts: the QMP port (a TCP socket); unset elsewhere.")


@dataclass(frozen=True)
class QemuVmState:
    pid: int = prop("QEMU's process id (0 when `refresh` found it not running).")
    ready_seconds: float = prop("How long the VM took to be ready: SSH answering and cloud-init done.")


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:QemuVm",
    description="The VM: a QEMU process, ready when SSH answers and cloud-init has finished. "
    "`preview` shows a VM that was killed, or a guest that hangs, as a restart on the same disk; "
    "`destroy` powers it off (ACPI, then QMP quit, then kill).",
    inputs=QemuVmArgs,
    outputs=QemuVmState,
    lifecycle=lifecycles.QemuVm(),
)

"""nexus:index:Lab's typed arguments and outputs, and what the Lab makes of them.

The arguments have the shape of the reference program's `nexus:` stack configuration
(image, vm, network, guest, paths; the same keys and rules), so a value either one refuses,
the other refuses too, and `config.load_config` fills in the same defaults. From the loaded
configuration come the inputs of each host resource the Lab declares.

Pure Python: no Pulumi import (the component itself is `lab.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from nexus_components import lab_settings
from nexus_components.config import NexusConfig
from nexus_components.core import ssh
from nexus_components.core.ssh import SshTarget
from nexus_components.host import mounts as host_mounts
from nexus_components.host import remote
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import HostFacts, qmp_tcp_port

from .guest.inner_qemu import ContainerPortToGuest, InnerAccelerator
from .host.cloud_init_seed import Arch
from .host.qemu_vm import BindAddress, Protocol, VmState
from .settings import item_rule, ruled, setting, setting_rule
from .spec import camel_case, port, prop

Props = dict[str, Any]


class AcceleratorChoice(Enum):
    """How QEMU runs the guest's CPU. auto: the host's hypervisor (KVM, HVF or WHPX) when QEMU can
    really start a vCPU with it, else tcg (software emulation: minutes to boot, not seconds)."""

    AUTO = "auto"
    KVM = "kvm"
    HVF = "hvf"
    WHPX = "whpx"
    TCG = "tcg"


@dataclass(frozen=True)
class LabImage:
    """The cloud image the VM's disk starts from."""

    url: str | None = setting(
        "An http(s) URL, a file:// URL or a local path (air-gapped machines) of a qcow2 cloud image; "
        "unset: Ubuntu 24.04's cloud image for the architecture.",
        "image",
        "url",
    )
    sha256: str | None = setting(
        "The image's expected SHA-256; unset: read from SHA256SUMS beside the URL.", "image", "sha256"
    )


@dataclass(frozen=True)
class LabVm:
    """The VM: its machine, resources and QEMU programs."""

    name: str | None = setting("The VM's name; unset: nexus-<stack>.", "vm", "name")
    arch: Arch | None = prop("The guest's architecture; unset: x86_64.")
    cpus: int | None = setting("vCPUs; unset: 2. A change restarts the VM on the same disk.", "vm", "cpus")
    memory_mib: int | None = setting(
        "Memory in MiB; unset: 4096. A change restarts the VM on the same disk.", "vm", "memoryMiB"
    )
    disk_size: str | None = setting(
        "The disk's size; unset: 20G. A larger size grows the disk in place; a smaller one is refused.",
        "vm",
        "diskSize",
    )
    accelerator: AcceleratorChoice | None = prop("The accelerator; unset: auto.")
    machine: str | None = setting(
        "QEMU's machine type; unset: q35 for x86_64, virt (with GICv3) for aarch64.", "vm", "machine"
    )
    cpu_model: str | None = setting("QEMU's CPU model; unset: chosen for the accelerator.", "vm", "cpuModel")
    qemu_binary: str | None = setting(
        "The QEMU system emulator; unset: qemu-system-<arch> on PATH.", "vm", "qemuBinary"
    )
    qemu_img_binary: str | None = setting("qemu-img; unset: qemu-img on PATH.", "vm", "qemuImgBinary")
    firmware_code: str | None = setting(
        "aarch64: the UEFI code image; unset: found beside QEMU or where the host's packages put it.",
        "vm",
        "firmwareCode",
    )
    firmware_vars: str | None = setting(
        "aarch64: the template of the VM's UEFI variable store; unset: the one beside the code image.",
        "vm",
        "firmwareVars",
    )
    boot_timeout_seconds: int | None = setting(
        "How long `up` waits for SSH and cloud-init; unset: 900.", "vm", "bootTimeoutSeconds"
    )
    state: VmState | None = prop(
        "running (unset: the same), or suspended: the VM's running state saved into its disk and QEMU "
        "stopped; running again resumes it in seconds. Not yet with the guest layers on."
    )


@dataclass(frozen=True)
class LabPortForward:
    """A host port forwarded to a guest port, as the stack setting nexus:network.forwards has it."""

    host: int = port("The port on the host.")
    guest: int = port("The port in the guest.")
    protocol: Protocol | None = prop("tcp or udp; unset: tcp.")


@dataclass(frozen=True)
class LabNetwork:
    """The VM's forwarded ports (QEMU user networking)."""

    bind_address: BindAddress | None = prop("Where the forwarded ports listen; unset: 127.0.0.1.")
    ssh_port: int | None = setting(
        "The host port forwarded to the guest's sshd; unset: 2222.", "network", "sshPort"
    )
    qmp_port: int | None = setting(
        "Windows hosts: the QMP port (TCP); unset: 4444. Unused elsewhere (a socket).", "network", "qmpPort"
    )
    forwards: list[LabPortForward] | None = prop(
        "More forwarded ports (each host port once); unset: 8080 -> 80 and 8443 -> 443."
    )


_PACKAGE = setting_rule("guest", "packages")["items"]


@dataclass(frozen=True)
class LabGuest:
    """The guest's login and what cloud-init sets up at first boot."""

    username: str | None = setting("The login user, with sudo; unset: ubuntu.", "guest", "username")
    hostname: str | None = setting("The guest's host name; unset: the VM's name.", "guest", "hostname")
    ssh_public_key_file: str | None = setting(
        "Your own public key (with sshPrivateKeyFile); unset: a per-stack ed25519 pair is generated.",
        "guest",
        "sshPublicKeyFile",
    )
    ssh_private_key_file: str | None = setting(
        "The private half of sshPublicKeyFile; it is never deleted.", "guest", "sshPrivateKeyFile"
    )
    install_packages: bool | None = prop(
        "Install the lab's packages (docker.io, qemu, libvirt, cpu-checker); unset: true. Minutes under tcg."
    )
    packages: list[str] | None = prop(
        "More packages to install; unset: none.", pattern=_PACKAGE["pattern"], rule=_PACKAGE["description"]
    )
    user_data: dict[str, Any] | None = prop("More cloud-config, merged into the generated one; unset: none.")


@dataclass(frozen=True)
class LabPaths:
    """Where the lab's files go on this machine."""

    state_dir: str | None = setting(
        "The stack's directory (absolute, or starting with ~/); `destroy` removes it with everything the "
        "stack made. Unset: ~/.nexus-nested-vm/stacks/<stack>.",
        "paths",
        "stateDir",
    )
    cache_dir: str | None = setting(
        "The image cache shared by all stacks; `destroy` keeps it. Unset: ~/.cache/nexus-nested-vm/images.",
        "paths",
        "cacheDir",
    )


class RestartPolicy(Enum):
    """Docker's restart policy for the playground container."""

    NO = "no"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"
    ON_FAILURE = "on-failure"


@dataclass(frozen=True)
class LabPublishedPort:
    """A container port published on a VM port."""

    vm: int = port("The VM port (free: not the VM's sshd, tcp 22, nor another entry's).")
    container: int = port("The container port.")
    protocol: Protocol | None = prop("tcp or udp; unset: tcp.")


@dataclass(frozen=True)
class LabVolume:
    """A VM path or a named volume, mounted in the container."""

    source: str = ruled(
        "An absolute VM path (a bind mount) or a named volume.", item_rule("playground", "volumes", "source")
    )
    target: str = ruled("Where it is mounted in the container.", item_rule("playground", "volumes", "target"))
    read_only: bool | None = prop("Mounted read-only; unset: false.")


@dataclass(frozen=True)
class LabPlayground:
    """The playground container in the VM (the stack setting nexus:playground): Docker runs it from one
    image source (image, buildContext, imageTarball or rootfsTarball; unset: ubuntu:24.04)."""

    enabled: bool | None = prop("Run the container; unset: true. false stops at the VM (and Docker in it).")
    name: str | None = setting("The container's name; unset: nexus-playground.", "playground", "name")
    image: str | None = setting("An image reference, pulled in the VM.", "playground", "image")
    build_context: str | None = setting(
        "A folder with a Dockerfile on this machine, sent to the VM's Docker and built there.",
        "playground",
        "buildContext",
    )
    image_tarball: str | None = setting(
        "A `docker save` archive on this machine, streamed into the VM's `docker load`.",
        "playground",
        "imageTarball",
    )
    rootfs_tarball: str | None = setting(
        "A root-file-system tar on this machine, streamed into `docker import`; needs command.",
        "playground",
        "rootfsTarball",
    )
    command: list[str] | None = prop("What the container runs, as a list; unset: the image's.")
    ports: list[LabPublishedPort] | None = prop("Published ports; unset: 80 -> 80 and 443 -> 443.")
    env: dict[str, str] | None = prop("Environment variables, passed as typed (no shell); unset: none.")
    volumes: list[LabVolume] | None = prop("Mounts; unset: none.")
    restart: RestartPolicy | None = prop("Docker's restart policy; unset: unless-stopped.")
    privileged: bool | None = prop("Run it privileged; unset: false.")
    devices: list[str] | None = ruled(
        "Devices of the VM given to it (/dev/kvm is added for an inner VM when KVM works); unset: none.",
        item_rule("playground", "devices"),
    )
    ready_timeout_seconds: int | None = setting(
        "How long `up` waits for cloud-init and the Docker daemon; unset: 900.",
        "playground",
        "readyTimeoutSeconds",
    )


@dataclass(frozen=True)
class LabInnerImage:
    """A qcow2 or raw cloud image for the inner VM."""

    url: str = ruled(
        "A path on this machine, a file:// or an http(s) URL.",
        setting_rule("innerVm", "image")["properties"]["url"],
    )
    sha256: str | None = ruled(
        "Its SHA-256; unset: from SHA256SUMS beside the image.",
        setting_rule("innerVm", "image")["properties"]["sha256"],
    )


@dataclass(frozen=True)
class LabInnerVm:
    """A VM inside the playground container (the stack setting nexus:innerVm), booted from exactly one of
    image, kernel or iso."""

    enabled: bool | None = prop("Start it; unset: false. Needs the playground.")
    name: str | None = setting("Its name; unset: inner.", "innerVm", "name")
    cpus: int | None = setting("vCPUs; unset: 1.", "innerVm", "cpus")
    memory_mib: int | None = setting(
        "Memory in MiB; unset: 1024. Must leave the VM at least 512 MiB of its own.", "innerVm", "memoryMiB"
    )
    disk_size: str | None = setting("Its disk's size; unset: 10G.", "innerVm", "diskSize")
    accelerator: InnerAccelerator | None = prop("The accelerator; unset: auto.")
    kernel: str | None = setting("A kernel to boot directly (a path in the container).", "innerVm", "kernel")
    initrd: str | None = setting("Its initrd (a path in the container).", "innerVm", "initrd")
    kernel_args: str | None = setting("Its command line; unset: console=ttyS0.", "innerVm", "kernelArgs")
    iso: str | None = setting("An ISO to boot (a path in the container).", "innerVm", "iso")
    image: LabInnerImage | None = prop("A cloud image to boot, with its own seed and the stack's SSH key.")
    username: str | None = setting(
        "The cloud image's login user; unset: guest.username.", "innerVm", "username"
    )
    hostname: str | None = setting("The cloud image's host name; unset: its name.", "innerVm", "hostname")
    forwards: list[ContainerPortToGuest] | None = prop("Container ports forwarded to its ports; unset: none.")
    powerdown_timeout_seconds: int | None = setting(
        "How long a graceful stop waits; unset: 60.", "innerVm", "powerdownTimeoutSeconds"
    )
    boot_timeout_seconds: int | None = setting(
        "How long `up` waits for it; unset: 300.", "innerVm", "bootTimeoutSeconds"
    )


class MountTypeChoice(Enum):
    """How a host folder is shared. auto: 9p on Linux and macOS hosts, reverse-sshfs on Windows. 9p:
    QEMU's own file server (the guest kernel needs 9p: Ubuntu's has it, Debian's cloud kernel has
    not). virtiofs: virtiofsd, Linux hosts only, the fastest. reverse-sshfs: the guest's sshfs, served
    by this machine's sftp-server over the VM's SSH connection (the guest needs sshfs)."""

    AUTO = "auto"
    NINE_P = "9p"
    VIRTIOFS = "virtiofs"
    REVERSE_SSHFS = "reverse-sshfs"


_MOUNT = host_mounts.SCHEMA["items"]["properties"]


@dataclass(frozen=True)
class LabMount:
    """A folder on this machine shared into the VM and, with `container`, the playground container,
    and with `innerVm` too, the inner VM (the stack setting nexus:mounts). Mounts never create,
    change or delete a host file."""

    host: str = ruled(
        "The folder on this machine (absolute, ~/..., or relative to the project).", _MOUNT["host"]
    )
    vm: str = ruled("Where the VM mounts it (not under /proc, /sys, /dev, /etc...).", _MOUNT["vm"])
    container: str | None = ruled(
        "Where the playground container sees it (a bind mount of the VM path); unset: not in the container.",
        _MOUNT["container"],
    )
    inner_vm: str | None = ruled(
        "Where the inner VM sees it: 9p from the container path (needs container and the inner VM "
        "enabled); unset: not in the inner VM.",
        _MOUNT["innerVm"],
    )
    read_only: bool | None = prop("Read-only in every layer; unset: false.")
    type: MountTypeChoice | None = prop("How it is shared; unset: auto.")


@dataclass(frozen=True)
class LabHost:
    """A Linux server the lab runs on (the stack setting nexus:host): its QEMU, files and ports are
    there, reached over SSH; this machine keeps only the stack's key pair and connect script."""

    ssh: str = prop("user@server or user@server:port.")
    key_file: str | None = prop("The private key to log in with; unset: your SSH agent and ~/.ssh keys.")
    known_hosts_file: str | None = prop(
        "The known-hosts file that pins the server's key; unset: ~/.ssh/known_hosts (a new server is "
        "remembered on first use)."
    )


@dataclass(frozen=True)
class LabArgs:
    image: LabImage | None = prop("The cloud image (the stack setting nexus:image).")
    vm: LabVm | None = prop("The VM (nexus:vm).")
    network: LabNetwork | None = prop("The forwarded ports (nexus:network).")
    guest: LabGuest | None = prop("The guest's login and first boot (nexus:guest).")
    paths: LabPaths | None = prop("The lab's directories (nexus:paths).")
    playground: LabPlayground | None = prop("The container in the VM (nexus:playground); unset: on.")
    inner_vm: LabInnerVm | None = prop("The VM in the container (nexus:innerVm); unset: off.")
    mounts: list[LabMount] | None = prop("Host folders shared into the lab (nexus:mounts); unset: none.")
    host: LabHost | None = prop("Where the lab runs (nexus:host): a server over SSH; unset: this machine.")


@dataclass(frozen=True)
class LabOutputs:
    ssh_command: str = prop("The command that logs into the VM.")
    ssh_port: int = prop("The host port forwarded to the guest's sshd.")
    private_key_path: str = prop("The private key's file the VM is reached with.")
    vm_pid: int = prop("QEMU's process id.")
    vm_ready_seconds: float = prop("How long the VM took to be ready: SSH answering and cloud-init done.")
    serial_log: str = prop("The guest's serial console, as a file.")
    connect_script: str = prop("A script that logs into the VM (`ssh` with the stack's key and port).")
    tunnel_script: str | None = prop(
        "For a lab on a server (nexus:host): a script that forwards its ports from the server's loopback "
        "to this machine's (`ssh -L`), until Ctrl-C."
    )
    accelerator: str = prop("The accelerator QEMU runs the guest with (what auto chose).")
    state_dir: str = prop("The stack's directory (on the server, for a lab on a remote host).")
    host: str = prop(
        "Where the lab runs: `local`, or the server as user@server:port (nexus:host); `serialLog` and "
        "`stateDir` are paths there."
    )
    docker_version: str | None = prop(
        "Docker's version in the VM (with the playground or guest.installPackages)."
    )
    kvm_usable: bool | None = prop("Whether the VM's /dev/kvm can run guests.")
    kvm_verdict: str | None = prop("What kvm-ok says in the VM.")
    libvirt_version: str | None = prop("libvirtd's version in the VM.")
    docker_ready_seconds: float | None = prop("How long `up` waited for Docker in the VM.")
    playground_container: str | None = prop("The playground container's name.")
    playground_image_digest: str | None = prop("The digest (or id) of the image it runs.")
    playground_shell_script: str | None = prop("A script that opens a shell in the container.")
    inner_vm_accelerator: str | None = prop("The inner VM's accelerator: kvm or tcg.")
    inner_vm_qmp_status: str | None = prop("The inner VM's QMP status: running once up.")
    inner_vm_ready_seconds: float | None = prop("How long the inner VM took to be ready.")
    inner_vm_reach: str | None = prop("How to reach the inner VM: its shell script, console and ports.")
    inner_vm_serial_log: str | None = prop("The inner VM's serial console, a file in the container.")
    inner_vm_shell_script: str | None = prop("A script that logs into the inner VM through the VM.")


# Lab property names (camelCase of the Python names) that the stack configuration spells otherwise.
_CONFIG_KEYS = lab_settings.SETTING


def config_document(props: Props) -> dict[str, Any]:
    """The Lab's arguments as the `nexus:` stack configuration `config.load_config` reads."""

    def settings(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                _CONFIG_KEYS.get(key, key): settings(item) for key, item in value.items() if item is not None
            }
        if isinstance(value, list):
            return [settings(item) for item in value]
        return value

    return {camel_case(section): settings(values) for section, values in props.items() if values is not None}


# ---------------------------------------------------------------- the host resources' inputs


def state_dir_inputs(config: NexusConfig, host: HostFacts) -> Props:
    return {
        "state_dir": str(config.state_dir),
        "stack": config.stack,
        "qmp_tcp_port": qmp_tcp_port(config, host),
    }


def local_dir_inputs(config: NexusConfig) -> Props:
    """A lab on a remote host: the directory here that holds its key pair and connect script."""
    return {"state_dir": str(config.key_dir), "stack": config.stack}


def overlay_disk_inputs(
    config: NexusConfig, host: HostFacts, qemu_img: str, base_path: Any, base_digest: Any
) -> Props:
    return {
        "state_dir": str(config.state_dir),
        "base_path": base_path,
        "base_digest": base_digest,
        "disk_size": config.vm.disk_size,
        "qemu_img": qemu_img,
        "qmp_tcp_port": qmp_tcp_port(config, host),
    }


def qemu_vm_inputs(
    config: NexusConfig,
    host: HostFacts,
    private_key: Any,
    instance_id: Any,
    overlay_id: Any,
    virtiofsd: str | None = None,
    sftp_server: str | None = None,
) -> Props:
    vm, network = config.vm, config.network
    aarch64 = vm.arch == Arch.AARCH64.value
    return {
        "name": vm.name,
        "state_dir": str(config.state_dir),
        "arch": vm.arch,
        "accelerator": host.accelerator,
        "cpus": vm.cpus,
        "memory_mib": vm.memory_mib,
        "machine": vm.machine,
        "cpu_model": vm.cpu_model,
        "qemu_binary": host.qemu_binary,
        "firmware_code": host.firmware_code if aarch64 else None,
        "firmware_vars_template": host.firmware_vars_template if aarch64 else None,
        "bind_address": network.bind_address,
        "ssh_port": network.ssh_port,
        "forwards": [
            {"host": forward.host, "guest": forward.guest, "protocol": forward.protocol}
            for forward in network.forwards
        ],
        "username": config.guest.username,
        "private_key": private_key,
        "instance_id": instance_id,
        "overlay_id": overlay_id,
        "boot_timeout_seconds": vm.boot_timeout_seconds,
        "qmp_tcp_port": qmp_tcp_port(config, host),
        "disk_size": vm.disk_size,
        # Unset while running: a stack from before nexus:vm.state existed sees no change.
        "state": vm.state if vm.state != "running" else None,
        # None without mounts, so a lab without them keeps the inputs it had (no restart).
        "mounts": host_mounts.as_props(config.mounts) or None,
        "virtiofsd": virtiofsd,
        "sftp_server": sftp_server,
    }


def vm_target(config: NexusConfig, private_key_path: str) -> SshTarget:
    """The VM's sshd as the user reaches it: through the server, for a lab on a remote host."""
    network = config.network
    return SshTarget(
        network.ssh_host,
        network.ssh_port,
        config.guest.username,
        Path(private_key_path),
        config.host.proxy_command() if config.host else (),
    )


def ssh_command(config: NexusConfig, private_key_path: str) -> str:
    return vm_target(config, private_key_path).interactive_command()


def connect_script(config: NexusConfig, private_key_path: str) -> str:
    return ssh.connect_script(vm_target(config, private_key_path))


def tunnel_script(config: NexusConfig) -> str:
    """For a lab on a server: the script that brings its forwarded TCP ports to this machine."""
    assert config.host is not None
    ports = [forward.host for forward in config.network.forwards if forward.protocol == "tcp"]
    return remote.tunnel_script(config.host, ports)


def file_outputs(config: NexusConfig, host: HostFacts) -> Props:
    """The Lab's outputs that are known before anything is made."""
    paths = VmPaths(config.state_dir)
    return {
        "ssh_port": config.network.ssh_port,
        "serial_log": str(paths.serial_log),
        # For a lab on a remote host, the one here (the server has its own in the stack's directory).
        "connect_script": str(VmPaths(config.key_dir).connect_script),
        "tunnel_script": str(VmPaths(config.key_dir).tunnel_script) if config.host else None,
        "accelerator": host.accelerator,
        "state_dir": str(config.state_dir),
        "host": config.host.label if config.host else "local",
    }

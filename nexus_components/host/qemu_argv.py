"""The QEMU command line, built by one pure function from the config and the host's facts.

Nothing here looks at the machine: `HostFacts` carries what was detected (see
`hostfacts.py`), so the command line for macOS and Windows is unit-tested on Linux.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from nexus_components.core.errors import ConfigError
from nexus_components.host import mounts as host_mounts
from nexus_components.host.paths import MAX_MOUNTS, VmPaths
from nexus_components.host.settings import HostConfig, NetworkConfig, PortForward, VmConfig


@dataclass(frozen=True)
class HostFacts:
    os: str  # "linux", "darwin" or "windows"
    accelerator: str  # the accelerator chosen for this run (never "auto")
    qemu_binary: str
    firmware_code: str | None = None  # UEFI code image, needed for aarch64 guests
    firmware_vars_template: str | None = None  # what a new VM's variable store starts as


@dataclass(frozen=True)
class VmFiles:
    """The per-VM files QEMU is pointed at (from `paths.VmPaths`, or Windows paths in tests)."""

    overlay_disk: PurePath
    seed_iso: PurePath
    serial_log: PurePath
    pid_file: PurePath
    firmware_vars: PurePath
    qmp_socket: PurePath | None  # None on Windows: QMP goes over TCP there
    qmp_tcp_port: int | None = None
    # virtiofsd's socket for nexus:mounts[i] (virtiofs mounts only use theirs).
    virtiofs_sockets: tuple[PurePath, ...] = ()

    @classmethod
    def of(cls, paths: VmPaths) -> VmFiles:
        return cls(
            overlay_disk=paths.overlay_disk,
            seed_iso=paths.seed_iso,
            serial_log=paths.serial_log,
            pid_file=paths.pid_file,
            firmware_vars=paths.firmware_vars,
            qmp_socket=None if paths.qmp_tcp_port else paths.qmp_socket,
            qmp_tcp_port=paths.qmp_tcp_port,
            virtiofs_sockets=tuple(paths.virtiofs_socket(i) for i in range(MAX_MOUNTS)),
        )


@dataclass(frozen=True)
class GuestMachine:
    """The VM's own part of the command line: what nexus:vm sets (`of`), or the typed inputs
    of the nexus provider's QemuVm resource."""

    name: str
    arch: str
    cpus: int
    memory_mib: int
    machine: str | None = None
    cpu_model: str | None = None
    firmware_code: str | None = None

    @classmethod
    def of(cls, vm: VmConfig) -> GuestMachine:
        return cls(
            name=vm.name,
            arch=vm.arch,
            cpus=vm.cpus,
            memory_mib=vm.memory_mib,
            machine=vm.machine,
            cpu_model=vm.cpu_model,
            firmware_code=vm.firmware_code,
        )


def qmp_tcp_port(config: HostConfig, host: HostFacts) -> int | None:
    """Where QMP listens: a TCP port on Windows, whose QEMU has no UNIX sockets; else None (a socket)."""
    return config.network.qmp_port if host.os == "windows" else None


DISK_ID = "disk0"  # the id QMP's block_resize addresses


def default_qemu_binary(arch: str, os: str) -> str:
    binary = f"qemu-system-{arch}"
    return binary + ".exe" if os == "windows" else binary


def default_machine(arch: str) -> str:
    return "virt" if arch == "aarch64" else "q35"


def machine_option(vm: VmConfig | GuestMachine, accelerator: str) -> str:
    """The -machine value: the machine type, its options for this guest, the accelerator."""
    machine = vm.machine or default_machine(vm.arch)
    options = [machine]
    if vm.arch == "aarch64" and machine.startswith("virt"):
        # virt's default GICv2 stops at 8 vCPUs; "max" is GICv3 under TCG and hvf, and
        # whatever the host's interrupt controller offers under KVM.
        options.append("gic-version=max")
    return ",".join([*options, f"accel={accelerator}"])


def default_cpu_model(arch: str, accelerator: str) -> str | None:
    if accelerator in ("kvm", "hvf"):
        return "host"
    if arch == "aarch64":
        # virt's default CPU is 32-bit; "max" is the widest model TCG and WHPX emulate.
        # Under TCG, pointer authentication with the architected QARMA algorithm costs
        # every signed call and return; QEMU's own algorithm is much cheaper to emulate.
        return "max,pauth-impdef=on" if accelerator == "tcg" else "max"
    # TCG/WHPX on x86_64: QEMU's default model boots cloud images and still exposes
    # SVM, so an inner VM can use emulated virtualization.
    return None


def qemu_opt_value(value: object) -> str:
    """Escape a value for QEMU's comma-separated option syntax (a comma is written twice)."""
    return str(value).replace(",", ",,")


def _virtiofs_sockets(mounts: Sequence[host_mounts.Mount], files: VmFiles) -> list[PurePath | None]:
    if len(mounts) > MAX_MOUNTS:
        raise ConfigError(f"nexus:mounts: {len(mounts)} entries; allowed: at most {MAX_MOUNTS}")
    return [
        files.virtiofs_sockets[i] if m.type == "virtiofs" and files.virtiofs_sockets else None
        for i, m in enumerate(mounts)
    ]


def hostfwd_rules(bind_address: str, forwards: tuple[PortForward, ...]) -> list[str]:
    return [f"hostfwd={f.protocol}:{bind_address}:{f.host}-:{f.guest}" for f in forwards]


def build_qemu_argv(
    config: HostConfig, host: HostFacts, files: VmFiles, mounts: Sequence[host_mounts.Mount] = ()
) -> list[str]:
    return qemu_argv(GuestMachine.of(config.vm), config.network, host, files, mounts)


def qemu_argv(
    vm: GuestMachine,
    network: NetworkConfig,
    host: HostFacts,
    files: VmFiles,
    mounts: Sequence[host_mounts.Mount] = (),
) -> list[str]:
    """Every argument QEMU gets, in layers: machine, resources, firmware, disks, net, control."""
    if host.accelerator == "auto":
        raise ValueError("resolve the accelerator before building the command line")

    argv = [
        host.qemu_binary,
        "-name",
        f"{vm.name},process={vm.name}",
        "-machine",
        machine_option(vm, host.accelerator),
        "-smp",
        str(vm.cpus),
        "-m",
        f"{vm.memory_mib}M",
        *host_mounts.memory_backend_argv(mounts, vm.memory_mib),
    ]
    cpu = vm.cpu_model or default_cpu_model(vm.arch, host.accelerator)
    if cpu:
        argv += ["-cpu", cpu]

    if vm.arch == "aarch64":
        code = vm.firmware_code or host.firmware_code
        if not code:
            raise ConfigError(
                "nexus:vm.firmwareCode: an aarch64 guest needs UEFI firmware and none was found",
                hint="install QEMU's edk2 firmware (Debian/Ubuntu: qemu-efi-aarch64, Fedora: edk2-aarch64, "
                "Homebrew's qemu ships share/qemu/edk2-aarch64-code.fd) "
                "or set nexus:vm.firmwareCode to its path",
            )
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_opt_value(code)}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={qemu_opt_value(files.firmware_vars)}",
        ]

    argv += [
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        f"id={DISK_ID},if=virtio,format=qcow2,discard=unmap,file={qemu_opt_value(files.overlay_disk)}",
        # cloud-init finds the seed by its `cidata` label on any block device.
        "-drive",
        f"if=virtio,format=raw,readonly=on,file={qemu_opt_value(files.seed_iso)}",
        "-netdev",
        ",".join(["user,id=net0", *hostfwd_rules(network.bind_address, network.all_forwards())]),
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        # The host folders of nexus:mounts (mounted by the guest at each start: lifecycles.py).
        *host_mounts.device_argv(mounts, _virtiofs_sockets(mounts, files)),
        "-serial",
        # -serial file: takes the rest of the string literally; no comma escaping here.
        f"file:{files.serial_log}",
        "-pidfile",
        str(files.pid_file),
    ]
    if files.qmp_socket is not None:
        argv += ["-qmp", f"unix:{qemu_opt_value(files.qmp_socket)},server=on,wait=off"]
    elif files.qmp_tcp_port is not None:
        argv += ["-qmp", f"tcp:127.0.0.1:{files.qmp_tcp_port},server=on,wait=off"]
    if host.os != "windows":
        # The VM outlives `pulumi up`; with -daemonize QEMU reports start-up errors
        # through its exit status before it detaches.
        argv.append("-daemonize")
    return argv

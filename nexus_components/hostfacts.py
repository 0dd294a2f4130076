"""What the host offers: its OS, the QEMU binary, UEFI firmware and a working accelerator.

`auto` means: the platform's hardware accelerator (kvm, hvf, whpx) if QEMU can really
start a vCPU with it, else TCG. "/dev/kvm exists" is not enough: on some hosts KVM
opens but cannot run a vCPU with `-cpu host`, and a VM picked that way would never boot.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import disk, download
from .config import NexusConfig, VmConfig, check_disk_fits_base
from .errors import HostToolError
from .paths import VmPaths, check_state_dir
from .qemu_argv import HostFacts, default_cpu_model, default_machine, default_qemu_binary

HARDWARE_ACCELERATOR = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}

# Where QEMU packages put the aarch64 UEFI image: Homebrew (Apple Silicon, Intel),
# Debian/Ubuntu (qemu-efi-aarch64), Fedora, the Windows installer.
FIRMWARE_CANDIDATES = (
    "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
    "/usr/local/share/qemu/edk2-aarch64-code.fd",
    "/usr/share/qemu/edk2-aarch64-code.fd",
    "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
    "C:/Program Files/qemu/share/edk2-aarch64-code.fd",
)

Prober = Callable[[list[str]], bool]


def host_os() -> str:
    system = platform.system().lower()
    return {"darwin": "darwin", "windows": "windows"}.get(system, "linux")


def find_qemu(vm: VmConfig, os_name: str) -> str:
    binary = vm.qemu_binary or default_qemu_binary(vm.arch, os_name)
    found = shutil.which(binary)
    if not found:
        raise HostToolError(
            f"QEMU binary {binary!r} was not found on PATH (config key nexus:vm.qemuBinary)",
            hint=_install_hint(os_name) + ", or set nexus:vm.qemuBinary to its full path",
        )
    return found


def find_qemu_img(vm: VmConfig, os_name: str) -> str:
    found = shutil.which(vm.qemu_img_binary)
    if not found:
        raise HostToolError(
            f"{vm.qemu_img_binary!r} was not found on PATH (config key nexus:vm.qemuImgBinary)",
            hint=_install_hint(os_name) + ", or set nexus:vm.qemuImgBinary to its full path",
        )
    return found


def find_firmware(vm: VmConfig) -> str | None:
    if vm.arch != "aarch64":
        return None
    if vm.firmware_code:
        return vm.firmware_code
    return next((c for c in FIRMWARE_CANDIDATES if Path(c).is_file()), None)


def probe_command(qemu: str, vm: VmConfig, accelerator: str) -> list[str]:
    """Start a paused VM with the accelerator and quit at once over QMP on stdio."""
    argv = [qemu, "-machine", f"{vm.machine or default_machine(vm.arch)},accel={accelerator}"]
    cpu = vm.cpu_model or default_cpu_model(vm.arch, accelerator)
    if cpu:
        argv += ["-cpu", cpu]
    return [*argv, "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"]


def qemu_can_start(argv: list[str]) -> bool:
    try:
        result = subprocess.run(
            argv,
            input=b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def resolve_accelerator(vm: VmConfig, os_name: str, qemu: str, prober: Prober = qemu_can_start) -> str:
    requested = vm.accelerator
    if requested == "tcg":
        return "tcg"
    hardware = HARDWARE_ACCELERATOR[os_name]
    if requested not in ("auto", hardware):
        raise HostToolError(
            f"nexus:vm.accelerator: {requested!r} does not exist on {os_name}",
            hint=f"use 'auto', '{hardware}' or 'tcg'",
        )
    if _hardware_present(os_name) and prober(probe_command(qemu, vm, hardware)):
        return hardware
    if requested == "auto":
        return "tcg"
    raise HostToolError(
        f"nexus:vm.accelerator is {hardware!r} but QEMU cannot start a vCPU with it on this host",
        command=probe_command(qemu, vm, hardware),
        hint="set nexus:vm.accelerator to 'auto' or 'tcg' (slower, always works)",
    )


def detect_host(vm: VmConfig, prober: Prober = qemu_can_start) -> HostFacts:
    os_name = host_os()
    qemu = find_qemu(vm, os_name)
    return HostFacts(
        os=os_name,
        accelerator=resolve_accelerator(vm, os_name, qemu, prober),
        qemu_binary=qemu,
        firmware_code=find_firmware(vm),
    )


def accelerator_note(requested: str, chosen: str) -> str | None:
    """What `up` should tell a user whose `auto` fell back to software emulation."""
    if requested != "auto" or chosen != "tcg":
        return None
    return (
        "nexus:vm.accelerator is 'auto' and this host offers no usable hardware accelerator "
        "(KVM, HVF or WHPX), so QEMU emulates the CPU in software (TCG): the VM boots in minutes, "
        "not seconds"
    )


def check_before_changes(config: NexusConfig, qemu_img: str) -> None:
    """What the machine can already tell at preview: a state directory that is not the
    stack's to use, and a disk smaller than a base image that is already in the cache."""
    check_state_dir(VmPaths(config.state_dir), stack=config.stack)
    cached = download.cached_image_path(config.cache_dir, download.ImageSource(url=config.image.url))
    if cached.is_file():
        check_disk_fits_base(config.vm.disk_size, disk.virtual_size(qemu_img, cached))


def _hardware_present(os_name: str) -> bool:
    if os_name == "linux":
        return os.access("/dev/kvm", os.R_OK | os.W_OK) and linux_kvm_is_hardware()
    return True  # hvf and whpx have no device node; the probe decides


def linux_kvm_is_hardware(
    cpuinfo: Path = Path("/proc/cpuinfo"), sys_module: Path = Path("/sys/module")
) -> bool:
    """True when /dev/kvm is backed by VT-x/AMD-V, not by a paravirtual KVM such as PVM.

    A PVM-backed /dev/kvm starts QEMU and even runs firmware, then hangs the guest
    kernel early in boot, so a start-up probe alone cannot tell.
    """
    if (sys_module / "kvm_pvm").exists():
        return False
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return False
    flags = {word for line in lines if line.startswith("flags") for word in line.partition(":")[2].split()}
    return bool(flags & {"vmx", "svm"})


def _install_hint(os_name: str) -> str:
    return {
        "linux": "install QEMU (`sudo apt-get install qemu-system-x86 qemu-system-arm qemu-utils`)",
        "darwin": "install QEMU (`brew install qemu`)",
        "windows": "install QEMU from https://www.qemu.org/download/#windows "
        "(`winget install SoftwareFreedomConservancy.QEMU`)",
    }[os_name]

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
from dataclasses import dataclass
from pathlib import Path

from nexus_components.core import download
from nexus_components.core.errors import HostToolError
from nexus_components.host import disk
from nexus_components.host.paths import VmPaths, check_state_dir
from nexus_components.host.qemu_argv import (
    HostFacts,
    default_cpu_model,
    default_machine,
    default_qemu_binary,
    machine_option,
)
from nexus_components.host.settings import HostConfig, VmConfig, check_disk_fits_base

HARDWARE_ACCELERATOR = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}

# Where QEMU packages put the aarch64 UEFI code image for the virt machine's 64 MiB flash,
# each with its variable-store template. Tried after the copy that ships beside the QEMU
# binary in use (`<prefix>/share/qemu`, Homebrew and QEMU's own installs).
AARCH64_FIRMWARE: tuple[tuple[str, str], ...] = (
    # Homebrew on Apple Silicon, then on Intel Macs.
    ("/opt/homebrew/share/qemu/edk2-aarch64-code.fd", "/opt/homebrew/share/qemu/edk2-arm-vars.fd"),
    ("/usr/local/share/qemu/edk2-aarch64-code.fd", "/usr/local/share/qemu/edk2-arm-vars.fd"),
    # Debian and Ubuntu: qemu-efi-aarch64 (AAVMF). Its qemu-efi-aarch64/QEMU_EFI.fd is a 2 MiB
    # image for -bios, which the virt machine's flash refuses.
    ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
    # Fedora, RHEL and CentOS Stream: edk2-aarch64.
    ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
    # Arch Linux: edk2-aarch64.
    ("/usr/share/edk2/aarch64/QEMU_CODE.fd", "/usr/share/edk2/aarch64/QEMU_VARS.fd"),
    # QEMU built from source into /usr; the Windows installer.
    ("/usr/share/qemu/edk2-aarch64-code.fd", "/usr/share/qemu/edk2-arm-vars.fd"),
    ("C:/Program Files/qemu/share/edk2-aarch64-code.fd", "C:/Program Files/qemu/share/edk2-arm-vars.fd"),
)

# Each of the virt machine's two flash devices is 64 MiB; QEMU refuses a smaller image.
VIRT_FLASH_BYTES = 64 * 1024 * 1024

Prober = Callable[[list[str]], bool]


def available_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """What the kernel says new programs can have without swapping (Linux's MemAvailable);
    None where that is not known (macOS, Windows)."""
    try:
        lines = meminfo.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable" and value.split()[1:] == ["kB"]:
            return int(value.split()[0]) // 1024
    return None


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


@dataclass(frozen=True)
class Firmware:
    code: str
    vars_template: str | None  # None: the VM's variable store starts blank


def firmware_candidates(qemu_binary: str) -> list[tuple[str, str]]:
    """The code/vars pairs to try, the one shipped beside this QEMU binary first."""
    bin_dir = Path(qemu_binary).resolve().parent
    beside = [
        (str(share / "edk2-aarch64-code.fd"), str(share / "edk2-arm-vars.fd"))
        for share in (bin_dir.parent / "share" / "qemu", bin_dir / "share")
    ]
    return [*beside, *(pair for pair in AARCH64_FIRMWARE if pair not in beside)]


def find_firmware(vm: VmConfig, os_name: str, qemu_binary: str) -> Firmware | None:
    """The UEFI code image and variable-store template an aarch64 guest boots with.

    nexus:vm.firmwareCode and nexus:vm.firmwareVars win; a configured code image gets no
    default template (the pair must match), so its store starts blank.
    """
    if vm.arch != "aarch64":
        return None
    if vm.firmware_vars and not Path(vm.firmware_vars).is_file():
        raise HostToolError(
            f"nexus:vm.firmwareVars: {vm.firmware_vars!r} does not exist",
            hint="point it at the UEFI variable-store template that matches nexus:vm.firmwareCode, "
            "or unset it to start from a blank store",
        )
    if vm.firmware_code:
        _check_flash_image(vm.firmware_code, vm)
        return Firmware(vm.firmware_code, vm.firmware_vars)
    for code, template in firmware_candidates(qemu_binary):
        if Path(code).is_file():
            found_template = template if Path(template).is_file() else None
            return Firmware(code, vm.firmware_vars or found_template)
    raise HostToolError(
        "nexus:vm.firmwareCode: an aarch64 guest needs UEFI firmware for QEMU's virt machine and none "
        "was found (looked for " + ", ".join(code for code, _ in firmware_candidates(qemu_binary)) + ")",
        hint=_firmware_hint(os_name),
    )


def _check_flash_image(code: str, vm: VmConfig) -> None:
    path = Path(code)
    if not path.is_file():
        raise HostToolError(
            f"nexus:vm.firmwareCode: {code!r} does not exist",
            hint="point it at a UEFI code image for aarch64, "
            "or unset it to use the one QEMU's packages install",
        )
    size = path.stat().st_size
    machine = vm.machine or default_machine(vm.arch)
    if machine.startswith("virt") and size < VIRT_FLASH_BYTES:
        raise HostToolError(
            f"nexus:vm.firmwareCode: {code!r} is {size} bytes; QEMU's virt machine needs a "
            f"{VIRT_FLASH_BYTES // 2**20} MiB flash image (a -bios image such as QEMU_EFI.fd does not fit)",
            hint="use the flash image of the same package (Debian/Ubuntu: /usr/share/AAVMF/AAVMF_CODE.fd, "
            "Fedora: /usr/share/edk2/aarch64/QEMU_EFI-pflash.raw), or unset nexus:vm.firmwareCode",
        )


def _firmware_hint(os_name: str) -> str:
    install = {
        "linux": "install it (Debian/Ubuntu: `sudo apt-get install qemu-efi-aarch64`; "
        "Fedora: `sudo dnf install edk2-aarch64`)",
        "darwin": "install it with QEMU (`brew install qemu` ships share/qemu/edk2-aarch64-code.fd)",
        "windows": "reinstall QEMU from https://www.qemu.org/download/#windows (it ships "
        "share/edk2-aarch64-code.fd)",
    }[os_name]
    return install + ", or set nexus:vm.firmwareCode to the UEFI code image's path"


def probe_command(qemu: str, vm: VmConfig, accelerator: str) -> list[str]:
    """Start a paused VM with the accelerator and quit at once over QMP on stdio."""
    argv = [qemu, "-machine", machine_option(vm, accelerator)]
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
    firmware = find_firmware(vm, os_name, qemu)
    return HostFacts(
        os=os_name,
        accelerator=resolve_accelerator(vm, os_name, qemu, prober),
        qemu_binary=qemu,
        firmware_code=firmware.code if firmware else None,
        firmware_vars_template=firmware.vars_template if firmware else None,
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


def check_before_changes(config: HostConfig, qemu_img: str) -> None:
    """What the machine can already tell at preview: a state directory that is not the
    stack's to use, and a disk smaller than a base image that is already in the cache."""
    check_lab_files(
        config.state_dir,
        stack=config.stack,
        cache_dir=config.cache_dir,
        image_url=config.image.url,
        disk_size=config.vm.disk_size,
        qemu_img=qemu_img,
    )


def check_lab_files(
    state_dir: Path, *, stack: str, cache_dir: Path, image_url: str, disk_size: str, qemu_img: str
) -> None:
    """check_before_changes on the machine that holds the files (a remote host's, too)."""
    check_state_dir(VmPaths(state_dir), stack=stack)
    cached = download.cached_image_path(cache_dir, download.ImageSource(url=image_url))
    if cached.is_file():
        check_disk_fits_base(disk_size, disk.virtual_size(qemu_img, cached))


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

"""Unit tests for nexus_components.host.hostfacts: KVM detection, accelerator choice, the probe, finding QEMU.

The accelerator tests use a fake prober; "darwin" and "windows" there are mocks of hosts that
cannot run here. One test checks this machine for real: a PVM-backed /dev/kvm must give tcg.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from nexus_components.config import load_config
from nexus_components.core.download import ImageSource, cached_image_path
from nexus_components.core.errors import ConfigError, HostToolError, NexusError
from nexus_components.host import hostfacts
from nexus_components.host.hostfacts import (
    VIRT_FLASH_BYTES,
    Firmware,
    accelerator_note,
    check_before_changes,
    find_firmware,
    find_qemu,
    linux_kvm_is_hardware,
    probe_command,
    qemu_can_start,
    resolve_accelerator,
)
from nexus_components.host.settings import VmConfig

QEMU = "/usr/bin/qemu-system-x86_64"
INTEL_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov vmx ssse3 sse4_1 x2apic"
AMD_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov svm lahf_lm cr8_legacy"
GUEST_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov hypervisor lahf_lm"


def vm_config(**vm: Any) -> VmConfig:
    return load_config({"vm": vm}, stack="lab", home=Path("/home/lab")).vm


class FakeProber:
    """Stands in for qemu_can_start: records every probe and answers with a fixed result."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> bool:
        self.calls.append(argv)
        return self.answer


# --- linux_kvm_is_hardware ----------------------------------------------------------------------


def fake_host(tmp_path: Path, flags: str, *modules: str) -> tuple[Path, Path]:
    cpuinfo = tmp_path / "cpuinfo"
    processors = [
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
        for n in range(2)
    ]
    cpuinfo.write_text("\n".join(processors))
    sys_module = tmp_path / "module"
    sys_module.mkdir()
    for module in ("kvm", *modules):
        (sys_module / module / "parameters").mkdir(parents=True)
    return cpuinfo, sys_module


def test_vmx_means_hardware_kvm(tmp_path: Path) -> None:
    assert linux_kvm_is_hardware(*fake_host(tmp_path, INTEL_FLAGS, "kvm_intel")) is True


def test_svm_means_hardware_kvm(tmp_path: Path) -> None:
    assert linux_kvm_is_hardware(*fake_host(tmp_path, AMD_FLAGS, "kvm_amd")) is True


def test_neither_vmx_nor_svm_is_not_hardware(tmp_path: Path) -> None:
    assert linux_kvm_is_hardware(*fake_host(tmp_path, GUEST_FLAGS)) is False


def test_kvm_pvm_module_is_not_hardware_even_with_vmx(tmp_path: Path) -> None:
    assert linux_kvm_is_hardware(*fake_host(tmp_path, INTEL_FLAGS, "kvm_pvm")) is False


def test_vmx_in_another_field_does_not_count(tmp_path: Path) -> None:
    cpuinfo, sys_module = fake_host(tmp_path, GUEST_FLAGS)
    cpuinfo.write_text(cpuinfo.read_text() + "model name\t: vmx svm lookalike\n")
    assert linux_kvm_is_hardware(cpuinfo, sys_module) is False


def test_unreadable_cpuinfo_is_not_hardware(tmp_path: Path) -> None:
    sys_module = tmp_path / "module"
    sys_module.mkdir()
    assert linux_kvm_is_hardware(tmp_path / "missing-cpuinfo", sys_module) is False


# --- resolve_accelerator with a fake prober -----------------------------------------------------


def test_tcg_requested_is_tcg_without_probing() -> None:
    prober = FakeProber(True)
    for os_name in ("linux", "darwin", "windows"):
        assert resolve_accelerator(vm_config(accelerator="tcg"), os_name, QEMU, prober) == "tcg"
    assert prober.calls == []


@pytest.mark.parametrize(("mock_os", "hardware"), [("darwin", "hvf"), ("windows", "whpx")])
def test_auto_with_working_hardware_on_mock_host(mock_os: str, hardware: str) -> None:
    vm = vm_config(accelerator="auto")
    prober = FakeProber(True)
    assert resolve_accelerator(vm, mock_os, QEMU, prober) == hardware
    assert prober.calls == [probe_command(QEMU, vm, hardware)]


@pytest.mark.parametrize(("mock_os", "hardware"), [("darwin", "hvf"), ("windows", "whpx")])
def test_explicit_hardware_with_working_probe_on_mock_host(mock_os: str, hardware: str) -> None:
    assert resolve_accelerator(vm_config(accelerator=hardware), mock_os, QEMU, FakeProber(True)) == hardware


@pytest.mark.parametrize("mock_os", ["darwin", "windows"])
def test_auto_with_failing_probe_falls_back_to_tcg(mock_os: str) -> None:
    prober = FakeProber(False)
    assert resolve_accelerator(vm_config(accelerator="auto"), mock_os, QEMU, prober) == "tcg"
    assert len(prober.calls) == 1


def test_auto_with_failing_probe_on_linux_is_tcg() -> None:
    assert resolve_accelerator(vm_config(accelerator="auto"), "linux", QEMU, FakeProber(False)) == "tcg"


def test_explicit_hvf_with_failing_probe_on_mock_mac_host_is_an_error() -> None:
    vm = vm_config(arch="aarch64", accelerator="hvf")
    with pytest.raises(HostToolError) as caught:
        resolve_accelerator(vm, "darwin", "qemu-system-aarch64", FakeProber(False))
    message = str(caught.value)
    assert "nexus:vm.accelerator" in message
    assert "'hvf'" in message
    assert caught.value.command == probe_command("qemu-system-aarch64", vm, "hvf")


def test_explicit_kvm_with_failing_probe_is_an_error() -> None:
    with pytest.raises(HostToolError) as caught:
        resolve_accelerator(vm_config(accelerator="kvm"), "linux", QEMU, FakeProber(False))
    assert isinstance(caught.value, NexusError)
    assert "nexus:vm.accelerator is 'kvm'" in str(caught.value)
    assert "'tcg'" in caught.value.hint


@pytest.mark.parametrize(
    ("requested", "os_name"),
    [("hvf", "linux"), ("whpx", "linux"), ("kvm", "darwin"), ("hvf", "windows")],
)
def test_accelerator_of_another_os_is_an_error(requested: str, os_name: str) -> None:
    prober = FakeProber(True)
    with pytest.raises(HostToolError) as caught:
        resolve_accelerator(vm_config(accelerator=requested), os_name, QEMU, prober)
    assert f"nexus:vm.accelerator: {requested!r} does not exist on {os_name}" in str(caught.value)
    assert prober.calls == []


# --- this machine, for real ---------------------------------------------------------------------


@pytest.mark.skipif(
    not (
        sys.platform.startswith("linux")
        and Path("/dev/kvm").exists()
        and Path("/sys/module/kvm_pvm").exists()
    ),
    reason="only on a host whose /dev/kvm is backed by PVM",
)
def test_this_pvm_host_is_not_hardware_kvm_and_auto_resolves_to_tcg() -> None:
    assert linux_kvm_is_hardware() is False
    vm = vm_config(accelerator="auto")
    qemu = find_qemu(vm, "linux")
    assert resolve_accelerator(vm, "linux", qemu) == "tcg"


# --- probe_command ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vm_settings", "accelerator", "expected_middle"),
    [
        ({}, "kvm", ["-machine", "q35,accel=kvm", "-cpu", "host"]),
        ({}, "tcg", ["-machine", "q35,accel=tcg"]),
        ({}, "whpx", ["-machine", "q35,accel=whpx"]),
        ({"arch": "aarch64"}, "hvf", ["-machine", "virt,gic-version=max,accel=hvf", "-cpu", "host"]),
        (
            {"arch": "aarch64"},
            "tcg",
            ["-machine", "virt,gic-version=max,accel=tcg", "-cpu", "max,pauth-impdef=on"],
        ),
        ({"machine": "pc", "cpuModel": "EPYC"}, "kvm", ["-machine", "pc,accel=kvm", "-cpu", "EPYC"]),
    ],
)
def test_probe_command(vm_settings: dict[str, Any], accelerator: str, expected_middle: list[str]) -> None:
    assert probe_command("qemu", vm_config(**vm_settings), accelerator) == [
        "qemu",
        *expected_middle,
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-qmp",
        "stdio",
    ]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_real_qemu_passes_the_tcg_probe_and_fails_a_bogus_one() -> None:
    qemu = find_qemu(vm_config(), "linux")
    assert qemu_can_start(probe_command(qemu, vm_config(), "tcg")) is True
    assert qemu_can_start(probe_command(qemu, vm_config(machine="no-such-machine"), "tcg")) is False


def test_probe_of_a_missing_program_is_false(tmp_path: Path) -> None:
    assert qemu_can_start([str(tmp_path / "no-such-qemu"), "-version"]) is False


# --- find_qemu ----------------------------------------------------------------------------------


def test_missing_qemu_names_the_config_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostToolError) as caught:
        find_qemu(vm_config(), "linux")
    message = str(caught.value)
    assert "'qemu-system-x86_64'" in message
    assert "nexus:vm.qemuBinary" in message
    assert "apt-get install" in message


def test_missing_configured_qemu_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostToolError) as caught:
        find_qemu(vm_config(qemuBinary="/opt/nowhere/qemu-system-x86_64"), "darwin")
    assert "'/opt/nowhere/qemu-system-x86_64'" in str(caught.value)
    assert "nexus:vm.qemuBinary" in str(caught.value)
    assert "brew install qemu" in str(caught.value)


def test_find_qemu_returns_the_binary_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "qemu-system-aarch64"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/nonexistent")
    assert find_qemu(vm_config(arch="aarch64"), "linux") == str(binary)


# --- find_firmware ------------------------------------------------------------------------------


def flash_image(path: Path, size: int = VIRT_FLASH_BYTES) -> str:
    """A sparse file of a flash image's size (its content does not matter to the lookup)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as image:
        image.truncate(size)
    return str(path)


def qemu_prefix(tmp_path: Path) -> str:
    """A QEMU installed under its own prefix, as Homebrew and `make install` lay it out."""
    binary = tmp_path / "prefix" / "bin" / "qemu-system-aarch64"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\n")
    return str(binary)


def test_x86_64_guests_need_no_firmware(tmp_path: Path) -> None:
    assert find_firmware(vm_config(), "linux", qemu_prefix(tmp_path)) is None


def test_firmware_beside_the_qemu_binary_comes_first(tmp_path: Path) -> None:
    qemu = qemu_prefix(tmp_path)
    share = tmp_path / "prefix" / "share" / "qemu"
    code = flash_image(share / "edk2-aarch64-code.fd")
    template = flash_image(share / "edk2-arm-vars.fd")
    assert find_firmware(vm_config(arch="aarch64"), "darwin", qemu) == Firmware(code, template)


def test_distribution_pairs_give_code_and_matching_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fedora = tmp_path / "usr/share/edk2/aarch64"
    code = flash_image(fedora / "QEMU_EFI-pflash.raw")
    template = flash_image(fedora / "vars-template-pflash.raw")
    missing = (str(tmp_path / "nowhere/AAVMF_CODE.fd"), str(tmp_path / "nowhere/AAVMF_VARS.fd"))
    monkeypatch.setattr(hostfacts, "AARCH64_FIRMWARE", (missing, (code, template)))
    assert find_firmware(vm_config(arch="aarch64"), "linux", qemu_prefix(tmp_path)) == Firmware(
        code, template
    )


def test_code_without_its_template_starts_a_blank_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = flash_image(tmp_path / "fw/code.fd")
    monkeypatch.setattr(hostfacts, "AARCH64_FIRMWARE", ((code, str(tmp_path / "fw/vars.fd")),))
    assert find_firmware(vm_config(arch="aarch64"), "linux", qemu_prefix(tmp_path)) == Firmware(code, None)


def test_configured_code_gets_no_default_template(tmp_path: Path) -> None:
    code = flash_image(tmp_path / "mine/code.fd")
    vm = vm_config(arch="aarch64", firmwareCode=code)
    assert find_firmware(vm, "linux", qemu_prefix(tmp_path)) == Firmware(code, None)
    template = flash_image(tmp_path / "mine/vars.fd")
    vm = vm_config(arch="aarch64", firmwareCode=code, firmwareVars=template)
    assert find_firmware(vm, "linux", qemu_prefix(tmp_path)) == Firmware(code, template)


def test_no_firmware_found_names_the_key_and_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostfacts, "AARCH64_FIRMWARE", ())
    with pytest.raises(HostToolError) as caught:
        find_firmware(vm_config(arch="aarch64"), "linux", qemu_prefix(tmp_path))
    message = str(caught.value)
    assert message.startswith("nexus:vm.firmwareCode: an aarch64 guest needs UEFI firmware")
    assert "edk2-aarch64-code.fd" in message  # where it looked
    assert "apt-get install qemu-efi-aarch64" in message
    assert "dnf install edk2-aarch64" in message


def test_missing_configured_firmware_names_the_key(tmp_path: Path) -> None:
    vm = vm_config(arch="aarch64", firmwareCode=str(tmp_path / "gone.fd"))
    with pytest.raises(HostToolError, match=r"nexus:vm.firmwareCode: '.*gone.fd' does not exist"):
        find_firmware(vm, "linux", qemu_prefix(tmp_path))
    vm = vm_config(arch="aarch64", firmwareVars=str(tmp_path / "gone-vars.fd"))
    with pytest.raises(HostToolError, match=r"nexus:vm.firmwareVars: '.*gone-vars.fd' does not exist"):
        find_firmware(vm, "linux", qemu_prefix(tmp_path))


def test_a_bios_sized_image_is_refused_before_qemu_refuses_it(tmp_path: Path) -> None:
    bios = flash_image(tmp_path / "QEMU_EFI.fd", 2 * 1024 * 1024)
    with pytest.raises(HostToolError) as caught:
        find_firmware(vm_config(arch="aarch64", firmwareCode=bios), "linux", qemu_prefix(tmp_path))
    assert "nexus:vm.firmwareCode" in str(caught.value)
    assert "needs a 64 MiB flash image" in str(caught.value)


REAL_AARCH64_QEMU = shutil.which("qemu-system-aarch64")
DEBIAN_BIOS_IMAGE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")


@pytest.mark.skipif(
    REAL_AARCH64_QEMU is None or not DEBIAN_BIOS_IMAGE.is_file(),
    reason="needs qemu-system-aarch64 and Debian's qemu-efi-aarch64",
)
def test_real_qemu_refuses_the_bios_image_as_flash_and_takes_the_one_found() -> None:
    """Why QEMU_EFI.fd is no candidate: the virt machine's flash needs the 64 MiB image."""
    assert REAL_AARCH64_QEMU is not None
    vm = vm_config(arch="aarch64")
    found = find_firmware(vm, "linux", REAL_AARCH64_QEMU)
    assert found is not None and found.vars_template is not None

    def starts_with(code: str) -> bool:
        drive = f"if=pflash,format=raw,unit=0,readonly=on,file={code}"
        return qemu_can_start([*probe_command(REAL_AARCH64_QEMU, vm, "tcg"), "-drive", drive])

    assert starts_with(found.code) is True
    assert starts_with(str(DEBIAN_BIOS_IMAGE)) is False


# --- what up tells and checks before changing anything ------------------------------------------


def test_auto_falling_back_to_tcg_is_said_and_nothing_else_is() -> None:
    note = accelerator_note("auto", "tcg")
    assert note is not None and "TCG" in note and "minutes" in note and "nexus:vm.accelerator" in note
    assert accelerator_note("tcg", "tcg") is None, "asked for on purpose"
    assert accelerator_note("auto", "kvm") is None


def test_before_changes_a_cached_base_image_bigger_than_the_disk_is_refused(tmp_path: Path) -> None:
    import subprocess

    config = load_config(
        {
            "image": {"url": "https://images.example/noble.img"},
            "vm": {"diskSize": "1G"},
            "paths": {"stateDir": str(tmp_path / "state"), "cacheDir": str(tmp_path / "cache")},
        },
        stack="lab",
        home=tmp_path / "home",
    )
    check_before_changes(config, "qemu-img")  # nothing cached yet: known only once downloaded
    cached = cached_image_path(config.cache_dir, ImageSource(url=config.image.url))
    cached.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(cached), "3G"], check=True)
    with pytest.raises(ConfigError, match=r"^nexus:vm.diskSize: got '1G', smaller .* allowed: at least 3G"):
        check_before_changes(config, "qemu-img")
    assert not (tmp_path / "state").exists()


def test_before_changes_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("x")
    config = load_config({"paths": {"stateDir": str(blocker)}}, stack="lab", home=tmp_path / "home")
    with pytest.raises(ConfigError, match=r"^nexus:paths.stateDir: .* is a file"):
        check_before_changes(config, "qemu-img")

"""Unit tests for nexus_components.host.qemu_argv: golden command lines per stack, checked against real QEMU.

macOS and Windows cannot run here: their HostFacts below are mocks, and their command lines are
compared with golden lists written out in full. The Linux command line is also handed to the
installed qemu-system-x86_64, and the arm64 one to qemu-system-aarch64 with the host's AAVMF
firmware (paused, then quit over QMP), to prove QEMU accepts what we build.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

import pytest

from nexus_components.config import NexusConfig, load_config
from nexus_components.core.errors import ConfigError
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import (
    HostFacts,
    VmFiles,
    build_qemu_argv,
    default_qemu_binary,
    hostfwd_rules,
    qemu_opt_value,
)
from nexus_components.host.settings import PortForward
from tests.support.stacks import stack_settings

LINUX_HOME = Path("/home/lab")
MAC_HOME = Path("/Users/lab")

LINUX_HOST_KVM = HostFacts(os="linux", accelerator="kvm", qemu_binary="/usr/bin/qemu-system-x86_64")
LINUX_HOST_TCG = HostFacts(os="linux", accelerator="tcg", qemu_binary="/usr/bin/qemu-system-x86_64")
# mock: macOS cannot run here (Apple Silicon, Homebrew QEMU, firmware not detected on the host)
MOCK_MAC_HOST = HostFacts(
    os="darwin", accelerator="hvf", qemu_binary="/opt/homebrew/bin/qemu-system-aarch64", firmware_code=None
)
LINUX_ARM64_HOST_TCG = HostFacts(
    os="linux",
    accelerator="tcg",
    qemu_binary="/usr/bin/qemu-system-aarch64",
    firmware_code="/usr/share/AAVMF/AAVMF_CODE.fd",
    firmware_vars_template="/usr/share/AAVMF/AAVMF_VARS.fd",
)
# mock: Windows cannot run here (QEMU's Windows build with the Windows Hypervisor Platform)
MOCK_WINDOWS_HOST = HostFacts(
    os="windows", accelerator="whpx", qemu_binary="C:/Program Files/qemu/qemu-system-x86_64.exe"
)

MOCK_WINDOWS_STATE = PureWindowsPath(r"C:\Users\lab\.nexus-nested-vm\stacks\windows")
MOCK_WINDOWS_FILES = VmFiles(
    overlay_disk=MOCK_WINDOWS_STATE / "disk.qcow2",
    seed_iso=MOCK_WINDOWS_STATE / "cidata.iso",
    serial_log=MOCK_WINDOWS_STATE / "serial.log",
    pid_file=MOCK_WINDOWS_STATE / "qemu.pid",
    firmware_vars=MOCK_WINDOWS_STATE / "efi-vars.fd",
    qmp_socket=None,
    qmp_tcp_port=4444,
)


def stack_config(name: str, home: Path) -> NexusConfig:
    return load_config(stack_settings(name), stack=name, home=home)


def files_of(state_dir: Path) -> VmFiles:
    return VmFiles.of(VmPaths(state_dir))


def config_of(raw: dict[str, Any]) -> NexusConfig:
    return load_config(raw, stack="lab", home=LINUX_HOME)


def option_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


# --- golden command lines -----------------------------------------------------------------------


def test_golden_linux_kvm() -> None:
    config = stack_config("linux", LINUX_HOME)
    argv = build_qemu_argv(config, LINUX_HOST_KVM, files_of(config.state_dir))
    assert argv == [
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "nexus-linux,process=nexus-linux",
        "-machine",
        "q35,accel=kvm",
        "-smp",
        "2",
        "-m",
        "4096M",
        "-cpu",
        "host",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        "id=disk0,if=virtio,format=qcow2,discard=unmap,file=/home/lab/.nexus-nested-vm/stacks/linux/disk.qcow2",
        "-drive",
        "if=virtio,format=raw,readonly=on,file=/home/lab/.nexus-nested-vm/stacks/linux/cidata.iso",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=tcp:127.0.0.1:8443-:443",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        "file:/home/lab/.nexus-nested-vm/stacks/linux/serial.log",
        "-pidfile",
        "/home/lab/.nexus-nested-vm/stacks/linux/qemu.pid",
        "-qmp",
        "unix:/home/lab/.nexus-nested-vm/stacks/linux/qmp.sock,server=on,wait=off",
        "-daemonize",
    ]


def test_golden_linux_tcg() -> None:
    config = stack_config("linux", LINUX_HOME)
    argv = build_qemu_argv(config, LINUX_HOST_TCG, files_of(config.state_dir))
    assert argv == [
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "nexus-linux,process=nexus-linux",
        "-machine",
        "q35,accel=tcg",
        "-smp",
        "2",
        "-m",
        "4096M",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        "id=disk0,if=virtio,format=qcow2,discard=unmap,file=/home/lab/.nexus-nested-vm/stacks/linux/disk.qcow2",
        "-drive",
        "if=virtio,format=raw,readonly=on,file=/home/lab/.nexus-nested-vm/stacks/linux/cidata.iso",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=tcp:127.0.0.1:8443-:443",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        "file:/home/lab/.nexus-nested-vm/stacks/linux/serial.log",
        "-pidfile",
        "/home/lab/.nexus-nested-vm/stacks/linux/qemu.pid",
        "-qmp",
        "unix:/home/lab/.nexus-nested-vm/stacks/linux/qmp.sock,server=on,wait=off",
        "-daemonize",
    ]


def test_golden_mock_mac_host_hvf_aarch64() -> None:
    config = stack_config("mac", MAC_HOME)
    argv = build_qemu_argv(config, MOCK_MAC_HOST, files_of(config.state_dir))
    assert argv == [
        "/opt/homebrew/bin/qemu-system-aarch64",
        "-name",
        "nexus-mac,process=nexus-mac",
        "-machine",
        # GICv3 (virt's default GICv2 stops at 8 vCPUs).
        "virt,gic-version=max,accel=hvf",
        "-smp",
        "4",
        "-m",
        "4096M",
        "-cpu",
        "host",
        # UEFI code from nexus:vm.firmwareCode, writable vars in the VM's own directory.
        "-drive",
        "if=pflash,format=raw,unit=0,readonly=on,file=/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
        "-drive",
        "if=pflash,format=raw,unit=1,file=/Users/lab/.nexus-nested-vm/stacks/mac/efi-vars.fd",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        "id=disk0,if=virtio,format=qcow2,discard=unmap,file=/Users/lab/.nexus-nested-vm/stacks/mac/disk.qcow2",
        "-drive",
        "if=virtio,format=raw,readonly=on,file=/Users/lab/.nexus-nested-vm/stacks/mac/cidata.iso",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=tcp:127.0.0.1:8443-:443",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        "file:/Users/lab/.nexus-nested-vm/stacks/mac/serial.log",
        "-pidfile",
        "/Users/lab/.nexus-nested-vm/stacks/mac/qemu.pid",
        "-qmp",
        "unix:/Users/lab/.nexus-nested-vm/stacks/mac/qmp.sock,server=on,wait=off",
        "-daemonize",
    ]


def test_golden_linux_arm64_stack_tcg() -> None:
    config = stack_config("arm64", LINUX_HOME)
    argv = build_qemu_argv(config, LINUX_ARM64_HOST_TCG, files_of(config.state_dir))
    assert argv == [
        "/usr/bin/qemu-system-aarch64",
        "-name",
        "nexus-arm64,process=nexus-arm64",
        "-machine",
        "virt,gic-version=max,accel=tcg",
        "-smp",
        "2",
        "-m",
        "4096M",
        "-cpu",
        "max,pauth-impdef=on",
        # Debian's AAVMF, found on the host; the VM's own variable store.
        "-drive",
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
        "-drive",
        "if=pflash,format=raw,unit=1,file=/home/lab/.nexus-nested-vm/stacks/arm64/efi-vars.fd",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        "id=disk0,if=virtio,format=qcow2,discard=unmap,file=/home/lab/.nexus-nested-vm/stacks/arm64/disk.qcow2",
        "-drive",
        "if=virtio,format=raw,readonly=on,file=/home/lab/.nexus-nested-vm/stacks/arm64/cidata.iso",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=tcp:127.0.0.1:8443-:443",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        "file:/home/lab/.nexus-nested-vm/stacks/arm64/serial.log",
        "-pidfile",
        "/home/lab/.nexus-nested-vm/stacks/arm64/qemu.pid",
        "-qmp",
        "unix:/home/lab/.nexus-nested-vm/stacks/arm64/qmp.sock,server=on,wait=off",
        "-daemonize",
    ]


def test_golden_mock_windows_host_whpx() -> None:
    config = stack_config("windows", LINUX_HOME)
    argv = build_qemu_argv(config, MOCK_WINDOWS_HOST, MOCK_WINDOWS_FILES)
    assert argv == [
        "C:/Program Files/qemu/qemu-system-x86_64.exe",
        "-name",
        "nexus-windows,process=nexus-windows",
        "-machine",
        "q35,accel=whpx",
        "-smp",
        "2",
        "-m",
        "4096M",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        r"id=disk0,if=virtio,format=qcow2,discard=unmap,file=C:\Users\lab\.nexus-nested-vm\stacks\windows\disk.qcow2",
        "-drive",
        r"if=virtio,format=raw,readonly=on,file=C:\Users\lab\.nexus-nested-vm\stacks\windows\cidata.iso",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,"
        "hostfwd=tcp:127.0.0.1:8443-:443",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        r"file:C:\Users\lab\.nexus-nested-vm\stacks\windows\serial.log",
        "-pidfile",
        r"C:\Users\lab\.nexus-nested-vm\stacks\windows\qemu.pid",
        "-qmp",
        "tcp:127.0.0.1:4444,server=on,wait=off",
    ]
    assert "-daemonize" not in argv


def test_mock_mac_host_firmware_is_used_when_config_names_none() -> None:
    config = config_of({"vm": {"arch": "aarch64", "accelerator": "hvf"}})
    host = HostFacts(
        os="darwin",
        accelerator="hvf",
        qemu_binary="qemu-system-aarch64",
        firmware_code="/usr/local/share/qemu/edk2-aarch64-code.fd",
    )
    argv = build_qemu_argv(config, host, files_of(config.state_dir))
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/usr/local/share/qemu/edk2-aarch64-code.fd" in argv


# --- network ------------------------------------------------------------------------------------


def test_hostfwd_binds_to_loopback_by_default() -> None:
    config = config_of({})
    (netdev,) = option_after(build_qemu_argv(config, LINUX_HOST_TCG, files_of(config.state_dir)), "-netdev")
    rules = netdev.split(",")[2:]
    assert rules == [
        "hostfwd=tcp:127.0.0.1:2222-:22",
        "hostfwd=tcp:127.0.0.1:8080-:80",
        "hostfwd=tcp:127.0.0.1:8443-:443",
    ]


def test_ipv6_bind_address_is_refused_because_slirp_forwards_only_ipv4() -> None:
    with pytest.raises(ConfigError, match=r"nexus:network.bindAddress: got '::1'"):
        config_of({"network": {"bindAddress": "::1"}})


def test_hostfwd_on_all_interfaces_when_asked() -> None:
    assert hostfwd_rules("0.0.0.0", (PortForward(8080, 80, "udp"),)) == ["hostfwd=udp:0.0.0.0:8080-:80"]


def test_extra_forwards_replace_the_defaults_and_follow_ssh() -> None:
    forwards = [{"host": 5353, "guest": 53, "protocol": "udp"}, {"host": 3000, "guest": 3000}]
    config = config_of({"network": {"sshPort": 2200, "forwards": forwards}})
    (netdev,) = option_after(build_qemu_argv(config, LINUX_HOST_TCG, files_of(config.state_dir)), "-netdev")
    assert netdev == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:2200-:22,"
        "hostfwd=udp:127.0.0.1:5353-:53,hostfwd=tcp:127.0.0.1:3000-:3000"
    )


# --- escaping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("a,b", "a,,b"),
        (",,", ",,,,"),
        (PurePath("/srv/x,y/disk"), "/srv/x,,y/disk"),
        (4, "4"),
    ],
)
def test_qemu_opt_value_doubles_commas(value: object, expected: str) -> None:
    assert qemu_opt_value(value) == expected


def test_paths_with_commas_are_escaped_in_option_values() -> None:
    config = config_of({"vm": {"arch": "aarch64", "accelerator": "tcg", "firmwareCode": "/fw/edk2-code.fd"}})
    argv = build_qemu_argv(config, LINUX_HOST_TCG, files_of(Path("/srv/a,b/vm")))
    drives = option_after(argv, "-drive")
    assert drives == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw/edk2-code.fd",
        "if=pflash,format=raw,unit=1,file=/srv/a,,b/vm/efi-vars.fd",
        "id=disk0,if=virtio,format=qcow2,discard=unmap,file=/srv/a,,b/vm/disk.qcow2",
        "if=virtio,format=raw,readonly=on,file=/srv/a,,b/vm/cidata.iso",
    ]
    assert option_after(argv, "-qmp") == ["unix:/srv/a,,b/vm/qmp.sock,server=on,wait=off"]
    # -pidfile takes a plain path, not an option list.
    assert option_after(argv, "-pidfile") == ["/srv/a,b/vm/qemu.pid"]


# --- errors and -cpu ----------------------------------------------------------------------------


def test_aarch64_without_firmware_names_the_firmware_key() -> None:
    config = config_of({"vm": {"arch": "aarch64", "accelerator": "tcg"}})
    with pytest.raises(ConfigError) as caught:
        build_qemu_argv(config, LINUX_HOST_TCG, files_of(config.state_dir))
    assert "nexus:vm.firmwareCode" in str(caught.value)


def test_unresolved_auto_accelerator_is_a_programming_error() -> None:
    config = config_of({})
    host = HostFacts(os="linux", accelerator="auto", qemu_binary="qemu-system-x86_64")
    with pytest.raises(ValueError, match="resolve the accelerator"):
        build_qemu_argv(config, host, files_of(config.state_dir))


@pytest.mark.parametrize(
    ("arch", "accelerator", "cpu_model", "expected"),
    [
        ("x86_64", "kvm", None, ["host"]),
        ("x86_64", "hvf", None, ["host"]),
        ("aarch64", "hvf", None, ["host"]),
        ("aarch64", "kvm", None, ["host"]),
        ("aarch64", "tcg", None, ["max,pauth-impdef=on"]),
        ("aarch64", "whpx", None, ["max"]),
        ("x86_64", "tcg", None, []),
        ("x86_64", "whpx", None, []),
        ("x86_64", "tcg", "EPYC-v4", ["EPYC-v4"]),
        ("x86_64", "kvm", "Skylake-Server", ["Skylake-Server"]),
    ],
)
def test_cpu_model(arch: str, accelerator: str, cpu_model: str | None, expected: list[str]) -> None:
    vm: dict[str, Any] = {"arch": arch, "firmwareCode": "/fw/code.fd"}
    if cpu_model:
        vm["cpuModel"] = cpu_model
    config = config_of({"vm": vm})
    host = HostFacts(os="linux", accelerator=accelerator, qemu_binary=f"qemu-system-{arch}")
    assert option_after(build_qemu_argv(config, host, files_of(config.state_dir)), "-cpu") == expected


def test_configured_machine_is_used() -> None:
    config = config_of({"vm": {"machine": "pc-q35-8.2"}})
    argv = build_qemu_argv(config, LINUX_HOST_KVM, files_of(config.state_dir))
    assert option_after(argv, "-machine") == ["pc-q35-8.2,accel=kvm"]


def test_default_qemu_binary_per_os() -> None:
    assert default_qemu_binary("x86_64", "linux") == "qemu-system-x86_64"
    assert default_qemu_binary("aarch64", "darwin") == "qemu-system-aarch64"
    assert default_qemu_binary("x86_64", "windows") == "qemu-system-x86_64.exe"


# --- real QEMU accepts what we build ------------------------------------------------------------

REAL_QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    REAL_QEMU is None or shutil.which("qemu-img") is None, reason="needs qemu-system-x86_64 and qemu-img"
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_paused(config: NexusConfig, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """Build the real argv for this host (tcg), start QEMU paused in the foreground, quit over QMP."""
    assert REAL_QEMU is not None
    state_dir.mkdir(parents=True)
    files = files_of(state_dir)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(files.overlay_disk), "64M"], check=True, timeout=60
    )
    Path(files.seed_iso).write_bytes(b"\0" * 2048)
    host = HostFacts(os="linux", accelerator="tcg", qemu_binary=REAL_QEMU)
    argv = build_qemu_argv(config, host, files)
    assert argv[-1] == "-daemonize"
    return subprocess.run(
        [*argv[:-1], "-S", "-qmp", "stdio"],
        input='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ported_config(bind_address: str = "127.0.0.1") -> NexusConfig:
    ssh, http, https = free_ports(3)
    forwards = [{"host": http, "guest": 80}, {"host": https, "guest": 443}]
    return config_of(
        {
            "vm": {"memoryMiB": 512},
            "network": {"bindAddress": bind_address, "sshPort": ssh, "forwards": forwards},
        }
    )


@needs_qemu
def test_real_qemu_accepts_the_linux_tcg_argv(tmp_path: Path) -> None:
    state_dir = tmp_path / "vm"
    result = run_paused(ported_config(), state_dir)
    assert result.returncode == 0, result.stderr
    assert (state_dir / "serial.log").is_file()


@needs_qemu
def test_real_qemu_writes_serial_log_where_vmpaths_says_in_a_comma_dir(tmp_path: Path) -> None:
    # -drive and -qmp parse option lists (commas doubled); `-serial file:PATH` takes PATH verbatim.
    state_dir = tmp_path / "a,b"
    result = run_paused(ported_config(), state_dir)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in state_dir.iterdir() if p.name.endswith(".log")) == ["serial.log"]


@needs_qemu
@pytest.mark.parametrize("bind_address", ["127.0.0.1", "0.0.0.0"])
def test_real_qemu_accepts_every_allowed_bind_address(tmp_path: Path, bind_address: str) -> None:
    result = run_paused(ported_config(bind_address), tmp_path / "vm")
    assert result.returncode == 0, result.stderr


REAL_AARCH64_QEMU = shutil.which("qemu-system-aarch64")
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")


@pytest.mark.skipif(
    REAL_AARCH64_QEMU is None or not AAVMF_CODE.is_file() or shutil.which("qemu-img") is None,
    reason="needs qemu-system-aarch64, qemu-img and Debian's qemu-efi-aarch64",
)
@pytest.mark.parametrize("cpus", [2, 12])
def test_real_qemu_accepts_the_arm64_argv(tmp_path: Path, cpus: int) -> None:
    """Firmware, flash units, devices and more than virt's GICv2 limit of 8 vCPUs."""
    assert REAL_AARCH64_QEMU is not None
    ssh, http = free_ports(2)
    config = config_of(
        {
            "vm": {"arch": "aarch64", "accelerator": "tcg", "cpus": cpus, "memoryMiB": 512},
            "network": {"sshPort": ssh, "forwards": [{"host": http, "guest": 80}]},
        }
    )
    state_dir = tmp_path / "vm"
    state_dir.mkdir()
    files = files_of(state_dir)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(files.overlay_disk), "64M"], check=True, timeout=60
    )
    Path(files.seed_iso).write_bytes(b"\0" * 2048)
    with Path(files.firmware_vars).open("wb") as store:
        store.truncate(AAVMF_CODE.stat().st_size)
    host = HostFacts(
        os="linux", accelerator="tcg", qemu_binary=REAL_AARCH64_QEMU, firmware_code=str(AAVMF_CODE)
    )
    argv = build_qemu_argv(config, host, files)
    result = subprocess.run(
        [*argv[:-1], "-S", "-qmp", "stdio"],
        input='{"execute": "qmp_capabilities"}\n{"execute": "query-cpus-fast"}\n{"execute": "quit"}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"cpu-index"') == cpus

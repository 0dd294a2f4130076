"""Unit tests for nexus_components.config: the stack files, the defaults, and a catalogue of bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nexus_components.config import NexusConfig, load_config
from nexus_components.core.errors import ConfigError, NexusError
from nexus_components.host.settings import (
    UBUNTU_2404_AMD64,
    UBUNTU_2404_ARM64,
    PortForward,
    check_disk_fits_base,
    disk_size_bytes,
)
from tests.support.stacks import STACKS, stack_settings

HOME = Path("/home/lab")


def stack_raw(name: str) -> dict[str, Any]:
    document = yaml.safe_load((STACKS / f"Pulumi.{name}.yaml").read_text())
    assert all(key.startswith("nexus:") for key in document["config"]), "only the nexus: namespace"
    return stack_settings(name)


def load(raw: dict[str, Any], stack: str = "lab") -> NexusConfig:
    return load_config(raw, stack=stack, home=HOME)


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(raw)
    assert isinstance(caught.value, NexusError)
    return str(caught.value)


# --- the three stack files ----------------------------------------------------------------------


def test_linux_stack_file() -> None:
    config = load_config(stack_raw("linux"), stack="linux", home=HOME)

    assert config.stack == "linux"
    assert config.image.url == UBUNTU_2404_AMD64
    assert config.image.sha256 is None
    assert (config.vm.arch, config.vm.accelerator) == ("x86_64", "auto")
    assert (config.vm.cpus, config.vm.memory_mib, config.vm.disk_size) == (2, 4096, "20G")
    assert config.vm.qemu_binary is None
    assert config.vm.qemu_img_binary == "qemu-img"
    assert config.vm.firmware_code is None
    assert config.network.bind_address == "127.0.0.1"
    assert config.network.all_forwards() == (
        PortForward(2222, 22),
        PortForward(8080, 80),
        PortForward(8443, 443),
    )
    assert config.guest.username == "ubuntu"
    assert config.vm.name == config.guest.hostname == "nexus-linux"
    assert config.state_dir == HOME / ".nexus-nested-vm" / "stacks" / "linux"


def test_mac_stack_file() -> None:
    config = load_config(stack_raw("mac"), stack="mac", home=Path("/Users/lab"))

    assert config.image.url == UBUNTU_2404_ARM64
    assert (config.vm.arch, config.vm.accelerator) == ("aarch64", "hvf")
    assert (config.vm.cpus, config.vm.memory_mib, config.vm.disk_size) == (4, 4096, "20G")
    assert config.vm.qemu_binary == "qemu-system-aarch64"
    assert config.vm.firmware_code == "/opt/homebrew/share/qemu/edk2-aarch64-code.fd"
    assert config.vm.firmware_vars == "/opt/homebrew/share/qemu/edk2-arm-vars.fd"
    assert config.network.all_forwards() == (
        PortForward(2222, 22),
        PortForward(8080, 80),
        PortForward(8443, 443),
    )
    assert config.guest.username == "ubuntu"
    assert config.state_dir == Path("/Users/lab/.nexus-nested-vm/stacks/mac")


def test_windows_stack_file() -> None:
    config = load_config(stack_raw("windows"), stack="windows", home=HOME)

    assert config.image.url == UBUNTU_2404_AMD64
    assert (config.vm.arch, config.vm.accelerator) == ("x86_64", "whpx")
    assert (config.vm.cpus, config.vm.memory_mib, config.vm.disk_size) == (2, 4096, "20G")
    assert config.vm.qemu_binary == "C:/Program Files/qemu/qemu-system-x86_64.exe"
    assert config.vm.qemu_img_binary == "C:/Program Files/qemu/qemu-img.exe"
    assert config.vm.firmware_code is None
    assert config.network.all_forwards() == (
        PortForward(2222, 22),
        PortForward(8080, 80),
        PortForward(8443, 443),
    )
    assert config.guest.username == "ubuntu"


# --- defaults -----------------------------------------------------------------------------------


def test_empty_config_gets_the_seed_defaults() -> None:
    config = load_config({}, stack="dev", home=HOME)

    assert config.image.url == UBUNTU_2404_AMD64
    assert config.image.sha256 is None
    vm = config.vm
    assert (vm.name, vm.arch, vm.cpus, vm.memory_mib, vm.disk_size) == ("nexus-dev", "x86_64", 2, 4096, "20G")
    assert vm.accelerator == "auto"
    assert (vm.machine, vm.cpu_model, vm.qemu_binary) == (None, None, None)
    assert vm.qemu_img_binary == "qemu-img"
    assert vm.boot_timeout_seconds == 900
    assert config.network.bind_address == "127.0.0.1"
    assert config.network.ssh_port == 2222
    assert config.network.forwards == (PortForward(8080, 80, "tcp"), PortForward(8443, 443, "tcp"))
    guest = config.guest
    assert (guest.username, guest.hostname) == ("ubuntu", "nexus-dev")
    assert (guest.ssh_public_key_file, guest.ssh_private_key_file) == (None, None)
    assert guest.install_packages is True
    assert guest.packages == ()
    assert dict(guest.user_data) == {}
    assert config.state_dir == HOME / ".nexus-nested-vm" / "stacks" / "dev"
    assert config.cache_dir == HOME / ".cache" / "nexus-nested-vm" / "images"


def test_none_sections_count_as_unset() -> None:
    assert load({"vm": None, "network": None}) == load({})


def test_aarch64_defaults_to_the_arm64_image() -> None:
    assert load({"vm": {"arch": "aarch64"}}).image.url == UBUNTU_2404_ARM64
    assert load({"vm": {"arch": "x86_64"}}).image.url == UBUNTU_2404_AMD64


def test_explicit_url_wins_over_the_arch_default() -> None:
    url = "file:///srv/images/noble-arm64.img"
    assert load({"vm": {"arch": "aarch64"}, "image": {"url": url}}).image.url == url


def test_state_dir_of_an_odd_stack_name_is_a_slug() -> None:
    config = load_config({}, stack="Team/Dev_Box", home=HOME)
    assert config.state_dir == HOME / ".nexus-nested-vm" / "stacks" / "team-dev-box"
    assert config.vm.name == "nexus-team-dev-box"


def test_tilde_paths_resolve_against_home() -> None:
    config = load({"paths": {"stateDir": "~/vms/lab", "cacheDir": "/var/cache/nexus"}})
    assert config.state_dir == HOME / "vms" / "lab"
    assert config.cache_dir == Path("/var/cache/nexus")


def test_sha256_is_normalised_to_lower_case() -> None:
    digest = "AB" * 32
    assert load({"image": {"sha256": digest}}).image.sha256 == "ab" * 32


def test_same_host_port_for_tcp_and_udp_is_allowed() -> None:
    forwards = [{"host": 5353, "guest": 53, "protocol": "udp"}, {"host": 5353, "guest": 53}]
    config = load({"network": {"forwards": forwards}})
    assert config.network.forwards == (PortForward(5353, 53, "udp"), PortForward(5353, 53, "tcp"))


# --- the catalogue of bad inputs ----------------------------------------------------------------
# (id, raw config, key the error must name, text showing the bad value, text saying what is allowed)

BAD_INPUTS: list[tuple[str, dict[str, Any], str, str, str]] = [
    (
        "unknown-top-level-key",
        {"vmm": {}},
        "nexus:vmm",
        "unknown key",
        "guest, host, image, innerVm, mounts, network, paths, playground, vm",
    ),
    ("unknown-nested-key", {"vm": {"memory": 4096}}, "nexus:vm.memory", "unknown key", "memoryMiB"),
    ("section-not-an-object", {"vm": "big"}, "nexus:vm", "'big'", "type object"),
    ("cpus-wrong-type", {"vm": {"cpus": "two"}}, "nexus:vm.cpus", "got 'two'", "type integer"),
    ("cpus-bool", {"vm": {"cpus": True}}, "nexus:vm.cpus", "got True", "type integer"),
    ("cpus-zero", {"vm": {"cpus": 0}}, "nexus:vm.cpus", "got 0", "at least 1"),
    ("cpus-too-many", {"vm": {"cpus": 65}}, "nexus:vm.cpus", "got 65", "at most 64"),
    ("memory-too-small", {"vm": {"memoryMiB": 100}}, "nexus:vm.memoryMiB", "got 100", "at least 512"),
    ("disk-unit-GB", {"vm": {"diskSize": "20GB"}}, "nexus:vm.diskSize", "got '20GB'", "M, G or T"),
    ("disk-negative", {"vm": {"diskSize": "-5G"}}, "nexus:vm.diskSize", "got '-5G'", "M, G or T"),
    (
        "disk-shell-injection",
        {"vm": {"diskSize": "20G; rm -rf /"}},
        "nexus:vm.diskSize",
        "got '20G; rm -rf /'",
        "M, G or T",
    ),
    (
        "disk-trailing-newline",
        {"vm": {"diskSize": "20G\n"}},
        "nexus:vm.diskSize",
        "got '20G\\n'",
        "M, G or T",
    ),
    ("accelerator-xen", {"vm": {"accelerator": "xen"}}, "nexus:vm.accelerator", "got 'xen'", "'whpx'"),
    ("arch-riscv64", {"vm": {"arch": "riscv64"}}, "nexus:vm.arch", "got 'riscv64'", "'aarch64'"),
    ("boot-timeout-short", {"vm": {"bootTimeoutSeconds": 5}}, "nexus:vm.bootTimeoutSeconds", "got 5", "30"),
    (
        "vm-name-underscore",
        {"vm": {"name": "nexus_vm"}},
        "nexus:vm.name",
        "got 'nexus_vm'",
        "lowercase letters",
    ),
    ("ssh-port-zero", {"network": {"sshPort": 0}}, "nexus:network.sshPort", "got 0", "at least 1"),
    (
        "ssh-port-70000",
        {"network": {"sshPort": 70000}},
        "nexus:network.sshPort",
        "got 70000",
        "at most 65535",
    ),
    (
        "forward-host-65536",
        {"network": {"forwards": [{"host": 65536, "guest": 80}]}},
        "nexus:network.forwards[0].host",
        "got 65536",
        "at most 65535",
    ),
    (
        "forward-missing-guest",
        {"network": {"forwards": [{"host": 8080}]}},
        "nexus:network.forwards[0]",
        "'guest'",
        "required",
    ),
    (
        "forward-protocol-sctp",
        {"network": {"forwards": [{"host": 8080, "guest": 80, "protocol": "sctp"}]}},
        "nexus:network.forwards[0].protocol",
        "got 'sctp'",
        "'udp'",
    ),
    (
        "forwards-too-many",
        {"network": {"forwards": [{"host": 10000 + i, "guest": 80} for i in range(33)]}},
        "nexus:network.forwards",
        "'host': 10032",
        "at most 32 items",
    ),
    (
        "duplicate-host-port",
        {"network": {"sshPort": 8080}},
        "nexus:network.forwards[0].host",
        "8080",
        "nexus:network.sshPort",
    ),
    (
        "duplicate-host-port-between-forwards",
        {"network": {"forwards": [{"host": 9000, "guest": 80}, {"host": 9000, "guest": 443}]}},
        "nexus:network.forwards[1].host",
        "9000",
        "nexus:network.forwards[0].host",
    ),
    (
        "bind-10.0.0.1",
        {"network": {"bindAddress": "10.0.0.1"}},
        "nexus:network.bindAddress",
        "got '10.0.0.1'",
        "'127.0.0.1'",
    ),
    (
        "username-shell-injection",
        {"guest": {"username": "root; reboot"}},
        "nexus:guest.username",
        "got 'root; reboot'",
        "a Linux user name",
    ),
    (
        "username-traversal",
        {"guest": {"username": "../etc"}},
        "nexus:guest.username",
        "got '../etc'",
        "a Linux user name",
    ),
    (
        "username-uppercase",
        {"guest": {"username": "Ubuntu"}},
        "nexus:guest.username",
        "got 'Ubuntu'",
        "a Linux user name",
    ),
    (
        "hostname-underscore",
        {"guest": {"hostname": "nexus_lab"}},
        "nexus:guest.hostname",
        "got 'nexus_lab'",
        "a host name",
    ),
    (
        "package-shell-injection",
        {"guest": {"packages": ["docker.io && curl evil"]}},
        "nexus:guest.packages[0]",
        "got 'docker.io && curl evil'",
        "a package name",
    ),
    (
        "install-packages-not-bool",
        {"guest": {"installPackages": "yes"}},
        "nexus:guest.installPackages",
        "got 'yes'",
        "type boolean",
    ),
    (
        "public-key-without-private-key",
        {"guest": {"sshPublicKeyFile": "/home/lab/.ssh/id_ed25519.pub"}},
        "nexus:guest.sshPublicKeyFile",
        "is set but nexus:guest.sshPrivateKeyFile is not",
        "set both",
    ),
    (
        "private-key-without-public-key",
        {"guest": {"sshPrivateKeyFile": "/home/lab/.ssh/id_ed25519"}},
        "nexus:guest.sshPrivateKeyFile",
        "is set but nexus:guest.sshPublicKeyFile is not",
        "set both",
    ),
    (
        "url-inner-newline",
        {"image": {"url": "https://example.com/a\nb.img"}},
        "nexus:image.url",
        "got 'https://example.com/a\\nb.img'",
        "a file:// URL",
    ),
    (
        "url-trailing-newline",
        {"image": {"url": "https://example.com/noble.img\n"}},
        "nexus:image.url",
        "got 'https://example.com/noble.img\\n'",
        "a file:// URL",
    ),
    (
        "url-with-space",
        {"image": {"url": "https://example.com/my image.img"}},
        "nexus:image.url",
        "got 'https://example.com/my image.img'",
        "without spaces",
    ),
    ("url-empty", {"image": {"url": ""}}, "nexus:image.url", "got ''", "a non-empty string"),
    (
        "sha256-too-short",
        {"image": {"sha256": "abc123"}},
        "nexus:image.sha256",
        "got 'abc123'",
        "64 hexadecimal digits",
    ),
    (
        "sha256-not-hex",
        {"image": {"sha256": "z" * 64}},
        "nexus:image.sha256",
        repr("z" * 64),
        "64 hexadecimal digits",
    ),
    (
        "state-dir-relative",
        {"paths": {"stateDir": "state"}},
        "nexus:paths.stateDir",
        "got 'state'",
        "absolute",
    ),
    (
        "state-dir-dotdot",
        {"paths": {"stateDir": "/var/lib/../../etc"}},
        "nexus:paths.stateDir",
        "got '/var/lib/../../etc'",
        "without '..'",
    ),
    (
        "state-dir-tilde-dotdot",
        {"paths": {"stateDir": "~/../../etc"}},
        "nexus:paths.stateDir",
        "got '~/../../etc'",
        "without '..'",
    ),
    (
        "cache-dir-relative",
        {"paths": {"cacheDir": "cache"}},
        "nexus:paths.cacheDir",
        "got 'cache'",
        "absolute",
    ),
    (
        "qemu-binary-comma",
        {"vm": {"qemuBinary": "/opt/qemu,evil/qemu-system-x86_64"}},
        "nexus:vm.qemuBinary",
        "got '/opt/qemu,evil/qemu-system-x86_64'",
        "without commas",
    ),
    (
        "firmware-code-newline",
        {"vm": {"firmwareCode": "/usr/share/a\nb.fd"}},
        "nexus:vm.firmwareCode",
        "got '/usr/share/a\\nb.fd'",
        "without commas or control characters",
    ),
    (
        "machine-comma-injection",
        {"vm": {"machine": "q35,accel=kvm"}},
        "nexus:vm.machine",
        "got 'q35,accel=kvm'",
        "a QEMU name",
    ),
    (
        "machine-trailing-newline",
        {"vm": {"machine": "q35\n"}},
        "nexus:vm.machine",
        "got 'q35\\n'",
        "a QEMU name",
    ),
    (
        "cpu-model-option-injection",
        {"vm": {"cpuModel": "host -daemonize"}},
        "nexus:vm.cpuModel",
        "got 'host -daemonize'",
        "a QEMU name",
    ),
]


@pytest.mark.parametrize(
    ("raw", "key", "shown", "allowed"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_is_rejected_naming_key_value_and_rule(
    raw: dict[str, Any], key: str, shown: str, allowed: str
) -> None:
    message = config_error(raw)
    assert key in message
    assert shown in message
    assert allowed in message


@pytest.mark.parametrize("case", [pytest.param(case, id=case[0]) for case in BAD_INPUTS])
def test_what_is_allowed_is_said_in_words_not_as_a_regex(
    case: tuple[str, dict[str, Any], str, str, str],
) -> None:
    message = config_error(case[1])
    assert "\\Z" not in message and "matching ^" not in message, message


def test_catalogue_is_large_enough() -> None:
    assert len(BAD_INPUTS) >= 25
    assert len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS)


def test_several_errors_are_reported_together() -> None:
    message = config_error(
        {
            "vm": {"cpus": 0, "memoryMiB": 100, "accelerator": "xen"},
            "network": {"sshPort": 70000, "forwards": [{"host": 65536, "guest": 80}]},
            "guest": {"username": "Root"},
        }
    )
    assert message.count("invalid stack configuration") == 1
    for expected in (
        "nexus:vm.cpus: got 0",
        "nexus:vm.memoryMiB: got 100",
        "nexus:vm.accelerator: got 'xen'",
        "nexus:network.sshPort: got 70000",
        "nexus:network.forwards[0].host: got 65536",
        "nexus:guest.username: got 'Root'",
    ):
        assert expected in message
    assert "next step:" in message


def test_every_unknown_key_of_one_object_is_named() -> None:
    # Two misspelt keys in the same object: the user should learn about both in one run.
    message = config_error({"vm": {"memory": 4096, "disk": "20G"}})
    assert "nexus:vm.memory" in message
    assert "nexus:vm.disk" in message


def test_integral_float_does_not_reach_the_qemu_command_line_as_a_float() -> None:
    # JSON Schema counts 2.0 as an integer; `-smp 2.0` / `hostfwd=...:2222.0-:22` would not start QEMU.
    raw: dict[str, Any] = {"vm": {"cpus": 2.0, "memoryMiB": 4096.0}, "network": {"sshPort": 2222.0}}
    try:
        config = load(raw)
    except ConfigError:
        return  # rejecting it is fine too
    assert type(config.vm.cpus) is int
    assert type(config.vm.memory_mib) is int
    assert type(config.network.ssh_port) is int


# --- disk_size_bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [("512M", 512 * 1024**2), ("20G", 20 * 1024**3), ("1T", 1024**4), ("999999M", 999999 * 1024**2)],
)
def test_disk_size_bytes(size: str, expected: int) -> None:
    assert disk_size_bytes(size) == expected


def test_disk_size_bytes_of_the_default_disk() -> None:
    assert disk_size_bytes(load({}).vm.disk_size) == 21474836480


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_disk_size_bytes_matches_qemu_img(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "3G"], check=True, timeout=60)
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk)], check=True, capture_output=True, timeout=60
    )
    assert json.loads(info.stdout)["virtual-size"] == disk_size_bytes("3G")


def test_state_dir_too_long_for_the_qmp_socket_is_refused() -> None:
    long_dir = "/srv/" + "x" * 100
    with pytest.raises(
        ConfigError, match=r"nexus:paths.stateDir: '/srv/x+' is too long for QEMU's control socket"
    ):
        load({"paths": {"stateDir": long_dir}})
    fits = "/srv/" + "x" * 80
    assert str(load({"paths": {"stateDir": fits}}).state_dir) == fits


@pytest.mark.parametrize(
    "state_dir",
    ["/", "~", "~/", "/tmp", "/tmp/", "/home", "/var/tmp", "/usr", "/Users", "~/Documents", "/etc/"],
)
def test_a_shared_directory_is_refused_as_state_dir(state_dir: str) -> None:
    message = config_error({"paths": {"stateDir": state_dir}})
    assert message.startswith(f"nexus:paths.stateDir: got {state_dir!r}")
    assert "a directory other programs share" in message
    assert "allowed: a directory of this stack's own" in message


@pytest.mark.parametrize("state_dir", ["/tmp/lab", "~/labs/one", "/srv/nexus/lab", "/home/other-lab"])
def test_a_directory_of_its_own_is_accepted_as_state_dir(state_dir: str) -> None:
    assert load({"paths": {"stateDir": state_dir}}).state_dir.name in state_dir


def test_user_data_clashing_with_the_generated_seed_fails_at_load_naming_the_key() -> None:
    message = config_error({"guest": {"userData": {"users": "default"}}})
    assert message.startswith("nexus:guest.userData.users: got 'default' (a str); allowed: a list")
    assert "extra_user_data" not in message
    nested = config_error({"guest": {"userData": {"runcmd": {"a": 1}}}})
    assert nested.startswith("nexus:guest.userData.runcmd: got {'a': 1} (a mapping); allowed: a list")
    scalar = config_error({"guest": {"userData": {"hostname": ["a", "b"]}}})
    assert scalar.startswith("nexus:guest.userData.hostname: got ['a', 'b'] (a list); allowed: a str")


def test_user_data_that_merges_is_accepted() -> None:
    config = load(
        {"guest": {"userData": {"users": ["default"], "write_files": [{"path": "/x", "content": "y"}]}}}
    )
    assert config.guest.user_data["users"] == ["default"]


def test_a_disk_smaller_than_the_base_image_names_the_key_and_the_minimum() -> None:
    check_disk_fits_base("3G", 3 << 30)
    with pytest.raises(ConfigError) as caught:
        check_disk_fits_base("2G", (2 << 30) + 1)
    assert str(caught.value).startswith(
        f"nexus:vm.diskSize: got '2G', smaller than the base image's own disk size ({(2 << 30) + 1} bytes); "
        "allowed: at least 3G"
    )


def test_vm_state_takes_running_or_suspended_with_or_without_guest_layers(tmp_path: Path) -> None:
    host_only = {"guest": {"installPackages": False}, "playground": {"enabled": False}}
    assert (
        load_config({**host_only, "vm": {"state": "suspended"}}, stack="s", home=tmp_path).vm.state
        == "suspended"
    )
    assert load_config(host_only, stack="s", home=tmp_path).vm.state == "running"
    with pytest.raises(
        ConfigError, match=r"nexus:vm.state: got 'paused'; allowed: one of 'running', 'suspended'"
    ):
        load_config({**host_only, "vm": {"state": "paused"}}, stack="s", home=tmp_path)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    inner_vm = {"enabled": True, "kernel": str(kernel)}
    everything = {"vm": {"state": "suspended"}, "playground": {"enabled": True}, "innerVm": inner_vm}
    assert load_config(everything, stack="s", home=tmp_path).vm.state == "suspended"

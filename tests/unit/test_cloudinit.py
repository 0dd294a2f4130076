"""Unit tests for nexus_components.core.cloudinit: render, parse back, assert the structure."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from nexus_components.core.cloudinit import (
    CloudInitSpec,
    instance_id_for,
    merge_user_data,
    render_meta_data,
    render_user_data,
    seed_packages,
)
from nexus_components.core.errors import ConfigError, NexusError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBk5x4Qm2M3hN8b0cR2rL1s9gG0Zt9j8pXh2m3v4w5x6 lab@host"


def _spec(**overrides: Any) -> CloudInitSpec:
    values: dict[str, Any] = {
        "username": "nexus",
        "ssh_public_key": KEY,
        "hostname": "nexus-lab",
        "guest_arch": "x86_64",
    }
    values.update(overrides)
    return CloudInitSpec(**values)


def _parse(spec: CloudInitSpec) -> dict[str, Any]:
    text = render_user_data(spec)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_user_block_has_key_sudo_shell_and_locked_password() -> None:
    doc = _parse(_spec())
    [user] = doc["users"]
    assert user["name"] == "nexus"
    assert user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["shell"] == "/bin/bash"
    assert user["lock_passwd"] is True
    assert "sudo" in user["groups"]
    # Groups created by packages would make user creation fail; they go through runcmd.
    assert not {"docker", "kvm", "libvirt"} & set(user["groups"])


def test_no_password_auth_no_root_and_hostname() -> None:
    doc = _parse(_spec())
    assert doc["ssh_pwauth"] is False
    assert doc["disable_root"] is True
    assert doc["hostname"] == "nexus-lab"
    assert "ready" in doc["final_message"]


@pytest.mark.parametrize(
    ("arch", "qemu_pkg", "other_qemu_pkg"),
    [("x86_64", "qemu-system-x86", "qemu-system-arm"), ("aarch64", "qemu-system-arm", "qemu-system-x86")],
)
def test_packages_per_arch(arch: str, qemu_pkg: str, other_qemu_pkg: str) -> None:
    doc = _parse(_spec(guest_arch=arch))
    assert doc["package_update"] is True
    assert doc["packages"] == seed_packages(arch)
    for pkg in (
        "docker.io",
        qemu_pkg,
        "qemu-utils",
        "cpu-checker",
        "libvirt-daemon-system",
        "libvirt-clients",
    ):
        assert pkg in doc["packages"]
    assert other_qemu_pkg not in doc["packages"]


def test_seed_packages_rejects_unknown_arch() -> None:
    with pytest.raises(NexusError, match="riscv64"):
        seed_packages("riscv64")


def test_runcmd_is_argv_lists_with_group_additions_and_services() -> None:
    doc = _parse(_spec())
    runcmd = doc["runcmd"]
    assert all(isinstance(argv, list) and all(isinstance(a, str) for a in argv) for argv in runcmd)
    for group in ("docker", "kvm", "libvirt"):
        assert ["usermod", "-aG", group, "--", "nexus"] in runcmd
    assert ["systemctl", "enable", "--now", "docker"] in runcmd
    assert ["systemctl", "enable", "--now", "libvirtd"] in runcmd


def test_hostile_username_stays_one_argv_element() -> None:
    hostile = "a;rm -rf /"
    doc = _parse(_spec(username=hostile))
    assert doc["users"][0]["name"] == hostile
    usermods = [argv for argv in doc["runcmd"] if argv[0] == "usermod"]
    assert len(usermods) == 3
    for argv, group in zip(usermods, ("docker", "kvm", "libvirt"), strict=True):
        # Exactly five elements: the name was neither split nor spliced into another one.
        assert argv == ["usermod", "-aG", group, "--", hostile]


def test_extra_runcmd_comes_after_seed_runcmd_and_is_verbatim() -> None:
    extra = (("echo", "hi there; $(whoami)"), ("touch", "/tmp/done"))
    doc = _parse(_spec(extra_runcmd=extra))
    assert doc["runcmd"][-2:] == [list(argv) for argv in extra]
    assert doc["runcmd"][0][0] == "usermod"


def test_install_packages_false_drops_package_steps() -> None:
    doc = _parse(_spec(install_packages=False, extra_packages=("htop",)))
    assert "packages" not in doc
    assert "package_update" not in doc
    assert "runcmd" not in doc
    # The user and SSH access are still there.
    assert doc["users"][0]["ssh_authorized_keys"] == [KEY]


def test_install_packages_false_keeps_only_extra_runcmd() -> None:
    doc = _parse(_spec(install_packages=False, extra_runcmd=(("true",),)))
    assert doc["runcmd"] == [["true"]]


def test_extra_packages_are_appended_once() -> None:
    doc = _parse(_spec(extra_packages=("htop", "docker.io", "htop")))
    assert doc["packages"] == [*seed_packages("x86_64"), "htop"]


def test_extra_user_data_is_deep_merged_last() -> None:
    extra = {
        "packages": ["jq"],
        "ssh_pwauth": True,  # the user may override scalars deliberately
        "write_files": [{"path": "/etc/motd", "content": "lab\n"}],
        "runcmd": [["echo", "user"]],
    }
    doc = _parse(_spec(extra_user_data=extra))
    assert doc["packages"] == [*seed_packages("x86_64"), "jq"]
    assert doc["ssh_pwauth"] is True
    assert doc["write_files"] == [{"path": "/etc/motd", "content": "lab\n"}]
    assert doc["runcmd"][-1] == ["echo", "user"]
    assert ["systemctl", "enable", "--now", "docker"] in doc["runcmd"]


def test_extra_user_data_with_tuples_renders_as_lists() -> None:
    doc = _parse(_spec(extra_user_data={"bootcmd": (("echo", "early"),)}))
    assert doc["bootcmd"] == [["echo", "early"]]


def test_extra_user_data_kind_conflict_is_config_error() -> None:
    with pytest.raises(ConfigError, match="runcmd"):
        render_user_data(_spec(extra_user_data={"runcmd": "echo hi"}))


def test_unrepresentable_extra_user_data_is_config_error() -> None:
    with pytest.raises(ConfigError, match="YAML"):
        render_user_data(_spec(extra_user_data={"thing": object()}))


def test_merge_nested_dicts_lists_and_scalars() -> None:
    base: dict[str, Any] = {
        "a": {"b": {"c": 1, "keep": "x"}, "list": [1, 2]},
        "scalar": "old",
        "items": [{"k": 1}],
    }
    extra = {
        "a": {"b": {"c": 2, "new": True}, "list": [2, 3]},
        "scalar": "new",
        "items": [{"k": 1}, {"k": 2}],
        "added": [1],
    }
    merged = merge_user_data(base, extra)
    assert merged == {
        "a": {"b": {"c": 2, "keep": "x", "new": True}, "list": [1, 2, 3]},
        "scalar": "new",
        "items": [{"k": 1}, {"k": 2}],
        "added": [1],
    }
    # Inputs are not modified.
    assert base["a"]["b"] == {"c": 1, "keep": "x"}
    assert base["a"]["list"] == [1, 2]


def test_merge_result_does_not_alias_extra() -> None:
    extra: dict[str, Any] = {"new": {"inner": [1]}}
    merged = merge_user_data({}, extra)
    merged["new"]["inner"].append(2)
    assert extra == {"new": {"inner": [1]}}


def test_meta_data_carries_instance_id_and_hostname() -> None:
    meta = yaml.safe_load(render_meta_data(instance_id="nexus-0123456789abcdef", hostname="nexus-lab"))
    assert meta == {"instance-id": "nexus-0123456789abcdef", "local-hostname": "nexus-lab"}


def test_instance_id_is_stable_for_same_content() -> None:
    user_data = render_user_data(_spec())
    first = instance_id_for(user_data, "nexus-lab")
    assert first == instance_id_for(render_user_data(_spec()), "nexus-lab")
    assert first.startswith("nexus-")
    assert len(first) == len("nexus-") + 16
    int(first.removeprefix("nexus-"), 16)


def test_instance_id_changes_when_content_changes() -> None:
    base_id = instance_id_for(render_user_data(_spec()), "nexus-lab")
    assert instance_id_for(render_user_data(_spec(extra_packages=("htop",))), "nexus-lab") != base_id
    assert instance_id_for(render_user_data(_spec(ssh_public_key=KEY + "x")), "nexus-lab") != base_id
    assert instance_id_for(render_user_data(_spec()), "other-host") != base_id
    # The separator keeps a shifted boundary between the two inputs from colliding.
    assert instance_id_for("ab", "c") != instance_id_for("a", "bc")


def test_render_is_deterministic() -> None:
    assert render_user_data(_spec()) == render_user_data(_spec())

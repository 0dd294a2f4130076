"""nexus:mounts[*].innerVm: a host folder shared on into the inner VM. The checks at preview
(each names the key), the inner QEMU's 9p devices, the state's round trip, and the inner seed
that mounts the shares at each boot (its fstab part run for real on a file)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nexus_components.config import load_config
from nexus_components.core.errors import ConfigError
from nexus_components.core.runner import GuestError
from nexus_components.guest import inner_image, inner_vm, lifecycles
from nexus_components.guest.settings import InnerImage, InnerShare, InnerVmConfig
from nexus_components.host import mounts
from nexus_components.host.mounts import Mount

HOME = Path("/home/tester")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9rDRAP5nPGcTupF3fvJm+FFqYqolTK8kUrRcHv3wDZ nexus-dev"
INNER_ON = {"enabled": True, "kernel": "/opt/vmlinuz", "memoryMiB": 256}


def load(tmp_path: Path, entries: list[dict[str, Any]], inner: dict[str, Any] | None = None) -> Any:
    for entry in entries:
        (tmp_path / entry["host"]).mkdir(exist_ok=True)
    return load_config(
        {"mounts": entries, "innerVm": INNER_ON if inner is None else inner},
        stack="dev",
        home=HOME,
        project_dir=tmp_path,
        host_os="linux",
    )


def refusal(tmp_path: Path, entries: list[dict[str, Any]], inner: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, entries, inner)
    return str(caught.value)


def test_an_inner_vm_path_shares_the_container_path_under_the_mounts_tag(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        [
            {"host": "a", "vm": "/srv/a", "container": "/a"},
            {"host": "b", "vm": "/srv/b", "container": "/work", "innerVm": "/mnt/work", "readOnly": True},
        ],
    )
    # The tag is the mount's own (nexus1, its index), the one the VM mounts it by too.
    assert config.inner_vm.shares == (InnerShare("nexus1", "/work", "/mnt/work", True),)
    assert config.mounts[1].inner_vm == "/mnt/work" and config.mounts[0].inner_vm is None


@pytest.mark.parametrize(
    ("entries", "inner", "words"),
    [
        (
            [{"host": "a", "vm": "/srv/a", "innerVm": "/mnt/a"}],
            None,
            "nexus:mounts[0].innerVm: got '/mnt/a' without nexus:mounts[0].container",
        ),
        (
            [{"host": "a", "vm": "/srv/a", "container": "/a", "innerVm": "/mnt/a"}],
            {"enabled": False},
            "nexus:mounts[0].innerVm: got '/mnt/a' while nexus:innerVm.enabled is false",
        ),
        (
            [{"host": "a", "vm": "/srv/a", "container": "/a", "innerVm": "/proc/a"}],
            None,
            "nexus:mounts[0].innerVm: got '/proc/a', under /proc; allowed: an inner VM path outside",
        ),
        (
            [{"host": "a", "vm": "/srv/a", "container": "/a", "innerVm": "/mnt/../"}],
            None,
            "nexus:mounts[0].innerVm: got '/mnt/../'; allowed: an absolute inner VM path below /",
        ),
        (
            [
                {"host": "a", "vm": "/srv/a", "container": "/a", "innerVm": "/mnt/a"},
                {"host": "b", "vm": "/srv/b", "container": "/b", "innerVm": "/mnt/a"},
            ],
            None,
            "nexus:mounts[1].innerVm: got '/mnt/a', the same inner VM path as nexus:mounts[0].innerVm",
        ),
        (
            [
                {"host": "a", "vm": "/srv/a", "container": "/a", "innerVm": "/mnt/a"},
                {"host": "b", "vm": "/srv/b", "container": "/b", "innerVm": "/mnt/a/b"},
            ],
            None,
            "nexus:mounts[1].innerVm: got '/mnt/a/b', inside or around the inner VM path of "
            "nexus:mounts[0].innerVm",
        ),
    ],
    ids=["no container", "inner VM off", "reserved", "not below /", "duplicate", "nested"],
)
def test_each_refusal_names_the_key_and_what_is_allowed(
    tmp_path: Path, entries: list[dict[str, Any]], inner: dict[str, Any] | None, words: str
) -> None:
    message = refusal(tmp_path, entries, inner)
    assert words in message, message


def test_a_relative_inner_vm_path_is_refused_by_the_schema_naming_the_key(tmp_path: Path) -> None:
    message = refusal(tmp_path, [{"host": "a", "vm": "/srv/a", "container": "/a", "innerVm": "mnt/a"}])
    assert "nexus:mounts[0].innerVm" in message and "an absolute path" in message, message


def test_qemu_vm_gets_no_inner_vm_path_so_an_inner_share_never_restarts_the_vm() -> None:
    props = mounts.as_props((Mount("/h/a", "/srv/a", "9p", True, "/work", "/mnt/work"),))
    assert props == [{"host": "/h/a", "vm": "/srv/a", "type": "9p", "readOnly": True, "container": "/work"}]


# --- the inner QEMU


def test_the_inner_qemu_serves_each_share_over_9p_read_only_when_asked() -> None:
    config = InnerVmConfig(
        enabled=True,
        kernel="/opt/vmlinuz",
        shares=(InnerShare("nexus0", "/work", "/mnt/work"), InnerShare("nexus2", "/a,b", "/mnt/ro", True)),
    )
    argv = inner_vm.build_inner_argv(config, "kvm")
    fsdevs = [argv[i + 1] for i, word in enumerate(argv) if word == "-fsdev"]
    devices = [argv[i + 1] for i, word in enumerate(argv) if word == "-device" and "9p" in argv[i + 1]]
    assert fsdevs == [
        "local,id=share0,path=/work,security_model=none",
        "local,id=share1,path=/a,,b,security_model=none,readonly=on",
    ]
    assert devices == [
        "virtio-9p-pci,fsdev=share0,mount_tag=nexus0",
        "virtio-9p-pci,fsdev=share1,mount_tag=nexus2",
    ]
    assert "-fsdev" not in inner_vm.build_inner_argv(InnerVmConfig(enabled=True, kernel="/k"), "kvm")


def test_the_shares_come_back_from_the_state_and_a_change_restarts_the_inner_vm() -> None:
    props: dict[str, Any] = {
        "name": "inner",
        "cpus": 1.0,
        "memory_mib": 256.0,
        "disk_size": "10G",
        "accelerator": "auto",
        "kernel": "/opt/vmlinuz",
        "kernel_args": "console=ttyS0",
        "powerdown_timeout_seconds": 60.0,
        "boot_timeout_seconds": 300.0,
        "shares": [{"tag": "nexus0", "source": "/work", "path": "/mnt/work", "readOnly": True}],
    }
    assert lifecycles.inner_vm_config(props).shares == (InnerShare("nexus0", "/work", "/mnt/work", True),)
    assert "shares" in lifecycles.InnerVm.RESTART_KEYS
    # A suspended VM cannot restart its inner VM: the refusal names where the shares are set.
    suspended = {**props, "vm_state": "suspended"}
    with pytest.raises(GuestError, match=r"changed \(its shares, nexus:mounts\[\*\]\.innerVm\)"):
        lifecycles.InnerVm(runner_for=lambda _props: None).diff(  # type: ignore[arg-type,return-value]
            suspended, {**suspended, "shares": []}
        )


# --- the inner VM's seed (a cloud image)

IMAGE_CONFIG = InnerVmConfig(
    enabled=True, image=InnerImage("https://example.test/inner.qcow2"), username="nexus"
)
SHARES = (
    InnerShare("nexus0", "/mnt/work", "/mnt/work"),
    InnerShare("nexus1", "/frozen", "/srv/frozen", True),
)


def test_the_seed_mounts_the_shares_at_every_boot_read_only_where_asked() -> None:
    config = InnerVmConfig(**{**IMAGE_CONFIG.__dict__, "shares": SHARES})
    document = yaml.safe_load(inner_image.render_seed(config, KEY).user_data)
    ((shell, flag, script),) = document["bootcmd"]
    assert (shell, flag) == ("sh", "-c")
    assert "nexus1 /srv/frozen 9p trans=virtio,version=9p2000.L,msize=262144,nofail,ro 0 0" in script
    assert "nexus0 /mnt/work 9p trans=virtio,version=9p2000.L,msize=262144,nofail,rw 0 0" in script
    assert "mountpoint -q /srv/frozen || mount /srv/frozen" in script
    # Without shares the seed is what it was (so is its instance id: no cloud-init rerun).
    assert "bootcmd" not in yaml.safe_load(inner_image.render_seed(IMAGE_CONFIG, KEY).user_data)
    assert (
        inner_image.render_seed(config, KEY).instance_id
        != inner_image.render_seed(IMAGE_CONFIG, KEY).instance_id
    )


def test_the_seed_replaces_only_its_own_fstab_block_at_each_boot(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("LABEL=rootfs / ext4 defaults 0 1\n")

    def boot(shares: tuple[InnerShare, ...]) -> None:
        fstab_part = mounts.inner_fstab_script(shares).split("modprobe")[0].replace("/etc/fstab", str(fstab))
        subprocess.run(["sh", "-c", fstab_part], check=True, timeout=30)

    boot(SHARES)
    boot(SHARES[1:])  # a share removed: its line goes, the other stays once
    assert fstab.read_text().splitlines() == [
        "LABEL=rootfs / ext4 defaults 0 1",
        mounts.FSTAB_BEGIN,
        mounts.inner_fstab_line(SHARES[1]),
        mounts.FSTAB_END,
    ]


def test_a_share_the_inner_kernel_cannot_mount_says_why_and_the_boot_goes_on() -> None:
    script = mounts.inner_fstab_script(SHARES[:1])
    assert "|| echo 'nexus:mounts (nexus0): the inner VM could not mount /mnt/work" in script
    # Run for real with a mount that fails: the message, and the script still ends well.
    fake = {"mountpoint": "return 1", "mount": "return 32", "modprobe": "return 1", "mkdir": "return 0"}
    body = "".join(f"{name}() {{ {action}; }}\n" for name, action in fake.items())
    mounting = script[script.index("modprobe") :]
    result = subprocess.run(["sh", "-c", body + mounting], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "could not mount /mnt/work" in result.stderr, result

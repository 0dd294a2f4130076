"""The host resources' create/diff/delete (nexus_components/lifecycles.py), called directly on
real files (no engine).

What `pulumi preview` shows is decided by these diffs: they are where "shrinking is
refused", "a new base image replaces the overlay" and "a killed VM is started again"
live.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nexus_components.core.errors import ConfigError, NexusError, VmError
from nexus_components.core.lifecycle import Created
from nexus_components.core.seed_iso import read_seed_iso
from nexus_components.host.lifecycles import (
    BaseImage,
    CloudInitSeed,
    OverlayDisk,
    QemuVm,
    SshKey,
    StateDir,
    ensure_firmware_vars,
)
from nexus_components.host.paths import DiskRecord, VmPaths


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    return base


def overlay_props(state_dir: Path, base: Path, size: str, digest: str = "a" * 64) -> dict[str, Any]:
    units = {"G": 1 << 30, "M": 1 << 20}
    return {
        "state_dir": str(state_dir),
        "base_path": str(base),
        "base_digest": digest,
        "disk_size": size,
        # Numbers come back from the engine as floats; the providers must cope.
        "size_bytes": float(int(size[:-1]) * units[size[-1]]),
        "qemu_img": "qemu-img",
        "qmp_tcp_port": None,
    }


def outs(result: Created | dict[str, Any]) -> dict[str, Any]:
    return dict(result.outs if isinstance(result, Created) else result)


def virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True)
    return int(json.loads(out.stdout)["virtual-size"])


def test_overlay_is_created_on_the_base_and_grows_offline(tmp_path: Path, base_image: Path) -> None:
    provider = OverlayDisk()
    olds = outs(provider.create(overlay_props(tmp_path, base_image, "2G")))
    overlay = VmPaths(tmp_path).overlay_disk
    assert virtual_size(overlay) == 2 << 30
    info = subprocess.run(["qemu-img", "info", str(overlay)], capture_output=True, text=True).stdout
    assert f"backing file: {base_image}" in info

    news = overlay_props(tmp_path, base_image, "3G")
    grow = provider.diff(olds, news)
    assert grow.changes and not grow.replaces
    provider.update(olds, news)
    assert virtual_size(overlay) == 3 << 30

    provider.delete(news)
    assert not overlay.exists()
    assert base_image.exists(), "the base image is never touched"


def test_overlay_smaller_than_the_base_image_is_refused(tmp_path: Path, base_image: Path) -> None:
    with pytest.raises(VmError, match=r"nexus:vm.diskSize: .* smaller than the base image"):
        OverlayDisk().create(overlay_props(tmp_path, base_image, "512M"))
    assert not VmPaths(tmp_path).overlay_disk.exists()


def test_shrinking_is_refused_at_diff_and_a_new_base_replaces(tmp_path: Path, base_image: Path) -> None:
    provider = OverlayDisk()
    olds = outs(provider.create(overlay_props(tmp_path, base_image, "2G")))
    with pytest.raises(VmError, match=r"nexus:vm.diskSize: shrinking the disk from 2G to 1G is refused"):
        provider.diff(olds, overlay_props(tmp_path, base_image, "1G"))
    new_base = provider.diff(olds, overlay_props(tmp_path, base_image, "2G", digest="b" * 64))
    assert new_base.replaces == ["base_digest"] and new_base.delete_before_replace
    unchanged = provider.diff(olds, overlay_props(tmp_path, base_image, "2G"))
    assert not unchanged.changes


def test_a_vanished_overlay_is_created_again(tmp_path: Path, base_image: Path) -> None:
    provider = OverlayDisk()
    created = provider.create(overlay_props(tmp_path, base_image, "2G"))
    VmPaths(tmp_path).overlay_disk.unlink()
    assert provider.diff(outs(created), overlay_props(tmp_path, base_image, "2G")).replaces == ["path"]
    again = provider.create(overlay_props(tmp_path, base_image, "2G"))
    assert again.id != created.id, "a new disk gets a new id, so the VM on it is re-created too"


def test_a_create_keeps_the_stacks_disk_made_on_the_same_base_and_grows_it(
    tmp_path: Path, base_image: Path
) -> None:
    """What an upgraded stack and an up interrupted before its state was saved meet: the disk
    is already there. It is kept (the same file, the same id), grown to the size asked for."""
    first = OverlayDisk().create(overlay_props(tmp_path, base_image, "2G"))
    overlay = VmPaths(tmp_path).overlay_disk
    with overlay.open("r+b") as disk:  # what the guest wrote, past the qcow2 header
        disk.seek(0, 2)
        disk.write(b"guest data")
    before = overlay.stat()
    again = OverlayDisk().create(overlay_props(tmp_path, base_image, "3G"))
    assert again.id == first.id
    assert overlay.stat().st_ino == before.st_ino and overlay.read_bytes().find(b"guest data") > 0
    assert virtual_size(overlay) == 3 << 30

    with pytest.raises(VmError, match=r"^nexus:vm.diskSize: got '2G', but the stack's disk .* shrinking"):
        OverlayDisk().create(overlay_props(tmp_path, base_image, "2G"))

    on_another_base = OverlayDisk().create(overlay_props(tmp_path, base_image, "3G", digest="b" * 64))
    assert on_another_base.id != first.id and b"guest data" not in overlay.read_bytes()
    assert DiskRecord.read(VmPaths(tmp_path)) == DiskRecord(on_another_base.id, "b" * 64, str(base_image))
    OverlayDisk().delete(overlay_props(tmp_path, base_image, "3G"))
    assert list(tmp_path.glob("disk*")) == []


def test_a_disk_without_its_record_is_made_anew(tmp_path: Path, base_image: Path) -> None:
    first = OverlayDisk().create(overlay_props(tmp_path, base_image, "2G"))
    VmPaths(tmp_path).disk_record.unlink()
    assert OverlayDisk().create(overlay_props(tmp_path, base_image, "2G")).id != first.id


def vm_props(state_dir: Path, **changes: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": "nexus-unit",
        "state_dir": str(state_dir),
        "argv": ["qemu-system-x86_64", "-m", "1024M"],
        "ssh_port": 2222.0,
        "forwards": [],
        "bind_address": "127.0.0.1",
        "username": "nexus",
        "private_key": "/k",
        "instance_id": "nexus-1",
        "overlay_id": "disk@1",
        "qmp_tcp_port": None,
    }
    props.update(changes)
    return props


def test_vm_diff_restarts_on_changes_replaces_on_a_new_disk_and_notices_a_dead_vm(tmp_path: Path) -> None:
    provider = QemuVm()
    olds = vm_props(tmp_path)
    # No QEMU runs for this state dir: preview must say it will be started again.
    dead = provider.diff(olds, vm_props(tmp_path))
    assert dead.changes and not dead.replaces

    memory = provider.diff(olds, vm_props(tmp_path, argv=["qemu-system-x86_64", "-m", "2048M"]))
    assert memory.changes and not memory.replaces

    new_disk = provider.diff(olds, vm_props(tmp_path, overlay_id="disk@2"))
    assert new_disk.replaces == ["overlay_id"] and new_disk.delete_before_replace


def test_seed_is_rewritten_when_user_data_changes(tmp_path: Path) -> None:
    props = {
        "state_dir": str(tmp_path),
        "username": "nexus",
        "hostname": "lab",
        "arch": "x86_64",
        "install_packages": False,
        "packages": [],
        "user_data": {},
        "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 test",
    }
    provider = CloudInitSeed()
    first = outs(provider.create(props))
    label, files = read_seed_iso(VmPaths(tmp_path).seed_iso)
    assert label == "cidata" and b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 test" in files["user-data"]
    assert not provider.diff(first, props).changes

    changed = {**props, "packages": ["htop"], "install_packages": True}
    assert provider.diff(first, changed).changes
    second = outs(provider.update(first, changed))
    assert second["instance_id"] != first["instance_id"], "cloud-init re-runs on a changed seed"
    assert b"htop" in read_seed_iso(VmPaths(tmp_path).seed_iso)[1]["user-data"]
    provider.delete(second)
    assert not VmPaths(tmp_path).seed_iso.exists() and not VmPaths(tmp_path).user_data.exists()


def test_generated_key_is_removed_on_delete_but_a_users_key_is_not(tmp_path: Path) -> None:
    provider = SshKey()
    generated = outs(
        provider.create(
            {
                "state_dir": str(tmp_path),
                "comment": "nexus-unit",
                "private_key_file": None,
                "public_key_file": None,
            }
        )
    )
    private_key = Path(generated["private_key_path"])
    assert private_key.stat().st_mode & 0o777 == 0o600
    assert generated["public_key"].startswith("ssh-ed25519 ")
    provider.delete(generated)
    assert not private_key.exists()

    own = tmp_path / "own"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(own)], check=True)
    users = outs(
        provider.create(
            {
                "state_dir": str(tmp_path),
                "comment": "x",
                "private_key_file": str(own),
                "public_key_file": f"{own}.pub",
            }
        )
    )
    provider.delete(users)
    assert own.exists() and Path(f"{own}.pub").exists()

    with pytest.raises(NexusError, match=r"nexus:guest.sshPrivateKeyFile: .*missing does not exist"):
        provider.create(
            {
                "state_dir": str(tmp_path),
                "comment": "x",
                "private_key_file": str(tmp_path / "missing"),
                "public_key_file": f"{own}.pub",
            }
        )


def test_state_dir_delete_removes_the_stacks_files_but_keeps_foreign_ones(tmp_path: Path) -> None:
    provider = StateDir()
    state = tmp_path / "state"
    props = outs(provider.create({"state_dir": str(state), "stack": "unit"}))
    assert state.stat().st_mode & 0o777 == 0o700
    VmPaths(state).serial_log.write_text("boot\n")
    provider.delete(props)
    assert not state.exists()

    props = outs(provider.create({"state_dir": str(state), "stack": "unit"}))
    (state / "notes.txt").write_text("mine")
    provider.delete(props)
    assert (state / "notes.txt").read_text() == "mine"


def test_state_dir_parents_up_created_go_on_delete_even_without_the_marker(tmp_path: Path) -> None:
    provider = StateDir()
    state = tmp_path / "a" / "b" / "state"
    props = outs(provider.create({"state_dir": str(state), "stack": "unit"}))
    assert props["created_dirs"] == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(state)]
    VmPaths(state).marker.unlink()  # the state's record is the fallback
    provider.delete(props)
    assert list(tmp_path.iterdir()) == []


def test_state_dir_create_refuses_a_users_directory_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "serial.log").write_text("mine\n")
    with pytest.raises(
        ConfigError, match=r"^nexus:paths.stateDir: .* holds files nexus-nested-vm did not create"
    ):
        StateDir().create({"state_dir": str(tmp_path), "stack": "unit"})
    assert (tmp_path / "serial.log").read_text() == "mine\n"


def image_props(tmp_path: Path, image: Path, disk_size: str) -> dict[str, Any]:
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    return {
        "url": str(image),
        "sha256": digest,
        "cache_dir": str(tmp_path / "cache"),
        "disk_size": disk_size,
        "qemu_img": "qemu-img",
    }


def test_base_image_refuses_a_disk_smaller_than_itself_at_create_and_at_diff(
    tmp_path: Path, base_image: Path
) -> None:
    provider = BaseImage()
    with pytest.raises(ConfigError, match=r"^nexus:vm.diskSize: got '512M', smaller than the base image"):
        provider.create(image_props(tmp_path, base_image, "512M"))
    olds = outs(provider.create(image_props(tmp_path, base_image, "1G")))
    assert olds["virtual_size"] == 1 << 30
    assert not provider.diff(olds, image_props(tmp_path, base_image, "2G")).changes
    with pytest.raises(ConfigError, match=r"^nexus:vm.diskSize: got '100M'.*allowed: at least 1G"):
        provider.diff(olds, image_props(tmp_path, base_image, "100M"))


def test_aarch64_gets_its_own_uefi_variable_store(tmp_path: Path) -> None:
    code = tmp_path / "edk2-aarch64-code.fd"
    code.write_bytes(b"\x01" * 4096)
    template = tmp_path / "edk2-arm-vars.fd"
    template.write_bytes(b"\x02" * 4096)

    from_template = VmPaths(tmp_path / "a")
    from_template.state_dir.mkdir()
    ensure_firmware_vars(from_template, str(code), str(template))
    assert from_template.firmware_vars.read_bytes() == template.read_bytes()
    from_template.firmware_vars.write_bytes(b"\x03" * 4096)  # the guest saved a boot entry
    ensure_firmware_vars(from_template, str(code), str(template))
    assert from_template.firmware_vars.read_bytes() == b"\x03" * 4096, "kept across restarts"

    blank = VmPaths(tmp_path / "b")
    blank.state_dir.mkdir()
    ensure_firmware_vars(blank, str(code), None)
    assert blank.firmware_vars.read_bytes() == b"\x00" * 4096

    x86 = VmPaths(tmp_path / "c")
    x86.state_dir.mkdir()
    ensure_firmware_vars(x86, None, None)
    assert not x86.firmware_vars.exists()


def test_vm_diff_suspends_resumes_and_leaves_a_suspended_vm_down(tmp_path: Path) -> None:
    provider = QemuVm()
    running, suspended = vm_props(tmp_path), vm_props(tmp_path, state="suspended")
    # No QEMU runs: for a suspended VM that is as declared, so preview is quiet.
    assert not provider.diff(suspended, vm_props(tmp_path, state="suspended")).changes
    # Suspending and resuming are updates, never replacements.
    for olds, news in (
        (running, suspended),
        (suspended, running),
        (suspended, vm_props(tmp_path, state=None)),
    ):
        diff = provider.diff(olds, news)
        assert diff.changes and not diff.replaces
    # A stack from before nexus:vm.state (no such key) counts as running.
    legacy = {key: value for key, value in running.items() if key != "state"}
    assert provider.diff(legacy, vm_props(tmp_path, state=None)).changes  # its QEMU is dead here
    assert provider.diff(legacy, suspended).changes


def test_a_suspended_vm_records_the_new_inputs_so_the_next_preview_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus_components.host import snapshots, vm_process

    suspended_dirs: list[Path] = []
    monkeypatch.setattr(vm_process, "running_pid", lambda paths, pid=None: 4242)
    monkeypatch.setattr(snapshots, "suspend", lambda paths, log: suspended_dirs.append(paths.state_dir))
    provider = QemuVm()
    running = {**vm_props(tmp_path), "pid": 4242, "ready_seconds": 40.0}
    news = vm_props(tmp_path, state="suspended")
    recorded = provider.update(running, news)
    assert suspended_dirs == [tmp_path]
    assert recorded["state"] == "suspended" and recorded["pid"] == 0 and recorded["ready_seconds"] == 40.0
    assert not provider.diff(recorded, vm_props(tmp_path, state="suspended")).changes

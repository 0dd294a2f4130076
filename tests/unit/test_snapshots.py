"""The pure parts of lab snapshots: the name rule, the QMP job conversation (against a
scripted fake QEMU), the snapshot list and the qcow2 snapshot table (against images
qemu-img makes)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from nexus_components.cli.stack import LabOutputs
from nexus_components.core.errors import NexusError, VmError
from nexus_components.core.ssh import SshTarget
from nexus_components.host.paths import VmPaths
from nexus_components.host.snapshots import (
    SUSPEND_TAG,
    LiveSnapshots,
    Snapshot,
    SnapshotError,
    check_name,
    drop_suspended_state,
    job_state,
    offline_snapshots,
    qcow2_virtual_size,
    resume_argv,
    resync_clock_command,
    snapshot_disk_sizes,
    snapshots_of_image,
    table,
)

# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["clean", "before-upgrade.2", "a", "A_b-c.d", "x" * 63])
def test_good_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a b", "x;rm -rf /", "-x", "1abc", ".hidden", "a/b", "é", "x" * 64, "a\nb"]
)
def test_bad_names_are_refused_naming_the_value_and_the_rule(name: str) -> None:
    with pytest.raises(SnapshotError) as refused:
        check_name(name)
    assert f"snapshot name {name!r} is not allowed; allowed: 1 to 63 characters" in str(refused.value)


# --------------------------------------------------------------------------- list parsing

ENTRY = {
    "id": "1",
    "name": "clean",
    "vm-state-size": 247260489,
    "date-sec": 1796015866,
    "date-nsec": 265511000,
    "vm-clock-sec": 62,
    "vm-clock-nsec": 894787545,
    "icount": -1,
}


def test_snapshots_of_image_reads_query_block_and_qemu_img_info_alike() -> None:
    disk_only = {**ENTRY, "id": "2", "name": "disk", "vm-state-size": 0, "date-sec": 1796015800}
    (older, newer) = snapshots_of_image({"virtual-size": 1, "snapshots": [ENTRY, disk_only]})
    assert older == Snapshot(
        "disk", 0, datetime.fromtimestamp(1796015800.265511, tz=timezone.utc), 62.894787545
    )
    assert newer.name == "clean" and newer.live and not older.live
    assert newer.taken.isoformat().startswith("2026-11-30T05:17:46")
    assert snapshots_of_image({"virtual-size": 1}) == []


def test_table_shows_name_kind_size_and_date() -> None:
    disk_only = {**ENTRY, "name": "disk", "vm-state-size": 0}
    lines = table(snapshots_of_image({"snapshots": [ENTRY, disk_only]})).splitlines()
    assert lines[0].split() == ["NAME", "KIND", "VM", "STATE", "TAKEN", "(UTC)"]
    assert lines[1].split() == ["clean", "live", "235.8", "MiB", "2026-11-30", "05:17:46"]
    assert lines[2].split() == ["disk", "disk-only", "-", "2026-11-30", "05:17:46"]
    assert table([]) == "no snapshots"


# --------------------------------------------------------------------------- the job conversation


@dataclass
class FakeQemu:
    """Answers QMP like QEMU 7.2 does for snapshot jobs: the command returns at once, the job
    runs for `polls` query-jobs, then concludes (with `error`), and waits for job-dismiss."""

    snapshots: list[dict[str, Any]] = field(default_factory=lambda: [dict(ENTRY)])
    polls: int = 2
    error: str | None = None
    refuse: dict[str, str] = field(default_factory=dict)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    virtual_size: int = 4 << 30

    def __call__(self, command: str, **arguments: Any) -> object:
        self.sent.append((command, arguments))
        if command in self.refuse:
            raise VmError(f"QEMU refused the QMP command {command!r}: {self.refuse[command]}")
        if command == "query-block":
            image = {"virtual-size": self.virtual_size, "snapshots": self.snapshots}
            inserted = {"node-name": "#block143", "drv": "qcow2", "image": image}
            seed = {"node-name": "#block571", "drv": "raw", "ro": True, "image": {}}
            return [{"device": "disk0", "inserted": inserted}, {"device": "virtio1", "inserted": seed}]
        if command.startswith("snapshot-"):
            self.jobs[arguments["job-id"]] = {
                "id": arguments["job-id"],
                "left": self.polls,
                "command": command,
            }
            return {}
        if command == "query-jobs":
            reply = []
            for job in self.jobs.values():
                job["left"] -= 1
                concluded = job["left"] < 0
                entry = {
                    "id": job["id"],
                    "type": "snapshot",
                    "status": "concluded" if concluded else "running",
                }
                if concluded and self.error:
                    entry["error"] = self.error
                if concluded and not self.error and job["command"] == "snapshot-save":
                    self.snapshots.append({**ENTRY, "name": self._tag(job["id"]), "date-sec": 1796015875})
                    job["command"] = "done"
                if concluded and not self.error and job["command"] == "snapshot-delete":
                    self.snapshots = [s for s in self.snapshots if s["name"] != self._tag(job["id"])]
                    job["command"] = "done"
                reply.append(entry)
            return reply
        if command == "job-dismiss":
            del self.jobs[arguments["id"]]
            return {}
        if command == "blockdev-snapshot-internal-sync":
            self.snapshots.append({**ENTRY, "name": arguments["name"], "vm-state-size": 0})
            return {}
        raise AssertionError(f"unexpected QMP command {command}")

    def _tag(self, job_id: str) -> str:
        return str(next(args["tag"] for command, args in self.sent if args.get("job-id") == job_id))


def snapshots_of(qemu: FakeQemu) -> LiveSnapshots:
    return LiveSnapshots(qemu, sleep=lambda _: None)


def test_save_runs_a_job_on_the_overlay_disk_only_and_dismisses_it() -> None:
    qemu = FakeQemu()
    saved = snapshots_of(qemu).save("after-install")
    assert saved.name == "after-install" and saved.live
    (save,) = [args for command, args in qemu.sent if command == "snapshot-save"]
    # The seed ISO (#block571, raw and read-only) is not among the devices.
    assert (
        save["tag"] == "after-install" and save["vmstate"] == "#block143" and save["devices"] == ["#block143"]
    )
    commands = [command for command, _ in qemu.sent]
    assert commands.count("query-jobs") == 3 and commands[-2] == "job-dismiss"
    assert qemu.jobs == {}, "the concluded job was dismissed"


def test_a_failed_job_is_reported_with_qemus_words_and_dismissed() -> None:
    qemu = FakeQemu(error="State blocked by non-migratable device 'svm'")
    with pytest.raises(SnapshotError) as failed:
        snapshots_of(qemu).save("live")
    message = str(failed.value)
    assert "QEMU's snapshot-save of 'live' failed: State blocked by non-migratable device 'svm'" in message
    assert "scripts/lab snapshot save --disk-only NAME" in message
    assert qemu.jobs == {}


def test_a_job_that_does_not_finish_in_time_is_an_error() -> None:
    qemu = FakeQemu(polls=10**6)
    ticks = iter(range(10**6))
    live = LiveSnapshots(qemu, timeout=5, clock=lambda: float(next(ticks)), sleep=lambda _: None)
    with pytest.raises(SnapshotError, match="did not finish within 5 s"):
        live.revert("clean")


def test_revert_loads_the_snapshot_and_delete_removes_it() -> None:
    qemu = FakeQemu()
    live = snapshots_of(qemu)
    assert live.revert("clean").name == "clean"
    (load,) = [args for command, args in qemu.sent if command == "snapshot-load"]
    assert load["tag"] == "clean" and load["devices"] == ["#block143"] and load["vmstate"] == "#block143"
    live.delete("clean")
    (delete,) = [args for command, args in qemu.sent if command == "snapshot-delete"]
    assert delete["tag"] == "clean" and "vmstate" not in delete
    assert live.list() == []


@pytest.mark.parametrize("action", ["revert", "delete"])
def test_an_unknown_name_lists_the_existing_ones_and_starts_no_job(action: str) -> None:
    qemu = FakeQemu()
    with pytest.raises(SnapshotError, match="no snapshot named 'nope'; the lab has: clean"):
        getattr(snapshots_of(qemu), action)("nope")
    assert not [command for command, _ in qemu.sent if command.startswith("snapshot-")]


def test_a_taken_name_is_refused_unless_replaced() -> None:
    qemu = FakeQemu()
    with pytest.raises(SnapshotError, match="a snapshot named 'clean' already exists") as refused:
        snapshots_of(qemu).save("clean")
    assert "scripts/lab snapshot save --replace clean" in str(refused.value)
    assert not [command for command, _ in qemu.sent if command.startswith("snapshot-")]
    snapshots_of(qemu).save("clean", replace=True)
    assert [c for c, _ in qemu.sent if c.startswith("snapshot-")] == ["snapshot-delete", "snapshot-save"]
    assert [s["name"] for s in qemu.snapshots] == ["clean"]


def test_a_bad_name_sends_nothing() -> None:
    qemu = FakeQemu()
    with pytest.raises(SnapshotError, match="not allowed"):
        snapshots_of(qemu).save("a;b")
    assert qemu.sent == []


def test_a_disk_only_snapshot_is_taken_without_vm_state_and_refused_for_a_live_revert() -> None:
    qemu = FakeQemu()
    live = snapshots_of(qemu)
    saved = live.save("disk", disk_only=True)
    assert not saved.live
    assert ("blockdev-snapshot-internal-sync", {"device": "disk0", "name": "disk"}) in qemu.sent
    with pytest.raises(SnapshotError, match="holds the disk only"):
        live.revert("disk")
    assert "snapshot-load" not in [command for command, _ in qemu.sent]


def test_job_state_finds_our_job() -> None:
    jobs = [{"id": "other", "status": "running"}, {"id": "ours", "status": "concluded", "error": "boom"}]
    assert job_state(jobs, "ours").concluded and job_state(jobs, "ours").error == "boom"
    assert job_state(jobs, "other").concluded is False
    assert job_state([], "ours").status == "missing"


# --------------------------------------------------------------------------- qcow2 and qemu-img

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@needs_qemu_img
def test_each_snapshots_disk_size_is_read_from_the_qcow2_table(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "1G")
    qemu_img("snapshot", "-c", "small", str(disk))
    qemu_img("resize", "-q", str(disk), "3G")
    qemu_img("snapshot", "-c", "a-longer-name.7", str(disk))
    assert snapshot_disk_sizes(disk) == {"small": 1 << 30, "a-longer-name.7": 3 << 30}
    listed = offline_snapshots(disk)
    assert [s.name for s in listed] == ["small", "a-longer-name.7"] and not any(s.live for s in listed)


@needs_qemu_img
def test_a_revert_across_a_disk_resize_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "4G")
    qemu_img("snapshot", "-c", "clean", str(disk))
    qemu = FakeQemu(virtual_size=5 << 30)
    with pytest.raises(SnapshotError) as refused:
        LiveSnapshots(qemu, overlay=disk, sleep=lambda _: None).revert("clean")
    assert "taken with a 4.0 GiB disk and the disk is 5.0 GiB now" in str(refused.value)
    assert "snapshot-load" not in [command for command, _ in qemu.sent]
    qemu.virtual_size = 4 << 30
    LiveSnapshots(qemu, overlay=disk, sleep=lambda _: None).revert("clean")


def test_not_a_qcow2_image_is_said(tmp_path: Path) -> None:
    (tmp_path / "raw").write_bytes(b"\0" * 1024)
    with pytest.raises(SnapshotError, match="is not a qcow2 image"):
        snapshot_disk_sizes(tmp_path / "raw")


# --------------------------------------------------------------------------- the clock, the CLI


def test_the_clock_is_set_to_the_hosts_time_in_utc() -> None:
    assert resync_clock_command(1796015866.5) == ["sudo", "-n", "date", "-u", "-s", "@1796015866.500"]


def test_the_cli_finds_ssh_from_the_stack_outputs() -> None:
    outputs = LabOutputs(
        "dev",
        {
            "sshCommand": "ssh -o StrictHostKeyChecking=no -i '/a b/key' -p 2222 nexus@127.0.0.1",
            "sshPort": 2222,
            "privateKeyPath": "/a b/key",
        },
    )
    assert outputs.vm_target() == SshTarget("127.0.0.1", 2222, "nexus", Path("/a b/key"))


def test_the_cli_reaches_a_remote_labs_vm_through_its_server_and_refuses_snapshots_there() -> None:
    proxy = ("ssh", "-p", "2200", "-i", "/keys/100%%.key", "lab@srv", "-W", "%h:%p")
    target = SshTarget("127.0.0.1", 2222, "nexus", Path("/a b/key"), proxy)
    outputs = LabOutputs(
        "dev",
        {
            "sshCommand": target.interactive_command(),
            "sshPort": 2222,
            "privateKeyPath": "/a b/key",
            "host": "lab@srv:2200",
        },
    )
    assert outputs.vm_target() == target
    with pytest.raises(
        NexusError, match=r"scripts/lab snapshot: stack 'dev' runs on lab@srv:2200 \(nexus:host\)"
    ):
        outputs.require_local("scripts/lab snapshot")


@needs_qemu_img
def test_resume_needs_the_suspended_state_at_the_disks_size(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", str(paths.overlay_disk), "1G")
    assert qcow2_virtual_size(paths.overlay_disk) == 1 << 30
    assert resume_argv(paths, ["qemu"]) == (None, "no suspended state in the disk")
    qemu_img("snapshot", "-c", SUSPEND_TAG, str(paths.overlay_disk))
    assert resume_argv(paths, ["qemu"]) == (["qemu", "-loadvm", SUSPEND_TAG], "")
    qemu_img("resize", "-q", str(paths.overlay_disk), "2G")
    argv, why_not = resume_argv(paths, ["qemu"])
    assert argv is None and "the disk was grown while suspended (1.0 GiB -> 2.0 GiB)" in why_not
    drop_suspended_state(paths, running=False)
    assert resume_argv(paths, ["qemu"]) == (None, "no suspended state in the disk")

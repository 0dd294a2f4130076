"""Named snapshots of the running lab, kept inside the VM's own qcow2 overlay.

One live snapshot of the VM (its disk, RAM and device state) holds every layer at once:
the VM, the playground container running in it and the inner VM running in that. QEMU
takes it as a job (`snapshot-save`, `snapshot-load`, `snapshot-delete` over QMP): the
command returns at once, the job runs, and `query-jobs` tells how it concluded; a
concluded job waits for `job-dismiss`. Only the overlay disk takes part (`devices`), and
the VM state goes into it too (`vmstate`): the read-only seed ISO, which cannot hold a
snapshot, stays out of it.

A disk-only snapshot (`blockdev-snapshot-internal-sync`) is the fallback where QEMU
refuses to save the VM's state (a device that blocks migration); reverting to one needs
the VM stopped, so a live revert refuses it.

Everything here talks through a `Qmp` callable (one command, its `return` value), so the
conversations are unit-tested against a fake; no Pulumi import.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from nexus_components.core.errors import VmError
from nexus_components.core.qemu_process import gone_within
from nexus_components.core.runner import TIMED_OUT, SshRunner
from nexus_components.core.ssh import SshTarget
from nexus_components.host import vm_process
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import DISK_ID

# Letters and digits first, then also `.`, `_` and `-`: a name that is safe as a file
# name, on a command line and in QEMU's option syntax, and never taken for a snapshot id
# (qcow2 ids are numbers, and QEMU matches a tag or an id).
NAME_RULE = (
    "1 to 63 characters: letters, digits, '.', '_' and '-', starting with a letter "
    "(e.g. clean, before-upgrade.2)"
)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,62}")

# How long a job may take: saving writes the guest's RAM (gigabytes under TCG, at disk
# speed), loading reads it back.
JOB_TIMEOUT_SECONDS = 600.0
# The snapshot a suspended lab is kept in (nexus:vm.state: suspended): a name the rule above
# refuses, so no user snapshot can take it, and `scripts/lab snapshot` cannot delete it.
SUSPEND_TAG = "_nexus-suspended"
POLL_SECONDS = 0.2


class SnapshotError(VmError):
    """A snapshot request that was refused or failed; nothing was changed unless it says so."""


class Qmp(Protocol):
    def __call__(self, command: str, **arguments: Any) -> object:
        """Run one QMP command on the VM's QEMU and return its `return` value; raise
        VmError when QEMU refuses it or cannot be reached."""


def check_name(name: str) -> str:
    """The name itself if it may name a snapshot; else a SnapshotError naming it and the rule."""
    if not _NAME.fullmatch(name):
        raise SnapshotError(
            f"snapshot name {name!r} is not allowed; allowed: {NAME_RULE}",
            hint="pick a name of that form",
        )
    return name


# ------------------------------------------------------------------ what a snapshot is


@dataclass(frozen=True)
class Snapshot:
    name: str
    vm_state_bytes: int  # 0 for a disk-only snapshot
    taken: datetime  # UTC
    vm_clock_seconds: float  # how long the guest had run when it was taken

    @property
    def live(self) -> bool:
        """It holds the VM's RAM and device state: a revert resumes the running lab."""
        return self.vm_state_bytes > 0


def snapshots_of_image(image: Mapping[str, Any]) -> list[Snapshot]:
    """The internal snapshots of a qcow2 image, oldest first, from QMP's `query-block`
    (`inserted.image`) or `qemu-img info --output=json`: both carry the same `snapshots`."""
    found = []
    for entry in image.get("snapshots") or []:
        found.append(
            Snapshot(
                name=str(entry["name"]),
                vm_state_bytes=int(entry.get("vm-state-size", 0)),
                taken=datetime.fromtimestamp(
                    int(entry.get("date-sec", 0)) + int(entry.get("date-nsec", 0)) / 1e9, tz=timezone.utc
                ),
                vm_clock_seconds=int(entry.get("vm-clock-sec", 0)) + int(entry.get("vm-clock-nsec", 0)) / 1e9,
            )
        )
    return sorted(found, key=lambda snapshot: snapshot.taken)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(snapshots: Sequence[Snapshot]) -> str:
    """What `scripts/lab snapshot list` prints: name, kind, size of the saved VM state, date."""
    if not snapshots:
        return "no snapshots"
    rows = [("NAME", "KIND", "VM STATE", "TAKEN (UTC)")]
    for snapshot in snapshots:
        rows.append(
            (
                snapshot.name,
                "live" if snapshot.live else "disk-only",
                human_size(snapshot.vm_state_bytes) if snapshot.live else "-",
                snapshot.taken.strftime("%Y-%m-%d %H:%M:%S"),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def names(snapshots: Sequence[Snapshot]) -> str:
    return ", ".join(snapshot.name for snapshot in snapshots) or "none"


# ------------------------------------------------------------------ the job conversation


@dataclass(frozen=True)
class JobState:
    status: str  # created, running, ..., concluded (or "missing")
    error: str | None = None

    @property
    def concluded(self) -> bool:
        return self.status in ("concluded", "null")


def job_state(jobs: object, job_id: str) -> JobState:
    """Our job in a `query-jobs` reply ("missing" if QEMU has no job of that id)."""
    for job in jobs if isinstance(jobs, list) else []:
        if isinstance(job, dict) and job.get("id") == job_id:
            error = job.get("error")
            return JobState(str(job.get("status", "unknown")), str(error) if error else None)
    return JobState("missing")


def block_node(blocks: object, device: str = DISK_ID) -> tuple[str, Mapping[str, Any]]:
    """The node name of the VM's disk in a `query-block` reply, and its image info."""
    for block in blocks if isinstance(blocks, list) else []:
        if (
            isinstance(block, dict)
            and block.get("device") == device
            and isinstance(block.get("inserted"), dict)
        ):
            inserted = block["inserted"]
            return str(inserted["node-name"]), inserted.get("image") or {}
    raise SnapshotError(
        f"the VM's QEMU has no disk {device!r}",
        hint="this lab's QEMU was not started by this version of nexus; run `up` to restart it",
    )


@dataclass
class LiveSnapshots:
    """Snapshots of a running VM, through its QMP socket."""

    qmp: Qmp
    overlay: Path | None = None  # the disk's file, to read each snapshot's disk size
    timeout: float = JOB_TIMEOUT_SECONDS
    poll_seconds: float = POLL_SECONDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    job_prefix: str = "nexus"

    def list(self) -> list[Snapshot]:
        _, image = block_node(self.qmp("query-block"))
        return snapshots_of_image(image)

    def find(self, name: str) -> Snapshot:
        return self._find(check_name(name))

    def _find(self, name: str) -> Snapshot:
        existing = self.list()
        for snapshot in existing:
            if snapshot.name == name:
                return snapshot
        raise SnapshotError(
            f"no snapshot named {name!r}; the lab has: {names(existing)}",
            hint="see them with `scripts/lab snapshot list`",
        )

    def save(self, name: str, *, replace: bool = False, disk_only: bool = False) -> Snapshot:
        """Save the running lab as `name`; with `replace`, an existing one of that name goes
        first (only once the new one is sure to be taken: the name is checked beforehand)."""
        return self._save(check_name(name), replace=replace, disk_only=disk_only)

    def _save(self, name: str, *, replace: bool = False, disk_only: bool = False) -> Snapshot:
        node, image = block_node(self.qmp("query-block"))
        existing = snapshots_of_image(image)
        if any(snapshot.name == name for snapshot in existing):
            if not replace:
                raise SnapshotError(
                    f"a snapshot named {name!r} already exists (the lab has: {names(existing)})",
                    hint=f"pick another name, or overwrite it: scripts/lab snapshot save --replace {name}",
                )
            self._delete(name)
        if disk_only:
            self.qmp("blockdev-snapshot-internal-sync", device=DISK_ID, name=name)
        else:
            self._job("snapshot-save", "save", tag=name, vmstate=node, devices=[node])
        return self._find(name)

    def revert(self, name: str) -> Snapshot:
        """Put the running lab back as saved: same QEMU, the guest resumes where it was."""
        snapshot = self.find(name)
        if not snapshot.live:
            raise SnapshotError(
                f"snapshot {name!r} holds the disk only (no RAM or device state), so the running "
                "lab cannot resume from it",
                hint="revert to a live snapshot, or take one: scripts/lab snapshot save NAME",
            )
        node, image = block_node(self.qmp("query-block"))
        self._check_disk_size(snapshot, int(image.get("virtual-size", 0)))
        self._job("snapshot-load", "load", tag=name, vmstate=node, devices=[node])
        return snapshot

    def _check_disk_size(self, snapshot: Snapshot, disk_bytes: int) -> None:
        if self.overlay is None or not disk_bytes:
            return
        taken_with = snapshot_disk_sizes(self.overlay).get(snapshot.name)
        if taken_with is not None and taken_with != disk_bytes:
            raise SnapshotError(
                f"snapshot {snapshot.name!r} was taken with a {human_size(taken_with)} disk and the disk "
                f"is {human_size(disk_bytes)} now (nexus:vm.diskSize changed since): loading it would "
                "set the disk back to its old size behind the stack's back",
                hint=f"take a new snapshot at this size (scripts/lab snapshot delete {snapshot.name}, "
                f"then save it again)",
            )

    def delete(self, name: str) -> Snapshot:
        return self._delete(check_name(name))

    def _delete(self, name: str) -> Snapshot:
        snapshot = self._find(name)
        node, _ = block_node(self.qmp("query-block"))
        self._job("snapshot-delete", "delete", tag=name, devices=[node])
        return snapshot

    def _job(self, command: str, verb: str, **arguments: Any) -> None:
        job_id = f"{self.job_prefix}-{verb}-{time.time_ns()}"
        self.qmp(command, **{"job-id": job_id}, **arguments)
        deadline = self.clock() + self.timeout
        while True:
            state = job_state(self.qmp("query-jobs"), job_id)
            if state.concluded or state.status == "missing":
                break
            if self.clock() >= deadline:
                raise SnapshotError(
                    f"QEMU's {command} job {job_id} did not finish within {self.timeout:.0f} s "
                    f"(status {state.status})",
                    hint="the VM may be very busy; see `scripts/lab snapshot list` before trying again",
                )
            self.sleep(self.poll_seconds)
        if state.status != "missing":
            self.qmp("job-dismiss", id=job_id)
        if state.error:
            raise SnapshotError(
                f"QEMU's {command} of {arguments['tag']!r} failed: {state.error}", hint=_hint(state.error)
            )


def _hint(error: str) -> str:
    if "migrat" in error.lower() or "blocker" in error.lower():
        return (
            "a device of this VM cannot be saved live; take a disk-only snapshot instead: "
            "scripts/lab snapshot save --disk-only NAME"
        )
    if "size" in error.lower():
        return "the disk was grown after this snapshot was taken; QEMU cannot load it into the bigger disk"
    return "see QEMU's words above; the lab is as it was unless they say otherwise"


# ------------------------------------------------------------------ a VM that is not running


def offline_snapshots(overlay: Path, qemu_img: str = "qemu-img") -> list[Snapshot]:
    """The snapshots in a stopped VM's overlay (`-U`: a running QEMU's lock is not taken)."""
    argv = [qemu_img, "info", "-U", "--output=json", str(overlay)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as error:
        raise SnapshotError(f"{qemu_img} was not found", hint="install qemu-utils") from error
    if result.returncode != 0:
        raise SnapshotError("could not read the VM's disk", command=argv, output=result.stderr)
    return snapshots_of_image(json.loads(result.stdout))


# ------------------------------------------------------------------ the disk size a snapshot has

_QCOW2_MAGIC = b"QFI\xfb"
_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset
_ENTRY = struct.Struct(">QIHHIIQII")  # a snapshot table entry before its extra data


def snapshot_disk_sizes(overlay: Path) -> dict[str, int]:
    """Each snapshot's disk size in bytes, from the qcow2 snapshot table (QEMU reports no
    such field): loading a snapshot sets the disk back to that size, so a disk grown since
    must not be reverted silently. Snapshots whose entry has no size (qcow2 v2) are left out."""
    return {name: size for name, size in snapshot_table(overlay) if size is not None}


def snapshot_table(overlay: Path) -> list[tuple[str, int | None]]:
    """(name, disk size) of each snapshot in a qcow2 image, read without QEMU or qemu-img."""
    with overlay.open("rb") as image:
        header = image.read(_HEADER.size)
        if len(header) < _HEADER.size or header[:4] != _QCOW2_MAGIC:
            raise SnapshotError(f"{overlay} is not a qcow2 image")
        *_, count, table_offset = _HEADER.unpack(header)
        image.seek(table_offset)
        table: list[tuple[str, int | None]] = []
        for _ in range(count):
            entry = image.read(_ENTRY.size)
            _, _, id_size, name_size, _, _, _, _, extra_size = _ENTRY.unpack(entry)
            extra = image.read(extra_size)
            image.read(id_size)
            name = image.read(name_size).decode(errors="replace")
            used = _ENTRY.size + extra_size + id_size + name_size
            image.read(-used % 8)
            size = struct.unpack(">Q", extra[8:16])[0] if extra_size >= 16 else None
            table.append((name, size))
        return table


# ------------------------------------------------------------------ a stack's VM


@contextlib.contextmanager
def lab_snapshots(paths: VmPaths, recorded_pid: int | None = None) -> Iterator[LiveSnapshots]:
    """The snapshots of a stack's running VM, over one QMP connection; a clear error if it
    is not running."""
    if vm_process.running_pid(paths, recorded_pid) is None:
        raise SnapshotError(
            f"the lab's VM is not running (no QEMU for {paths.state_dir}); snapshots are taken of "
            "and reverted into a running lab",
            hint="start it with `up`, then try again",
        )
    with vm_process.qmp_session(paths) as qmp:
        yield LiveSnapshots(qmp, overlay=paths.overlay_disk)


def delete_offline(overlay: Path, name: str, qemu_img: str = "qemu-img") -> Snapshot:
    """Delete a snapshot from a stopped VM's disk."""
    check_name(name)
    existing = offline_snapshots(overlay, qemu_img)
    found = [snapshot for snapshot in existing if snapshot.name == name]
    if not found:
        raise SnapshotError(
            f"no snapshot named {name!r}; the lab has: {names(existing)}",
            hint="see them with `scripts/lab snapshot list`",
        )
    argv = [qemu_img, "snapshot", "-d", name, str(overlay)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise SnapshotError("could not delete the snapshot", command=argv, output=result.stderr)
    return found[0]


# ------------------------------------------------------------------ the guest's clock after a revert


def resync_clock_command(now: float) -> list[str]:
    """The command that sets the guest's clock to the host's `now`, run in the VM over SSH.

    A reverted guest resumes with the clock it had when the snapshot was taken (its
    timekeeping is part of the saved state), so it runs behind by the time since then;
    the container shares the VM's kernel clock and is set with it."""
    return ["sudo", "-n", "date", "-u", "-s", f"@{now:.3f}"]


def resync_clock(target: SshTarget, *, timeout: float = 60.0) -> str | None:
    """Set the guest's clock from the host's; None when done, else why it could not.

    Over the connection the guest layers share: the login it makes is the one their
    next steps use (one SSH handshake, seconds under TCG, instead of two)."""
    result = SshRunner(target, connect_timeout=30).run(resync_clock_command(time.time()), timeout=timeout)
    if result.returncode == TIMED_OUT:
        return f"ssh did not finish within {timeout:.0f} s"
    if not result.ok:
        return result.output or f"ssh exited with status {result.returncode}"
    return None


# ------------------------------------------------------------------ suspend and resume


def suspend(paths: VmPaths, *, log: Callable[[str], None] = lambda _: None) -> Snapshot:
    """Save the running VM into its disk (SUSPEND_TAG) and end its QEMU, freeing its memory
    and CPU; `resume_argv` starts it again from there."""
    pid = vm_process.running_pid(paths)
    with vm_process.qmp_session(paths) as qmp:
        saved = LiveSnapshots(qmp, overlay=paths.overlay_disk)._save(SUSPEND_TAG, replace=True)
        log(f"saved the running lab into its disk ({human_size(saved.vm_state_bytes)} of VM state)")
        # The guest's state is saved: no ACPI power-off (the guest would shut down), just quit,
        # on the same connection (a new one right after the job could meet its events first).
        with contextlib.suppress(VmError):  # it may end before it answers
            qmp("quit")
    if pid is not None:
        gone_within(vm_process.LocalQemu(paths), pid, 30)
    vm_process.stop(paths, log=log)  # whatever is left (nothing, usually) and the runtime files
    return saved


def holds_suspended_state(paths: VmPaths) -> bool:
    try:
        return any(name == SUSPEND_TAG for name, _ in snapshot_table(paths.overlay_disk))
    except (OSError, SnapshotError, struct.error):
        return False


def qcow2_virtual_size(overlay: Path) -> int:
    with overlay.open("rb") as image:
        header = image.read(_HEADER.size)
    if len(header) < _HEADER.size or header[:4] != _QCOW2_MAGIC:
        raise SnapshotError(f"{overlay} is not a qcow2 image")
    return int(_HEADER.unpack(header)[5])


def resume_argv(paths: VmPaths, argv: Sequence[str]) -> tuple[list[str] | None, str]:
    """The command line that resumes a suspended VM (`-loadvm`), or None and why not: its disk
    holds no suspended state, or the disk was grown while suspended (loading the state would
    set it back to its old size)."""
    if not holds_suspended_state(paths):
        return None, "no suspended state in the disk"
    saved_with = snapshot_disk_sizes(paths.overlay_disk).get(SUSPEND_TAG)
    size = qcow2_virtual_size(paths.overlay_disk)
    if saved_with is not None and saved_with != size:
        return None, (
            f"the disk was grown while suspended ({human_size(saved_with)} -> {human_size(size)}), "
            "which the saved state cannot follow"
        )
    return [*argv, "-loadvm", SUSPEND_TAG], ""


def drop_suspended_state(paths: VmPaths, *, running: bool, qemu_img: str = "qemu-img") -> None:
    """Delete the suspended state once the VM runs on (it is stale from then on)."""
    if running:
        with vm_process.qmp_session(paths) as qmp:
            live = LiveSnapshots(qmp, overlay=paths.overlay_disk)
            if any(snapshot.name == SUSPEND_TAG for snapshot in live.list()):
                live._delete(SUSPEND_TAG)
        return
    if holds_suspended_state(paths):
        argv = [qemu_img, "snapshot", "-d", SUSPEND_TAG, str(paths.overlay_disk)]
        subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

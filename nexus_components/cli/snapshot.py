"""`scripts/lab snapshot save|list|revert|delete NAME`: named snapshots of the running lab.

The work is in `host.snapshots`; this reads the stack's outputs, says what happened and
how long it took, and sets the guest's clock after a revert.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from nexus_components.cli.stack import LabOutputs
from nexus_components.core.runner import close_shared_connection
from nexus_components.host import snapshots, vm_process
from nexus_components.host.paths import VmPaths


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "snapshot",
        help="save, list, revert to and delete named snapshots of the running lab",
        description="Named snapshots of the running lab (VM, container and inner VM at once), "
        "kept inside the VM's disk; a revert resumes the lab as saved, without a reboot.",
    )
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    save = actions.add_parser("save", help="save the running lab as NAME")
    save.add_argument("name", metavar="NAME")
    save.add_argument("--replace", action="store_true", help="overwrite a snapshot of that name")
    save.add_argument(
        "--disk-only",
        action="store_true",
        help="the disk only (no RAM or device state): where QEMU cannot save the VM live",
    )
    actions.add_parser("list", help="the lab's snapshots: name, kind, size of the VM state, date")
    revert = actions.add_parser("revert", help="put the running lab back as saved in NAME")
    revert.add_argument("name", metavar="NAME")
    revert.add_argument(
        "--keep-clock", action="store_true", help="leave the guest's clock as saved (it runs behind)"
    )
    delete = actions.add_parser("delete", help="delete the snapshot NAME")
    delete.add_argument("name", metavar="NAME")
    command.set_defaults(run=run)


def run(args: argparse.Namespace, lab: LabOutputs) -> int:
    # QEMU's QMP socket is in the stack's directory, on the machine that runs it.
    lab.require_local("scripts/lab snapshot")
    paths = VmPaths(lab.state_dir)
    recorded = lab.values.get("vmPid")
    recorded_pid = int(recorded) if recorded else None
    running = vm_process.running_pid(paths, recorded_pid) is not None
    started = time.monotonic()
    if args.action == "list":
        if running:
            with snapshots.lab_snapshots(paths, recorded_pid) as live:
                listed = live.list()
        else:
            listed = snapshots.offline_snapshots(paths.overlay_disk)
            print("(the VM is not running)")
        print(snapshots.table(listed))
        return 0
    if args.action == "delete" and not running:
        snapshots.check_name(args.name)
        snapshots.delete_offline(paths.overlay_disk, args.name)
        print(f"deleted snapshot {args.name!r} ({_took(started)})")
        return 0
    if args.action == "save":
        with snapshots.lab_snapshots(paths, recorded_pid) as live:
            saved = live.save(args.name, replace=args.replace, disk_only=args.disk_only)
        what = f"{snapshots.human_size(saved.vm_state_bytes)} of VM state" if saved.live else "disk only"
        print(f"saved snapshot {saved.name!r} ({what}) in {_took(started)}")
    elif args.action == "revert":
        with snapshots.lab_snapshots(paths, recorded_pid) as live:
            live.revert(args.name)
        print(f"reverted the lab to snapshot {args.name!r} in {_took(started)}; same QEMU, no reboot")
        # The guest forgot every TCP connection made since the save: a shared SSH connection
        # of the guest layers' (or pulumi-docker's) would hang on until its keepalives give up.
        close_shared_connection(lab.vm_target())
        if not args.keep_clock:
            _resync_clock(lab)
    else:
        with snapshots.lab_snapshots(paths, recorded_pid) as live:
            live.delete(args.name)
        print(f"deleted snapshot {args.name!r} ({_took(started)})")
    return 0


def _took(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


def _resync_clock(lab: LabOutputs) -> None:
    problem = snapshots.resync_clock(lab.vm_target())
    if problem is None:
        print("set the guest's clock to the host's (it resumed with the clock it had when saved)")
    else:
        print(
            f"warning: could not set the guest's clock (it runs behind by the time since the save): {problem}"
        )

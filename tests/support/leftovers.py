"""Stop what an interrupted test run left running: its QEMUs, plugins, language hosts, sshds.

`scripts/test` exports NEXUS_TEST_RUN=<id> before pytest starts, so every process the run
starts inherits it (Pulumi, its plugins, the QEMUs the provider launches). A process the
tests start through an sshd of their own gets a fresh environment instead, so a process
whose command line names the run's folder (its --basetemp) counts too. `scripts/test` runs
this when pytest ends, whichever way it ended; after a clean run nothing is left and this
prints nothing.

    python -m tests.support.leftovers RUN_ID [FOLDER ...]
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tests.support.processes import processes_where, running

RUN_ENV = "NEXUS_TEST_RUN"
GRACE_SECONDS = 10.0


def left_by(run_id: str, folders: list[str]) -> list[int]:
    """Every process of this run: it carries the run's mark or names one of its folders."""
    mark = f"{RUN_ENV}={run_id}".encode()
    names = [folder.encode() for folder in folders if folder]
    own = {os.getpid(), os.getppid()}

    def belongs(proc: Path) -> bool:
        if int(proc.name) in own:
            return False
        cmdline = (proc / "cmdline").read_bytes()
        if any(name in cmdline for name in names):
            return True
        return mark in (proc / "environ").read_bytes().split(b"\0")

    return processes_where(belongs)


def stop(pids: list[int]) -> None:
    """SIGTERM, up to GRACE_SECONDS, then SIGKILL for those still running."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + GRACE_SECONDS
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


def describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {Path(argv[0].decode(errors='replace')).name}"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    run_id, folders = argv[0], argv[1:]
    pids = left_by(run_id, folders)
    if pids:
        names = ", ".join(describe(pid) for pid in pids)
        print(f"==> stopping {len(pids)} process(es) the tests left running: {names}", file=sys.stderr)
        stop(pids)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

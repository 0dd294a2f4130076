"""The tests' own look at a process in /proc (Linux), independent of the product's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (R, S, T, Z, ...), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return None


def running(pid: int) -> bool:
    """An exited process still waiting to be reaped (a zombie) does not count, unless
    threads of it still run (they hold its files and ports)."""
    state = process_state(pid)
    if state is None:
        return False
    try:
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    except FileNotFoundError:
        return False
    return state != "Z" or threads > 1


def processes_where(matches: Callable[[Path], bool]) -> list[int]:
    """The pids whose /proc/PID directory `matches` (a process that exits meanwhile is skipped)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if matches(proc):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def pulumi_programs_in(project_dir: Path) -> list[int]:
    """The Python processes running a Pulumi program from `project_dir` (the language host's child)."""
    return processes_where(
        lambda proc: (
            b"pulumi-language-python-exec" in (proc / "cmdline").read_bytes()
            and (proc / "cwd").resolve() == project_dir.resolve()
        )
    )

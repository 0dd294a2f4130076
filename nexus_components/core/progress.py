"""Progress lines of long steps, `[step] message`: on stderr, or where the caller sends them.

The nexus plugin sends them to the engine against the resource whose call is running
(`progress_to`), since Pulumi shows a provider plugin's stderr only in its debug log.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_progress: ContextVar[Callable[[str], None] | None] = ContextVar("progress", default=None)


@contextlib.contextmanager
def progress_to(report: Callable[[str], None]) -> Iterator[None]:
    """Progress said inside this block (in this context: a worker thread's copy too) goes to `report`."""
    token = _progress.set(report)
    try:
        yield
    finally:
        _progress.reset(token)


def say(name: str, message: str) -> None:
    relay(f"[{name}] {message}")


def relay(line: str) -> None:
    """A line already said elsewhere (a step run on a remote host), passed on as it is."""
    report = _progress.get()
    if report is None:
        print(line, file=sys.stderr, flush=True)
    else:
        report(line)

"""How the Pulumi program process ends when a run fails: quietly, after one clear message.

Pulumi's Python language host sends the program SIGINT when the engine ends the run,
after a resource failed or the user pressed Ctrl-C, and kills it 5 s later whatever it
does. By then the engine has said why the run stopped. Python's default answer, a
KeyboardInterrupt raised wherever the SDK happens to be, prints a traceback from deep
inside the SDK that reads like a crash of the program. Raising SystemExit instead is no
better: when the signal lands while asyncio is shutting down (formatting a failed
callback, closing the loop), Python reports the exception as "Exception ignored in ..."
with a traceback. Whether either shows depends on timing alone.

The resources' work runs in the provider processes, which this signal does not reach, so
the program has nothing to finish: it flushes what it printed and ends the process
without unwinding, so no Python code runs after the signal.

Python runs a signal's handler in the main thread. The kernel may hand the signal to any
thread, though, and one taken by a worker thread (the SDK's calls to the engine run in
them) does not wake a main thread asleep in the event loop's wait: the program then sat
until the language host killed it. So a thread of ours also listens on Python's wakeup
fd, which hears of every handled signal whichever thread takes it.

Both ways out use the language host's "the program already showed the user an actionable
message" status, so Pulumi does not add "program exited with non-zero exit code: 1" under
a message that already says what to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

import pulumi

# pulumi-language-python's pythonProcessExitedAfterShowingUserActionableMessage.
EXIT_STATUS = 32


def leave_quietly_on_interrupt() -> None:
    signal.signal(signal.SIGINT, _leave)
    if sys.platform == "win32":  # a wakeup fd must be a socket there; no worker takes SIGINT
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_listen, args=(read_end,), name="nexus-sigint", daemon=True).start()


def _listen(read_end: int) -> None:
    while received := os.read(read_end, 64):
        if signal.SIGINT in received:
            _leave(signal.SIGINT, None)


def _leave(signum: int, frame: FrameType | None) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing more can be said there.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(EXIT_STATUS)


def fail_before_changes(message: str) -> NoReturn:
    """End the program with `message` as Pulumi's error, before it registered anything."""
    pulumi.log.error(message)
    raise SystemExit(EXIT_STATUS)

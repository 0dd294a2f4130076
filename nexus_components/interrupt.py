"""How the Pulumi program process answers SIGINT: it leaves quietly.

Pulumi's Python language host sends the program SIGINT when the engine ends the run,
after a resource failed or the user cancelled. By then the engine has said why the run
stopped. Python's default answer, a KeyboardInterrupt raised wherever the SDK happens to
be, prints a traceback from deep inside the SDK that reads like a crash of the program.
Whether it shows depends on timing alone: a program that already finished its shutdown
never sees the signal, one that is still unwinding the failed registrations does.

The resources' work runs in the provider processes, which the signal does not reach, so
the program has nothing to finish: it exits at once with the status Python's own error
path uses.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import NoReturn

EXIT_STATUS = 1


def leave_quietly_on_interrupt() -> None:
    signal.signal(signal.SIGINT, _leave)


def _leave(signum: int, frame: FrameType | None) -> NoReturn:
    # SystemExit unwinds through the SDK's `finally` blocks, and Python prints nothing for it.
    raise SystemExit(EXIT_STATUS)

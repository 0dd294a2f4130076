"""Progress lines of long steps, as `[step] message` on stderr: Pulumi shows them live."""

from __future__ import annotations

import sys


def say(name: str, message: str) -> None:
    print(f"[{name}] {message}", file=sys.stderr, flush=True)

"""Local file steps every layer takes the same way."""

from __future__ import annotations

import contextlib
from pathlib import Path


def remove_quietly(path: Path) -> None:
    """Delete a file; one that is already gone is what we wanted anyway."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

"""What `scripts/fleet` says about each lab: its outcome, its changes, the summary table.

Pure: no Pulumi import; the driver (nexus_components/cli/fleet.py) hands in plain values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A lab's result, by what became of it. The first three are success, one per operation.
READY = "ready"
PREVIEWED = "previewed"
DESTROYED = "destroyed"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_STARTED = "not started"
SUCCESS = (READY, PREVIEWED, DESTROYED)

# Pulumi's step kinds as a summary counts them, in the order they are told.
_DONE = {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted"}
_PLANNED = {"create": "to create", "update": "to update", "replace": "to replace", "delete": "to delete"}
# Steps that change nothing the user would count.
_QUIET = ("same", "read", "refresh")

ERROR_WIDTH = 160


@dataclass(frozen=True)
class Outcome:
    lab: str
    stack: str
    result: str
    # What Pulumi changed (or would, for a preview): "9 created", "no changes".
    changes: str = ""
    # From the lab's start to its end: for `up`, how long until it was ready.
    seconds: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result in SUCCESS


def describe_changes(counts: Mapping[str, int], *, planned: bool = False) -> str:
    """Pulumi's per-step counts in words: `{"create": 9}` is "9 created" ("9 to create" for a
    preview); nothing but unchanged resources is "no changes"."""
    words = _PLANNED if planned else _DONE
    ordered = [kind for kind in words if counts.get(kind)]
    ordered += sorted(kind for kind in counts if kind not in words and kind not in _QUIET and counts[kind])
    if not ordered:
        return "no changes"
    return ", ".join(f"{counts[kind]} {words.get(kind, kind)}" for kind in ordered)


def one_line(error: str, width: int = ERROR_WIDTH) -> str:
    """An error's lines run together (so the key a later line names shows), cut at `width`."""
    text = " ".join(line.strip() for line in error.splitlines() if line.strip())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def render_table(outcomes: Sequence[Outcome]) -> str:
    """One row per lab: LAB, STACK, RESULT, CHANGES, SECONDS, ERROR (the error on one line)."""
    header = ("LAB", "STACK", "RESULT", "CHANGES", "SECONDS", "ERROR")
    rows = [header] + [
        (
            outcome.lab,
            outcome.stack,
            outcome.result,
            outcome.changes or "-",
            "-" if outcome.seconds is None else f"{outcome.seconds:.0f}",
            one_line(outcome.error) if outcome.error else "",
        )
        for outcome in outcomes
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def tally(outcomes: Sequence[Outcome]) -> str:
    """ "2 ready, 1 failed": how many labs ended each way, in the order they first appear."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    return ", ".join(f"{count} {result}" for result, count in counts.items())


def exit_status(outcomes: Sequence[Outcome], *, interrupted: bool) -> int:
    """0 when every lab succeeded; 130 after Ctrl-C (as a shell reports SIGINT); else 1."""
    if interrupted:
        return 130
    return 0 if all(outcome.ok for outcome in outcomes) else 1

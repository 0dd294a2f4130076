"""A stand-in for the VM in unit tests of the guest lifecycles: a `CommandRunner` that
answers each command from a function of its argument list and records every call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nexus_components.core.runner import SSH_UNREACHABLE, CommandResult

# What a command answers: (exit status, stdout) or (exit status, stdout, stderr).
Answer = tuple[int, str] | tuple[int, str, str]


@dataclass
class ScriptedRunner:
    answer: Callable[[tuple[str, ...]], Answer]
    where: str = "the VM"
    calls: list[tuple[str, ...]] = field(default_factory=list)
    streamed: list[Path] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        input_file: Path | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        words = tuple(argv)
        self.calls.append(words)
        if input_file is not None:
            self.streamed.append(input_file)
        returncode, stdout, *stderr = self.answer(words)
        return CommandResult(words, returncode, stdout, stderr[0] if stderr else "", 0.0)

    def reachable(self) -> bool:
        return True

    def ran(self, *prefix: str) -> list[tuple[str, ...]]:
        """The calls whose argument list starts with `prefix`."""
        return [call for call in self.calls if call[: len(prefix)] == prefix]


def hung_vm(_argv: tuple[str, ...]) -> Answer:
    """A VM that does not answer: OpenSSH gives up with its own exit status."""
    return SSH_UNREACHABLE, "", "Timeout, server not responding."

"""The package's one error root.

Every error says what failed, the command (when one ran), and the next step, so a
user reading `pulumi up` output knows what to do without reading our code.
"""

from __future__ import annotations

from collections.abc import Sequence


class NexusError(Exception):
    """Root of every error this package raises on purpose."""

    def __init__(self, what: str, *, hint: str = "", command: Sequence[str] = (), output: str = "") -> None:
        self.what = what
        self.hint = hint
        self.command = list(command)
        self.output = output
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.what]
        if self.command:
            parts.append("command: " + " ".join(_shell_quote(arg) for arg in self.command))
        if self.output:
            parts.append("output:\n" + self.output.rstrip())
        if self.hint:
            parts.append("next step: " + self.hint)
        return "\n".join(parts)


class ConfigError(NexusError):
    """Stack configuration is invalid; raised before any resource is touched."""


class HostToolError(NexusError):
    """A host program (qemu-system-*, qemu-img, ssh-keygen) is missing or failed."""


class DownloadError(NexusError):
    """The base image could not be fetched or failed verification."""


class SourceUnreachable(DownloadError):
    """This machine cannot reach the image's source: no route or name for its host, or no such
    file here. Another machine may (a lab's server has its image sent from the user's)."""


class VmError(NexusError):
    """The QEMU VM failed to launch, become reachable, or stop."""


def _shell_quote(arg: str) -> str:
    # Only for display: commands are always run from argument lists, never a shell.
    import shlex

    return shlex.quote(arg)

"""One way to run a command, here or in the VM: every guest step goes through it.

`LocalRunner` runs an argument list on this machine; `SshRunner` runs the same list in
the VM through the host's OpenSSH client with the stack's key. Both capture output,
bound the time, and raise one error that names the layer, the command, its exit
status and the last lines of its output. Remote commands are quoted word by word
(`SshTarget.argv` joins them with `shlex.join`), so a value is always data, never shell.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nexus_components.core.errors import NexusError
from nexus_components.core.ssh import CONNECT_TIMEOUT_SECONDS, SshTarget

# OpenSSH's exit status when it could not connect or authenticate.
SSH_UNREACHABLE = 255
# A command that ran out of time: what timeout(1) reports, so callers see one convention.
TIMED_OUT = 124
OUTPUT_TAIL_LINES = 25


class GuestError(NexusError):
    """A step of a guest layer (Docker engine, playground container, inner VM) failed."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def output_tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join(kept)


class CommandRunner(Protocol):
    """Runs argument lists; `where` names the machine in messages ("host", "the VM")."""

    @property
    def where(self) -> str: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        input_file: Path | None = None,
        timeout: float = 120.0,
    ) -> CommandResult: ...

    def reachable(self) -> bool: ...


def _execute(
    full_argv: Sequence[str],
    shown_argv: Sequence[str],
    input_bytes: bytes | None,
    timeout: float,
    input_file: Path | None = None,
) -> CommandResult:
    """`input_file` is streamed to the command's stdin (a big tarball is never read into memory)."""
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as files:
            stdin = files.enter_context(input_file.open("rb")) if input_file is not None else None
            completed = subprocess.run(
                list(full_argv),
                input=None if stdin is not None else (input_bytes or b""),
                stdin=stdin,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired as error:
        partial = (error.stdout or b"") + (error.stderr or b"")
        return CommandResult(
            tuple(shown_argv),
            TIMED_OUT,
            partial.decode(errors="replace"),
            f"\n(timed out after {timeout:.0f} s)",
            time.monotonic() - started,
        )
    except FileNotFoundError as error:
        return CommandResult(tuple(shown_argv), 127, "", f"{error}", time.monotonic() - started)
    return CommandResult(
        tuple(shown_argv),
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
        time.monotonic() - started,
    )


@dataclass(frozen=True)
class LocalRunner:
    where: str = "this machine"

    def run(
        self,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        input_file: Path | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        return _execute(argv, argv, input_bytes, timeout, input_file)

    def reachable(self) -> bool:
        return True


# An SSH handshake with a guest under TCG costs seconds (12 s measured under load); the
# guest layers make many short calls, so they share one connection per VM (OpenSSH's
# ControlMaster), which lingers this long after the last call. Windows' OpenSSH has no
# connection sharing.
CONTROL_PERSIST_SECONDS = 30


def control_path(target: SshTarget) -> Path | None:
    """A short socket path per VM and key (sun_path holds 104 bytes on macOS)."""
    if sys.platform == "win32":
        return None
    # A VM on a remote host (its proxy) is another VM than a local one on the same port.
    key = f"{target.user}@{target.host}:{target.port}:{target.private_key}:{target.proxy_command}".encode()
    return Path(tempfile.gettempdir()) / f"nexus-ssh-{hashlib.sha256(key).hexdigest()[:16]}"


def sharing_options(target: SshTarget) -> list[str]:
    """ssh options that share one connection to the VM (also given to pulumi-docker)."""
    path = control_path(target)
    if path is None:
        return []
    return [
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={path}",
        "-o",
        f"ControlPersist={CONTROL_PERSIST_SECONDS}",
    ]


def close_shared_connection(target: SshTarget) -> None:
    """Ends the shared connection at once (destroy leaves no ssh process behind)."""
    path = control_path(target)
    if path is None or not path.exists():
        return
    argv = ["ssh", "-o", f"ControlPath={path}", "-O", "exit", f"{target.user}@{target.host}"]
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(argv, capture_output=True, timeout=30, check=False)


@dataclass(frozen=True)
class SshRunner:
    """Runs commands in the VM as the stack's login user, over one shared connection."""

    target: SshTarget
    where: str = "the VM"
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS

    def ssh_argv(self, argv: Sequence[str]) -> list[str]:
        full = self.target.argv(argv, connect_timeout=self.connect_timeout)
        return [full[0], *sharing_options(self.target), *full[1:]]

    def run(
        self,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        input_file: Path | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        return _execute(self.ssh_argv(argv), argv, input_bytes, timeout, input_file)

    def reachable(self) -> bool:
        return not unreachable(self.run(["true"], timeout=self.connect_timeout + 10))


def unreachable(result: CommandResult) -> bool:
    """SSH could not connect, or the VM stopped answering within the command's bound."""
    return result.returncode in (SSH_UNREACHABLE, TIMED_OUT)


def check(result: CommandResult, *, layer: str, what: str, hint: str, where: str = "the VM") -> CommandResult:
    """Raise a GuestError naming the layer, the command and its output tail unless it succeeded."""
    if result.ok:
        return result
    if result.returncode == SSH_UNREACHABLE:
        status = "SSH could not reach the VM"
        hint = "is the VM running? `pulumi preview` shows it; `pulumi up` starts it again"
    else:
        status = f"exit status {result.returncode}"
    raise GuestError(
        f"{layer}: could not {what} in {where} ({status})",
        command=result.argv,
        output="last lines of its output:\n" + (output_tail(result.output) or "(none)"),
        hint=hint,
    )


def wait_for(
    probe: Callable[[], str | None],
    *,
    timeout: float,
    poll_seconds: float = 3.0,
    log: Callable[[str], None] = lambda _: None,
    waiting_for: str,
) -> tuple[float, str | None]:
    """Call `probe` until it returns None (ready) or the time is up.

    `probe` returns what is still missing; the last answer comes back with the elapsed
    seconds, so the caller's timeout error can say what was missing.
    """
    started = time.monotonic()
    last_report = 0.0
    missing: str | None = "not checked yet"
    while True:
        missing = probe()
        elapsed = time.monotonic() - started
        if missing is None or elapsed >= timeout:
            return elapsed, missing
        if elapsed - last_report >= 30 or last_report == 0.0:
            log(f"waiting for {waiting_for}: {missing} ({elapsed:.0f} s so far)")
            last_report = elapsed or 0.001
        time.sleep(min(poll_seconds, max(0.0, timeout - elapsed)))

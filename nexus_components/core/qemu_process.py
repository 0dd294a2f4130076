"""One QEMU process, wherever it runs: its runtime files, its QMP messages, its shutdown.

Both QEMUs of the lab go through here: the VM on this machine (`vm_process.LocalQemu`)
and the inner VM in the playground container (`guest.inner_vm_machine.ContainerQemu`,
reached through the command runner). Each implements `QemuControl`, the little the
shutdown ladder needs; the ladder itself (`shut_down`) is written once, after QEMU's own
`QEMUMachine.shutdown` (python/qemu/machine/machine.py): soft first (ACPI powerdown
over QMP), a bounded wait, then QMP `quit`, SIGTERM and SIGKILL, with the runtime files
removed in `finally`.
No Pulumi import; unit-tested against a fake control and against a real QEMU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import PurePath
from typing import Any, Protocol, TypeVar

Log = Callable[[str], None]

# ------------------------------------------------------------------ runtime files

# What QEMU's -pidfile and -qmp name in a VM's directory; both exist only while it runs.
PID_FILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"

P = TypeVar("P", bound=PurePath)


def runtime_files(directory: P) -> tuple[P, P]:
    """The QMP socket and the pid file of the QEMU whose files are in `directory`."""
    return directory / QMP_SOCKET, directory / PID_FILE


# ------------------------------------------------------------------ QMP messages


def qmp_conversation(command: str, **arguments: Any) -> bytes:
    """What a QMP client sends on a fresh connection: capabilities, then one command."""
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    return (json.dumps({"execute": "qmp_capabilities"}) + "\n" + json.dumps(request) + "\n").encode()


def qmp_reply(output: str) -> dict[str, Any] | None:
    """The reply to the command of a `qmp_conversation`: greeting, events and the reply to
    qmp_capabilities skipped; None if QEMU did not answer it."""
    replies = []
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict) and ("return" in message or "error" in message):
            replies.append(message)
    return replies[1] if len(replies) >= 2 else None


def qmp_status(output: str) -> str:
    """`query-status` reply -> "running", "paused", ...; "unknown" if QEMU did not answer."""
    reply = qmp_reply(output)
    if reply and isinstance(reply.get("return"), dict):
        return str(reply["return"].get("status", "unknown"))
    return "unknown"


# ------------------------------------------------------------------ the shutdown ladder

# How long each hard step (QMP quit, SIGTERM, SIGKILL) is given to end the process.
GRACE_SECONDS = 10.0


class QemuControl(Protocol):
    """What the shutdown ladder needs of one VM's QEMU, wherever it runs."""

    @property
    def subject(self) -> str:
        """How log lines name the guest ("VM"), or "" where the log's prefix already does."""

    @property
    def poll_seconds(self) -> float:
        """How often the ladder looks whether the process is gone."""

    def pids(self) -> list[int]:
        """Every live QEMU of this VM (usually one; none when it is not running)."""

    def where(self, pid: int) -> str:
        """The process, for messages: "pid 12", "pid 12 in nexus-playground"."""

    def monitored(self, pid: int) -> bool:
        """The VM's QMP socket reaches this process."""

    def qmp(self, command: str) -> bool:
        """Send one QMP command, bounded in time; False if QEMU refused it or surely did
        not get it (no socket, or silent within the bound), which skips the waits."""

    def alive(self, pid: int) -> bool: ...

    def terminate(self, pid: int) -> None:
        """SIGTERM: QEMU flushes its disks and exits."""

    def kill(self, pid: int) -> None:
        """SIGKILL, or what ends a process at once where there is none (Windows)."""

    def remove_runtime_files(self) -> None: ...

    def survived(self, pid: int) -> Exception:
        """The error for a process that outlived SIGKILL, with how to end it by hand."""


def shut_down(
    control: QemuControl,
    *,
    powerdown_timeout: float,
    log: Log = lambda _: None,
    grace_seconds: float = GRACE_SECONDS,
) -> None:
    """Stop every QEMU of the VM: ACPI powerdown, bounded wait, QMP quit, SIGTERM, then
    SIGKILL. The runtime files go in any case; a QEMU that survives is an error."""
    try:
        for pid in control.pids():
            _shut_down_one(control, pid, powerdown_timeout, log, grace_seconds)
    finally:
        control.remove_runtime_files()


def _shut_down_one(control: QemuControl, pid: int, powerdown_timeout: float, log: Log, grace: float) -> None:
    where = control.where(pid)
    if not control.monitored(pid):
        log(f"stopping QEMU ({where}), whose control socket is gone")
    elif not control.qmp("system_powerdown"):
        # Stopped or wedged: a second QMP command would only wait out its bound again.
        log(f"QEMU ({where}) does not answer on its control socket (QMP); stopping it")
    elif gone_within(control, pid, powerdown_timeout):
        log(_sentence(control.subject, f"powered off ({where})"))
        return
    else:
        log(_sentence(control.subject, f"did not power off within {powerdown_timeout:.0f} s; stopping QEMU"))
        if control.qmp("quit") and gone_within(control, pid, grace):
            return
    control.terminate(pid)
    if gone_within(control, pid, grace):
        return
    control.kill(pid)
    if not gone_within(control, pid, grace):
        raise control.survived(pid)


def gone_within(control: QemuControl, pid: int, seconds: float) -> bool:
    """Whether the process is gone now or ends within `seconds`."""
    deadline = time.monotonic() + seconds
    while control.alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(control.poll_seconds)
    return True


def _sentence(subject: str, rest: str) -> str:
    return f"{subject} {rest}" if subject else rest

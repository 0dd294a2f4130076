"""Whether the VM's guest answers: its SSH banner, read once and, when asked early, ahead of need.

A guest that runs sends SSH's banner at once; one that hangs (its kernel stuck while QEMU's
user network still accepts the connection) never does. Under TCG the banner takes a fifth of
a second (sshd forks in the emulated guest), which a preview's drift check would wait for:
so the read can start early (`read_early`, as the plugin starts and as the Lab begins), and
the drift check takes that result (`take`) while it is fresh. Standard library only: the
plugin starts a read before it imports anything else.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

TIMEOUT_SECONDS = 20.0
# A read started earlier than this is not taken: the guest may have changed since.
FRESH_SECONDS = 10.0

GREETS, SILENT, CLOSED = "greets", "silent", "closed"


def read(host: str, port: int, timeout: float = TIMEOUT_SECONDS) -> str:
    """GREETS, SILENT (connected, nothing came in time) or CLOSED (refused, or closed)."""
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return CLOSED
    # Closed with a reset: neither side keeps the connection in TIME_WAIT, not even when QEMU
    # exits while the read waits (a destroy or restart right after the plugin starts one),
    # which would otherwise hold the VM's SSH port for a minute after the VM is gone.
    linger = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)  # on, after 0 s
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    with connection:
        try:
            return GREETS if connection.recv(4) else CLOSED
        except TimeoutError:
            return SILENT
        except OSError:
            return CLOSED


class _EarlyRead:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.answer = CLOSED

        def run() -> None:
            try:
                self.answer = read(host, port, timeout)
            finally:
                self.done.set()

        threading.Thread(target=run, name="nexus-ssh-banner", daemon=True).start()

    def fresh(self) -> bool:
        return time.monotonic() - self.started <= FRESH_SECONDS


_early: dict[tuple[str, int], _EarlyRead] = {}
_lock = threading.Lock()


def read_early(host: str, port: int, timeout: float = TIMEOUT_SECONDS) -> None:
    """Start reading the banner at host:port, unless a fresh read of it is under way or done."""
    with _lock:
        current = _early.get((host, port))
        if current is None or not current.fresh():
            _early[(host, port)] = _EarlyRead(host, port, timeout)


def take(host: str, port: int) -> str | None:
    """The answer of an early read of host:port (waiting for it), once; None without a fresh one."""
    with _lock:
        early = _early.pop((host, port), None)
    if early is None or not early.fresh():
        return None
    early.done.wait()
    return early.answer

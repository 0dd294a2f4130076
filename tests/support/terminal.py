"""A command in a pseudo-terminal, as a user's shell runs it: it prompts, and keys can be typed."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
import threading
from pathlib import Path


class Terminal:
    """Runs `argv` with a terminal as its stdin, stdout and stderr; its output is read as it comes."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, follower = pty.openpty()
        # A real terminal's size: with 0 x 0, programs that draw (Pulumi's display) complain.
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower, start_new_session=True
        )
        os.close(follower)
        self._master = master
        self._output = bytearray()
        self._closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Drains the terminal, so the program never blocks on a full one."""
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: every process holding the terminal is gone
                chunk = b""
            with self._changed:
                if not chunk:
                    self._closed = True
                else:
                    self._output += chunk
                self._changed.notify_all()
            if not chunk:
                return

    def output(self) -> str:
        with self._changed:
            return self._output.decode(errors="replace")

    def wait_for(self, text: str, seconds: float) -> None:
        """Until `text` shows; `seconds` only bounds a hang, and the error shows what did."""
        with self._changed:
            self._changed.wait_for(
                lambda: text in self._output.decode(errors="replace") or self._closed, seconds
            )
        if text not in self.output():
            raise AssertionError(f"{text!r} never showed; the terminal shows:\n{self.output()}")

    def type(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    def finish(self, seconds: float) -> int:
        """The exit status, once the program and its output are done."""
        status = self.process.wait(timeout=seconds)
        self._reader.join(timeout=seconds)
        return status

    def close(self) -> None:
        """Ends what still runs (a test that failed half way) and the terminal."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=10)
        os.close(self._master)

"""A throwaway OpenSSH server on loopback, for tests of what the lab does over SSH.

It runs as the current user with its own host key, config and authorized key, on a free
port, and accepts only that key: a stand-in for the VM's sshd when a test is about the
SSH path itself, not the guest.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    user: str
    private_key: Path


def find_sshd() -> str:
    found = shutil.which("sshd") or next((path for path in SSHD_CANDIDATES if Path(path).exists()), None)
    if found is None:
        raise RuntimeError("sshd is missing: scripts/setup --dev installs openssh-server")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout: float = 10, *, address: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {address}:{port} within {timeout:.0f} s")


@contextmanager
def running_sshd(workdir: Path, extra_config: Sequence[str] = ()) -> Iterator[Sshd]:
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = workdir / "authorized_keys"
    shutil.copyfile(client_key.with_suffix(".pub"), authorized)
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            (
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {workdir / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
                *extra_config,
                "",
            )
        )
    )
    if os.geteuid() == 0:
        # As root, sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    process = subprocess.Popen(
        [find_sshd(), "-D", "-e", "-f", str(config)], stderr=(workdir / "sshd.log").open("wb")
    )
    try:
        _wait_for_port(port, process)
        yield Sshd(host="127.0.0.1", port=port, user=getpass.getuser(), private_key=client_key)
    finally:
        process.terminate()
        process.wait(timeout=10)

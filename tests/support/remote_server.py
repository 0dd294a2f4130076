"""A "remote" server on this machine for the tests of `nexus:host`: a user of its own, with
its own home, reached only through an sshd of its own on a loopback address of its own.

It stands in for a hypervisor host: the lab's files, processes and ports must end up there
(owned by that user, under that home), and the test's own user must not get any of them.
Needs root (useradd, and sshd switches to the user); the user and its home are removed after.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.sshd import _free_port, _wait_for_port, find_sshd

SERVER_ADDRESS = "127.0.0.2"


@dataclass(frozen=True)
class RemoteServer:
    user: str
    uid: int
    home: Path
    address: str
    port: int
    private_key: Path
    known_hosts: Path

    @property
    def ssh(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    def processes(self) -> list[str]:
        """The server user's live processes, as `pid command` lines. A zombie (state Z) has
        already ended: only its exit status waits for its parent (init, for QEMU) to read it."""
        found = subprocess.run(
            ["ps", "-u", str(self.uid), "-o", "stat=,pid=,args="], capture_output=True, text=True, check=False
        )
        lines = [line.split(None, 1) for line in found.stdout.splitlines() if line.strip()]
        return [rest for stat, rest in lines if not stat.startswith("Z")]


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@contextmanager
def remote_server(workdir: Path) -> Iterator[RemoteServer]:
    user = f"nexus-srv-{secrets.token_hex(3)}"
    workdir.mkdir(parents=True, exist_ok=True)
    client_key, host_key = workdir / "client_ed25519", workdir / "host_ed25519"
    for key in (client_key, host_key):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    # A home of its own; '*' as password: no password login, and (unlike useradd's '!') an
    # account sshd does not take for locked.
    _run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", user])
    sshd: subprocess.Popen[bytes] | None = None
    try:
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        shutil.copyfile(client_key.with_suffix(".pub"), ssh_dir / "authorized_keys")
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        (ssh_dir / "authorized_keys").chmod(0o600)
        port = _free_port()
        config = workdir / "sshd_config"
        config.write_text(
            "\n".join(
                (
                    f"ListenAddress {SERVER_ADDRESS}",
                    f"Port {port}",
                    f"HostKey {host_key}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AllowUsers {user}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "AllowTcpForwarding yes",
                    "Subsystem sftp internal-sftp",
                    "",
                )
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = subprocess.Popen(
            [find_sshd(), "-D", "-e", "-f", str(config)], stderr=(workdir / "sshd.log").open("wb")
        )
        _wait_for_port(port, sshd, address=SERVER_ADDRESS)
        yield RemoteServer(
            user=user,
            uid=entry.pw_uid,
            home=home,
            address=SERVER_ADDRESS,
            port=port,
            private_key=client_key,
            known_hosts=workdir / "known_hosts",
        )
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        # Whatever the test left of the user's (a failed test's QEMU) goes with it.
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
        subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)

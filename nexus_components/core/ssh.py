"""SSH to the guest with the host's own OpenSSH client: key pairs, argv, convenience files."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus_components.core.errors import HostToolError

# The guest's host key changes whenever the VM is recreated; pinning it would make
# every re-create fail, so (like Lima and Vagrant) we do not record it.
CLIENT_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "IdentitiesOnly=yes",
)
# A guest that hangs keeps the TCP connection (QEMU's user network holds it) but stops
# answering: these end such a session within a minute instead of never.
KEEPALIVE_OPTIONS = ("-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")
# How long an automated step waits for the guest's SSH banner.
CONNECT_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    private_key: Path
    # For a VM on a remote host: the command that carries the connection through the server.
    proxy_command: tuple[str, ...] = ()

    def proxy_options(self) -> list[str]:
        return ["-o", "ProxyCommand=" + shlex.join(self.proxy_command)] if self.proxy_command else []

    def argv(self, command: Sequence[str] = (), *, connect_timeout: int = 10) -> list[str]:
        argv = [
            "ssh",
            *CLIENT_OPTIONS,
            *KEEPALIVE_OPTIONS,
            "-o",
            f"ConnectTimeout={connect_timeout}",
            *self.proxy_options(),
            "-i",
            str(self.private_key),
            "-p",
            str(self.port),
            f"{self.user}@{self.host}",
        ]
        if command:
            # ssh joins its arguments into one remote shell line: quote each one.
            argv += ["--", shlex.join(command)]
        return argv

    def interactive_command(self) -> str:
        """The line a user pastes into a terminal (the `sshCommand` output)."""
        return shlex.join(
            [
                "ssh",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                *self.proxy_options(),
                "-i",
                str(self.private_key),
                "-p",
                str(self.port),
                f"{self.user}@{self.host}",
            ]
        )


def generate_key_pair(private_key: Path, comment: str) -> None:
    """An ed25519 pair without passphrase; ssh-keygen writes the private half with mode 0600."""
    private_key.parent.mkdir(parents=True, exist_ok=True)
    private_key.parent.chmod(0o700)
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private_key)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as error:
        raise HostToolError(
            "ssh-keygen was not found on PATH",
            hint="install OpenSSH (`apt-get install openssh-client`; built into macOS and Windows 10+)",
        ) from error
    if result.returncode != 0:
        raise HostToolError(
            "could not generate the stack's SSH key pair",
            command=argv,
            output=result.stdout + result.stderr,
            hint=f"check that {private_key.parent} is writable",
        )
    private_key.chmod(0o600)


def connect_script(target: SshTarget) -> str:
    return (
        "#!/bin/sh\n# Written by nexus-nested-vm: opens a shell in the VM.\nexec "
        + target.interactive_command()
        + ' "$@"\n'
    )


def ssh_config_entry(alias: str, target: SshTarget) -> str:
    """A block for ~/.ssh/config (`Include` it), so `ssh <alias>` works."""
    return (
        f"Host {alias}\n"
        f"  HostName {target.host}\n"
        f"  Port {target.port}\n"
        f"  User {target.user}\n"
        f'  IdentityFile "{target.private_key}"\n'
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        + (f"  ProxyCommand {shlex.join(target.proxy_command)}\n" if target.proxy_command else "")
    )

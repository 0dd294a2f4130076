"""The server a host resource runs on (nexus:host), an input every host resource but SshKey takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nexus_components.core.lifecycle import Lifecycle
from nexus_components.host.remote import OnHost

from ..spec import port, prop


@dataclass(frozen=True)
class HostConnection:
    """A server reached with this machine's OpenSSH client: the resource's steps run there
    (one SSH command each, nothing of ours runs there between them)."""

    user: str = prop("The login user on the server.")
    server: str = prop("The server's DNS name or address.")
    port: int = port("The port its sshd listens on.")
    key_file: str | None = prop("The private key to log in with; unset: your SSH agent and ~/.ssh keys.")
    known_hosts_file: str | None = prop(
        "The known-hosts file that pins the server's key; unset: ~/.ssh/known_hosts (a new server "
        "is remembered on first use)."
    )


def host_input() -> Any:
    return prop(
        "The server this resource's files and processes are on (its steps run there over SSH); "
        "unset: this machine. Another server makes the resource anew."
    )


def on_host(name: str, lifecycle: Lifecycle) -> Lifecycle:
    """The lifecycle, run here or on the server the resource's `host` names."""
    return OnHost(name, lifecycle)

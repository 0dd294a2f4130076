"""How every guest resource reaches the VM: its forwarded SSH port and the stack's key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..host.qemu_vm import VmState
from ..settings import setting
from ..spec import absolute_path, port, prop

# A Docker host over SSH, as pulumi-docker's provider takes it.
DOCKER_HOST = r"ssh://[a-z_][a-z0-9_-]{0,31}@[^\s@/]+:[0-9]{1,5}"
DOCKER_HOST_RULE = "ssh://<login user>@<address>:<port>, the VM's Docker over SSH"


@dataclass(frozen=True)
class VmAccess:
    """The VM's SSH: the same for every guest resource of a lab."""

    ssh_host: str = prop(
        "The address the VM's SSH port is forwarded on, on this machine (QemuVm's `sshHost`).",
        pattern=r"[0-9A-Za-z.:-]+",
        rule="an IP address or host name",
    )
    ssh_port: int = port("The host port forwarded to the VM's sshd (QemuVm's `sshPort`).")
    username: str = setting("The VM's login user, with passwordless sudo.", "guest", "username")
    private_key: str = absolute_path(
        "The private key's file the VM is reached with (SshKey's `privateKeyPath`): its path, never its "
        "content, is kept in the state."
    )
    proxy_command: list[str] | None = prop(
        "For a VM on a remote host (nexus:host): the command its SSH connections go through, an ssh to "
        "the server ending in `-W %h:%p`; unset: straight to `sshHost`."
    )
    vm_state: VmState | None = prop(
        "The VM's declared state (QemuVm's `state`; unset: running). While it is suspended nothing in the "
        "VM is looked at, and a change to this resource is refused: it needs the VM running."
    )


def docker_host() -> Any:
    return prop(
        "The VM's Docker engine as pulumi-docker reaches it (DockerDaemon's id).",
        pattern=DOCKER_HOST,
        rule=DOCKER_HOST_RULE,
    )

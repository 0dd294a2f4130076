"""nexus:host:StateDir, the stack's own directory."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.host import lifecycles

from ..spec import ResourceSpec, absolute_path, port, prop
from .connection import HostConnection, host_input, on_host


@dataclass(frozen=True)
class StateDirArgs:
    state_dir: str = absolute_path(
        "Absolute path of the stack's directory (mode 0700): the VM's disk, seed, key, logs and "
        "sockets go there."
    )
    stack: str = prop(
        "The stack that owns the directory, written into its marker file: a directory another "
        "stack made, or one holding files nexus did not make, is refused."
    )
    qmp_tcp_port: int | None = port(
        "The VM's QMP port on Windows hosts (where QMP is a TCP socket), so `destroy` can still "
        "stop a QEMU left behind by an interrupted `up`; unset elsewhere."
    )
    host: HostConnection | None = host_input()


@dataclass(frozen=True)
class StateDirState:
    created_dirs: list[str] = prop(
        "The directories `up` made (the state directory and any missing parents): `destroy` "
        "removes these and every file the stack made in them, keeping anything else."
    )


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:StateDir",
    description="The stack's directory. Delete it last: `destroy` stops a QEMU an interrupted "
    "`up` left running, then removes every file the stack made (the shared image cache stays).",
    inputs=StateDirArgs,
    outputs=StateDirState,
    lifecycle=on_host("StateDir", lifecycles.StateDir()),
)

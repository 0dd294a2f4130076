"""What a command needs to know about a stack's lab, read from the stack's outputs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_components.core.errors import NexusError
from nexus_components.core.ssh import SshTarget


@dataclass(frozen=True)
class LabOutputs:
    """The stack outputs of `up`: the host layer's always, a guest layer's when it is on."""

    stack: str
    values: Mapping[str, Any]

    def require(self, name: str, *, layer: str) -> Any:
        if name not in self.values:
            raise NexusError(
                f"stack {self.stack!r} has no {layer}: its outputs lack {name!r}",
                hint=f"turn the {layer} on in the stack settings, then run scripts/up {self.stack}",
            )
        return self.values[name]

    @property
    def state_dir(self) -> Path:
        return Path(self.require("stateDir", layer="VM"))

    @property
    def host(self) -> str:
        """`local`, or the server the lab runs on (a stack from before nexus:host: local)."""
        return str(self.values.get("host", "local"))

    def vm_target(self) -> SshTarget:
        """The VM's SSH as the user reaches it, from the `sshCommand` output (`... -p PORT user@host`,
        with the jump through the server for a lab on a remote host)."""
        words = shlex.split(str(self.require("sshCommand", layer="VM")))
        user, _, host = words[-1].rpartition("@")
        proxy = next((w.removeprefix("ProxyCommand=") for w in words if w.startswith("ProxyCommand=")), "")
        return SshTarget(
            host,
            int(self.require("sshPort", layer="VM")),
            user,
            Path(self.require("privateKeyPath", layer="VM")),
            tuple(shlex.split(proxy)),
        )

    def require_local(self, what: str) -> None:
        if self.host != "local":
            raise NexusError(
                f"{what}: stack {self.stack!r} runs on {self.host} (nexus:host); this command works on a "
                "lab on this machine only, for now",
                hint=f"run it on {self.host.rpartition(':')[0]}, in a checkout of this project there",
            )


def pulumi_command() -> list[str]:
    # scripts/lab points this at scripts/pulumi (its backend and passphrase); a consumer
    # project runs the commands with its own `pulumi` on PATH.
    return [os.environ.get("NEXUS_PULUMI", "pulumi")]


def selected_stack() -> str:
    command = [*pulumi_command(), "stack", "--show-name"]
    return _run(
        command, what="could not tell which stack is selected", hint="name it: scripts/lab --stack NAME ..."
    ).strip()


def read_outputs(stack: str) -> LabOutputs:
    command = [*pulumi_command(), "stack", "output", "--json", "--show-secrets", "--stack", stack]
    text = _run(
        command,
        what=f"could not read the outputs of stack {stack!r}",
        hint="check the name with scripts/pulumi stack ls",
    )
    values = json.loads(text or "{}")
    if not values:
        raise NexusError(f"stack {stack!r} has no lab up", hint=f"run scripts/up {stack} first")
    return LabOutputs(stack, values)


def _run(command: list[str], *, what: str, hint: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise NexusError(what, command=command, output=str(error), hint="run scripts/setup first") from error
    if done.returncode != 0:
        raise NexusError(what, command=command, output=done.stderr or done.stdout, hint=hint)
    return done.stdout

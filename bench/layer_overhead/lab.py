"""A running lab as the benchmark sees it, read from the stack's Pulumi deployment.

`scripts/pulumi stack export` gives the stack outputs (SSH port, key, accelerator, state
directory, VM pid) and the VM resource's port forwards in one call, without the stack's
config file. `lab_from_deployment` is pure and unit-tested; `read_lab` runs the command.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_components.core.ssh import SshTarget

from .errors import BenchError

STACK_TYPE = "pulumi:pulumi:Stack"
# pulumi-docker's container: its `ports` output is what Docker really published on the VM.
CONTAINER_TYPE = "docker:index/container:Container"
CONTAINER_OUTPUT = "playgroundContainer"
# The VM: the nexus package's QemuVm resource (its `forwards` are the VM's port forwards).
VM_TYPE = "nexus:host:QemuVm"


@dataclass(frozen=True)
class Forward:
    """A host port forwarded to a VM port (QEMU user networking)."""

    host: int
    guest: int


@dataclass(frozen=True)
class Lab:
    stack: str
    state_dir: Path
    accelerator: str
    ssh: SshTarget
    vm_pid: int
    forwards: tuple[Forward, ...]
    # (VM port, container port) pairs the playground container publishes, tcp only.
    container_ports: tuple[tuple[int, int], ...]
    # Every stack output, for the guest layers (container, inner VM) to find themselves in.
    outputs: Mapping[str, Any]


def lab_from_deployment(stack: str, deployment: Mapping[str, Any]) -> Lab:
    resources = deployment.get("resources") or []
    outputs: dict[str, Any] = next(
        (dict(r.get("outputs") or {}) for r in resources if r.get("type") == STACK_TYPE), {}
    )
    missing = [
        key for key in ("sshCommand", "sshPort", "privateKeyPath", "stateDir", "vmPid") if key not in outputs
    ]
    if missing or not outputs.get("vmPid"):
        raise BenchError(
            f"stack {stack!r} is not up: it has no running VM "
            f"({'missing outputs: ' + ', '.join(missing) if missing else 'vmPid is 0'})",
            hint=f"start it with `scripts/pulumi up --stack {stack}`, then run the benchmark again",
        )
    where = outputs.get("host", "local")
    if where != "local":
        # Its host column would be this machine, and its layers are reached through the server.
        raise BenchError(
            f"stack {stack!r} runs on {where} (nexus:host): bench-layers measures a lab against "
            "the machine it runs on, so only a lab on this machine",
            hint="bring up a stack without nexus:host here (or on the server, and run the benchmark there)",
        )
    destination = shlex.split(str(outputs["sshCommand"]))[-1]
    user, _, host = destination.rpartition("@")
    vm_inputs = next(
        (dict(r.get("outputs") or {}) for r in resources if r.get("type") == VM_TYPE),
        {},
    )
    forwards = tuple(
        Forward(int(f["host"]), int(f["guest"]))
        for f in vm_inputs.get("forwards") or []
        if f.get("protocol", "tcp") == "tcp"
    )
    container = outputs.get(CONTAINER_OUTPUT)
    container_ports = tuple(
        (int(port["external"]), int(port["internal"]))
        for r in resources
        if r.get("type") == CONTAINER_TYPE and container and (r.get("outputs") or {}).get("name") == container
        for port in (r.get("outputs") or {}).get("ports") or []
        if port.get("protocol", "tcp") == "tcp" and port.get("external")
    )
    return Lab(
        stack=stack,
        state_dir=Path(str(outputs["stateDir"])),
        accelerator=str(outputs.get("accelerator", "unknown")),
        ssh=SshTarget(
            host=host, port=int(outputs["sshPort"]), user=user, private_key=Path(outputs["privateKeyPath"])
        ),
        vm_pid=int(outputs["vmPid"]),
        forwards=forwards,
        container_ports=container_ports,
        outputs=outputs,
    )


def pulumi_failure(stack: str, output: str) -> BenchError:
    """Pulumi's words for the common cases, turned into the step the user takes next."""
    if "no stack named" in output or "could not find stack" in output.lower():
        return BenchError(
            f"no stack named {stack!r}",
            hint="list the stacks with `scripts/pulumi stack ls`; pass one of them to scripts/bench-layers",
        )
    if "no stack selected" in output.lower():
        return BenchError(
            "no stack given and none selected",
            hint="pass a stack (`scripts/bench-layers linux`) or `scripts/pulumi stack select linux`",
        )
    return BenchError("could not read the stack from Pulumi", output=output, hint="run scripts/setup first")


def read_lab(stack: str | None, pulumi: Sequence[str], *, env: Mapping[str, str] | None = None) -> Lab:
    """Run `<pulumi> stack export` for the stack (the selected one when None)."""

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*pulumi, *args],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env=dict(env) if env is not None else None,
            )
        except FileNotFoundError as error:
            raise BenchError(f"{pulumi[0]} was not found", hint="run scripts/setup first") from error

    if stack is None:
        named = call("stack", "--show-name")
        if named.returncode != 0:
            raise pulumi_failure("(selected)", named.stdout + named.stderr)
        stack = named.stdout.strip()
    exported = call("stack", "export", "--stack", stack)
    if exported.returncode != 0:
        raise pulumi_failure(stack, exported.stdout + exported.stderr)
    document = json.loads(exported.stdout)
    return lab_from_deployment(stack, document.get("deployment") or {})

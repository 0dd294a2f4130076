"""The NEXUS lab for this stack: `pulumi up` leaves a running VM you can SSH into.

The lab is the `nexus` package's component `nexus:index:Lab`, declared as any other Pulumi
program would: through the package's Python SDK (`pulumi_nexus`, which scripts/setup
generates from this checkout's plugin), with the stack's `nexus:` settings as its arguments:
the VM, and the guest layers above it (Docker, the playground container, the inner VM).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_nexus as nexus
from pulumi.runtime.config import get_config_env

from nexus_components.config import NAMESPACE, NexusConfig, load_config
from nexus_components.core.errors import NexusError
from nexus_components.interrupt import fail_before_changes, leave_quietly_on_interrupt
from nexus_components.lab_settings import lab_arguments
from nexus_components.placement import place

# The engine has already reported why a run ended when the language host sends SIGINT.
leave_quietly_on_interrupt()

LAB_NAME = "nexus"
# The stack's outputs, by the names users and scripts read: the Lab's outputs, each layer's
# only when that layer is on.
HOST_OUTPUTS = (
    "sshCommand",
    "sshPort",
    "privateKeyPath",
    "vmPid",
    "vmReadySeconds",
    "serialLog",
    "connectScript",
    "accelerator",
    "stateDir",
    "host",
)
ENGINE_OUTPUTS = ("dockerVersion", "kvmUsable", "kvmVerdict", "libvirtVersion", "dockerReadySeconds")
PLAYGROUND_OUTPUTS = ("playgroundContainer", "playgroundImageDigest", "playgroundShellScript")
INNER_VM_OUTPUTS = (
    "innerVmAccelerator",
    "innerVmQmpStatus",
    "innerVmReadySeconds",
    "innerVmReach",
    "innerVmSerialLog",
    "innerVmShellScript",
)


def stack_settings() -> dict[str, Any]:
    """Every `nexus:` key of the stack, so a misspelt top-level key is reported, not ignored."""
    settings: dict[str, Any] = {}
    for full_key, value in get_config_env().items():
        namespace, _, key = full_key.partition(":")
        if namespace == NAMESPACE:
            try:
                settings[key] = json.loads(value)
            except json.JSONDecodeError:
                settings[key] = value
    return settings


def exported_outputs(config: NexusConfig) -> tuple[str, ...]:
    names: tuple[str, ...] = HOST_OUTPUTS + (("tunnelScript",) if config.host else ())
    if config.playground.enabled or config.guest.install_packages:
        names += ENGINE_OUTPUTS
    if config.playground.enabled:
        names += PLAYGROUND_OUTPUTS
        if config.inner_vm.enabled:
            names += INNER_VM_OUTPUTS
    return names


def snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


settings = stack_settings()
try:
    # What the Lab would refuse, refused here first with the same words and no Python stack
    # (the engine reports a component's refusal as a crash of the program): a bad key, a host
    # without QEMU or a usable accelerator, a state directory that is not the stack's (or a
    # lab an earlier version made, whose stack must be upgraded first), a disk smaller than
    # the cached image, a remote host that cannot be reached. Nothing is declared before these pass.
    config = load_config(settings, stack=pulumi.get_stack(), home=Path.home(), project_dir=Path.cwd())
    # On the machine that runs QEMU: this one, or the server nexus:host names.
    place(config, settings)
except NexusError as error:
    # A clean message without a Python traceback; nothing has been registered yet.
    fail_before_changes(str(error))

# Every section goes to the Lab as it is in the stack.
keywords = [name for name in inspect.signature(nexus.LabArgs.__init__).parameters if not name.startswith("_")]
arguments, not_in_the_lab = lab_arguments(settings, keywords)
if not_in_the_lab:
    # load_config refuses unknown sections; a section it knows and the Lab does not is ours.
    fail_before_changes(f"the nexus Lab takes no {', '.join(sorted(not_in_the_lab))} (a bug of this program)")
lab = nexus.Lab(LAB_NAME, **arguments)

for output_name in exported_outputs(config):
    pulumi.export(output_name, getattr(lab, snake_case(output_name)))

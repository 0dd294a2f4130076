"""The NEXUS lab for this stack: `pulumi up` leaves a running VM you can SSH into.

The lab is the `nexus` package's component `nexus:index:Lab`, declared as any other Pulumi
program would: through the package's Python SDK (`pulumi_nexus`, which scripts/setup
generates from this checkout's plugin), with the stack's `nexus:` settings as its arguments.
The guest layers (Docker, the playground container, the inner VM) are still declared here,
on top of the Lab's outputs, until the Lab takes them too.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_nexus as nexus
from pulumi.resource import DependencyResource
from pulumi.runtime.config import get_config_env

from nexus_components.components import HostLayer
from nexus_components.config import NAMESPACE, load_config
from nexus_components.errors import NexusError
from nexus_components.hostfacts import check_before_changes, detect_host, find_qemu_img, host_os
from nexus_components.interrupt import fail_before_changes, leave_quietly_on_interrupt
from nexus_components.lab_settings import lab_arguments

# The engine has already reported why a run ended when the language host sends SIGINT.
leave_quietly_on_interrupt()

LAB_NAME = "nexus"
# The stack's outputs, by the names users and scripts read: the Lab's outputs.
STACK_OUTPUTS = {
    "sshCommand": "ssh_command",
    "sshPort": "ssh_port",
    "privateKeyPath": "private_key_path",
    "vmPid": "vm_pid",
    "vmReadySeconds": "vm_ready_seconds",
    "serialLog": "serial_log",
    "connectScript": "connect_script",
    "accelerator": "accelerator",
    "stateDir": "state_dir",
}


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


def lab_child(type_name: str, suffix: str) -> pulumi.CustomResource:
    """One of the Lab's resources, for the guest layers to depend on (its URN is fixed by the
    Lab's type and name)."""
    parent = f"urn:pulumi:{pulumi.get_stack()}::{pulumi.get_project()}::nexus:index:Lab"
    return DependencyResource(f"{parent}$nexus:host:{type_name}::{LAB_NAME}-{suffix}")


settings = stack_settings()
try:
    # What the Lab would refuse, refused here first with the same words and no Python stack
    # (the engine reports a component's refusal as a crash of the program): a bad key, a host
    # without QEMU or a usable accelerator, a state directory that is not the stack's (or a
    # lab an earlier version made, whose stack must be upgraded first), a disk smaller than
    # the cached image. Nothing is declared before these pass.
    config = load_config(settings, stack=pulumi.get_stack(), home=Path.home(), project_dir=Path.cwd())
    detect_host(config.vm)
    check_before_changes(config, find_qemu_img(config.vm, host_os()))
except NexusError as error:
    # A clean message without a Python traceback; nothing has been registered yet.
    fail_before_changes(str(error))

# Every section the Lab takes goes to it as it is in the stack; the rest is declared below.
keywords = [name for name in inspect.signature(nexus.LabArgs.__init__).parameters if not name.startswith("_")]
arguments, _not_in_the_lab = lab_arguments(settings, keywords)
lab = nexus.Lab(LAB_NAME, **arguments)

for output_name, attribute in STACK_OUTPUTS.items():
    pulumi.export(output_name, getattr(lab, attribute))

# Docker, the playground container and the inner VM, on top of the running VM. A host-only
# lab has none: their modules (pulumi-docker's SDK is a second of start-up) are not loaded.
if config.playground.enabled or config.guest.install_packages:
    from nexus_components.guest.components import GuestLayers, GuestLayersArgs

    host = HostLayer(
        private_key_path=lab.private_key_path,
        public_key=lab.public_key,
        instance_id=lab.instance_id,
        vm_pid=lab.vm_pid,
        disk_id=lab.disk_id,
        vm=lab_child("QemuVm", "vm"),
        disk=lab_child("OverlayDisk", "disk"),
        state=lab_child("StateDir", "state"),
    )
    guest = GuestLayers("nexus-guest", GuestLayersArgs(config=config, lab=host))
    for output_name, output_value in guest.outputs.items():
        pulumi.export(output_name, output_value)

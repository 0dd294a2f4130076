"""The NEXUS lab for this stack: `pulumi up` leaves a running VM you can SSH into."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import get_config_env

from nexus_components.components import NexusVm, NexusVmArgs
from nexus_components.config import NAMESPACE, load_config
from nexus_components.core.errors import NexusError
from nexus_components.guest.components import GuestLayers, GuestLayersArgs
from nexus_components.host.hostfacts import (
    accelerator_note,
    check_before_changes,
    detect_host,
    find_qemu_img,
    host_os,
)
from nexus_components.interrupt import fail_before_changes, leave_quietly_on_interrupt

# The engine has already reported why a run ended when the language host sends SIGINT.
leave_quietly_on_interrupt()


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


try:
    config = load_config(stack_settings(), stack=pulumi.get_stack(), home=Path.home(), project_dir=Path.cwd())
    host = detect_host(config.vm)
    qemu_img = find_qemu_img(config.vm, host_os())
    check_before_changes(config, qemu_img)
except NexusError as error:
    # A clean message without a Python traceback; nothing has been registered yet.
    fail_before_changes(str(error))

note = accelerator_note(config.vm.accelerator, host.accelerator)
if note:
    pulumi.log.warn(note)

lab = NexusVm("nexus", NexusVmArgs(config=config, host=host, qemu_img=qemu_img))
# Docker, the playground container and the inner VM, on top of the running VM.
guest = GuestLayers("nexus-guest", GuestLayersArgs(config=config, lab=lab))
for output_name, output_value in {**lab.outputs, **guest.outputs}.items():
    pulumi.export(output_name, output_value)

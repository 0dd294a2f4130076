"""What the guest layers' components build on: the host layer as the Lab gives it, and a
dynamic resource with typed outputs.

The host layer itself is the `nexus` package's component `nexus:index:Lab` (its resources
`nexus:host:*`), which the reference program declares through the package's SDK.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
from pulumi.dynamic import Resource


class _Dynamic(Resource):
    """A dynamic resource whose listed outputs become attributes."""

    def __init__(
        self,
        provider: pulumi.dynamic.ResourceProvider,
        name: str,
        inputs: dict[str, Any],
        outputs: tuple[str, ...],
        opts: pulumi.ResourceOptions,
    ) -> None:
        super().__init__(provider, name, {**inputs, **dict.fromkeys(outputs)}, opts)


@dataclasses.dataclass(frozen=True)
class HostLayer:
    """What the guest layers use of the running VM: the Lab's outputs, and its resources to
    depend on (the VM runs; files in the state directory go before it; what is stored on the
    disk is deleted with it)."""

    private_key_path: pulumi.Output[str]
    public_key: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    vm_pid: pulumi.Output[int]
    disk_id: pulumi.Output[str]
    vm: pulumi.CustomResource
    disk: pulumi.CustomResource
    state: pulumi.CustomResource

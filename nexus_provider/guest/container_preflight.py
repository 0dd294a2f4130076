"""nexus:guest:ContainerPreflight, what a new playground container needs from the VM."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.guest import lifecycles

from ..host.qemu_vm import Protocol
from ..settings import setting
from ..spec import ResourceSpec, port, prop
from .access import VmAccess, docker_host


@dataclass(frozen=True)
class WantedVmPort:
    """A VM port the container publishes, and the setting to name when it is taken."""

    vm: int = port("The VM port.")
    protocol: Protocol = prop("tcp or udp.")
    key: str = prop("The setting that asks for it, named in the error (nexus:playground.ports[0].vm).")


@dataclass(frozen=True)
class WantedDevice:
    """A device the container is given, and the setting to name when it is missing."""

    path: str = prop(
        "The device's path in the VM.",
        pattern=r"/dev/[^\x00-\x1f:,]+",
        rule="a device path under /dev/, without ':', ',' or control characters",
    )
    key: str = prop("The setting that asks for it, named in the error (nexus:playground.devices[0]).")


@dataclass(frozen=True)
class ContainerPreflightArgs(VmAccess):
    container: str = setting("The container's name in the VM.", "playground", "name")
    ports: list[WantedVmPort] = prop("The VM ports the new container publishes.")
    devices: list[WantedDevice] = prop("The devices the new container is given.")
    docker_host: str = docker_host()
    settings_digest: str | None = prop(
        "A digest of the container's other settings (env, command, volumes, restart, privileged): while the "
        "VM is suspended a change to them is refused here, before pulumi-docker tries to reach the VM.",
        pattern="[0-9a-f]{64}",
        rule="a SHA-256 in hex",
    )


@dataclass(frozen=True)
class ContainerPreflightState:
    pass


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:ContainerPreflight",
    description="Checks, at every `preview` and `up`, what a new playground container needs from the VM "
    "before the current one is deleted (the container is replaced delete-first: its name and ports are "
    "unique in the VM): each VM port it publishes is free or held by the current container, and each "
    "device exists. Otherwise `preview` and `up` stop here, the current container still running, with one "
    "line per setting. A VM that does not answer is not checked (its own resources say so).",
    inputs=ContainerPreflightArgs,
    outputs=ContainerPreflightState,
    lifecycle=lifecycles.ContainerPreflight(),
)

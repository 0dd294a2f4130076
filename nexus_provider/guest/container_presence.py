"""nexus:guest:ContainerPresence, the playground container as the VM shows it."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.guest import lifecycles

from ..settings import setting
from ..spec import ResourceSpec, prop
from .access import VmAccess, docker_host


@dataclass(frozen=True)
class ContainerPresenceArgs(VmAccess):
    container: str = setting("The container's name in the VM.", "playground", "name")
    docker_host: str = docker_host()


@dataclass(frozen=True)
class ContainerPresenceState:
    removed: list[str] | None = prop(
        "The ids of the containers of that name an interrupted `up` had left, removed when this was created."
    )
    status: str | None = prop(
        "The container's state when last read: running, stopped, gone, foreign or no answer."
    )


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:ContainerPresence",
    description="The playground container as the VM shows it, checked at every `preview` and `up` without "
    "a refresh. A container stopped by hand is started again in place (same container, files kept); one "
    "removed by hand replaces this resource, whose new id, carried by the container as a label, has the "
    "container created anew. Created just before a new container: a container of that name this product "
    "made (left by an `up` killed mid-create) is removed first, and one of the user's own stops `up` "
    "with an error naming it.",
    inputs=ContainerPresenceArgs,
    outputs=ContainerPresenceState,
    lifecycle=lifecycles.ContainerPresence(),
)

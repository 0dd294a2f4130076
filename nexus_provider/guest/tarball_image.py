"""nexus:guest:TarballImage, the playground's image from a tarball on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nexus_components.guest import lifecycles

from ..settings import setting
from ..spec import ResourceSpec, absolute_path, prop
from .access import VmAccess


class TarballKind(Enum):
    """What the tarball is: a `docker save` archive (loaded) or a root file system (imported)."""

    IMAGE_TARBALL = "image-tarball"
    ROOTFS_TARBALL = "rootfs-tarball"


@dataclass(frozen=True)
class TarballImageArgs(VmAccess):
    container: str = setting(
        "The container the image is for: its tag is named after it.", "playground", "name"
    )
    kind: TarballKind = prop("image-tarball (`docker load`) or rootfs-tarball (`docker import -`).")
    key: str = prop("The setting the tarball comes from, named in errors (nexus:playground.imageTarball).")
    path: str = absolute_path("The tarball on this machine.")
    digest: str = prop(
        "The tarball's SHA-256: a new content is a new image (a new tag); a moved file with the same "
        "content changes nothing.",
        pattern=r"[0-9a-f]{64}",
        rule="64 lower-case hex digits",
    )
    disk_id: str = prop("The VM disk's id (OverlayDisk's `id`): a new disk gets the image imported again.")


@dataclass(frozen=True)
class TarballImageState:
    tag: str = prop("The image's tag in the VM, one per content (nexus/<container>:tarball-<digest>).")
    image_id: str = prop("The image's id in the VM's Docker.")


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:TarballImage",
    description="A playground image from a tarball on this machine, streamed over the stack's SSH "
    "connection into `docker load` or `docker import -` in the VM and tagged once per content: no copy is "
    "left in the VM, and a failed import leaves the current image, container and state as they were, "
    "with one error naming the setting. `preview` shows an image gone from the VM.",
    inputs=TarballImageArgs,
    outputs=TarballImageState,
    lifecycle=lifecycles.TarballImage(),
)

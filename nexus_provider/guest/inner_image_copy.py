"""nexus:guest:InnerImageCopy, the inner VM's cloud image: in the host's cache, then in the VM."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.guest import lifecycles

from ..spec import ResourceSpec, absolute_path, prop
from .access import VmAccess


@dataclass(frozen=True)
class InnerImageCopyArgs(VmAccess):
    url: str = prop(
        "Where the image comes from: an http(s) URL, a file:// URL or an absolute path on this machine; a "
        "qcow2 or raw cloud image.",
        pattern=r"(https?://\S+|file://\S+|/[^\x00-\x1f]*)",
        rule="an http:// or https:// URL or a file:// URL (without spaces), or an absolute path here",
    )
    sha256: str | None = prop(
        "The image's expected SHA-256; unset: read from SHA256SUMS beside the URL.",
        pattern=r"[0-9a-f]{64}",
        rule="64 lower-case hex digits",
    )
    cache_dir: str = absolute_path("The image cache shared by all stacks; `destroy` keeps it.")
    disk_id: str = prop("The VM disk's id (OverlayDisk's `id`): a new disk gets the image copied again.")


@dataclass(frozen=True)
class InnerImageCopyState:
    path: str = prop("The image's file in the host's cache.")
    digest: str = prop("The image's SHA-256, as checked while it was fetched.")
    format: str = prop("qcow2 or raw, as read from the file.")
    vm_path: str = prop("The copy in the VM (/var/lib/nexus/images/<digest>.<format>).")
    size: int = prop("The image file's size in bytes.")


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:InnerImageCopy",
    description="The inner VM's cloud image: fetched into the host's image cache (SHA-256 checked, kept "
    "when the stack is destroyed), then streamed into the VM once per digest, where the playground "
    "container mounts it read-only. `preview` shows a copy gone from the VM; a replaced image's copy is "
    "removed from the VM.",
    inputs=InnerImageCopyArgs,
    outputs=InnerImageCopyState,
    lifecycle=lifecycles.InnerImageCopy(),
)

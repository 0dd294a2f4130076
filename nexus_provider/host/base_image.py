"""nexus:host:BaseImage, the cloud image in the shared cache."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.host import lifecycles

from ..spec import ResourceSpec, absolute_path, prop
from .connection import HostConnection, host_input, on_host

SHA256 = r"[0-9a-f]{64}"
SHA256_RULE = "64 lower-case hex digits"
DISK_SIZE = r"[1-9][0-9]{0,5}[MGT]"
DISK_SIZE_RULE = "a size such as 20G: a whole number (up to 6 digits) and M, G or T"


@dataclass(frozen=True)
class BaseImageArgs:
    url: str = prop(
        "Where the image comes from: an http(s) URL, a file:// URL or a local path (air-gapped machines)."
    )
    sha256: str | None = prop(
        "The image's expected SHA-256; unset: read from SHA256SUMS beside the URL.",
        pattern=SHA256,
        rule=SHA256_RULE,
    )
    cache_dir: str = absolute_path("The image cache shared by all stacks; `destroy` keeps it.")
    disk_size: str = prop(
        "The size the VM's disk will have: the image refuses a disk smaller than its own virtual size "
        "before any of the VM's files exist.",
        pattern=DISK_SIZE,
        rule=DISK_SIZE_RULE,
    )
    qemu_img: str = prop(
        "The qemu-img program that reads the image's virtual size (a name on PATH or a path)."
    )
    host: HostConnection | None = host_input()


@dataclass(frozen=True)
class BaseImageState:
    path: str = prop("The image's file in the cache.")
    digest: str = prop("The image's SHA-256, as checked while it was downloaded.")
    size: int = prop("The image file's size in bytes.")
    virtual_size: int = prop("The disk size the image holds, in bytes (what qemu-img calls virtual size).")


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:BaseImage",
    description="A cloud image downloaded into the shared cache (SHA-256 checked while streaming, "
    "resumed over HTTP, renamed into place when complete). Deleting it keeps the cache.",
    inputs=BaseImageArgs,
    outputs=BaseImageState,
    lifecycle=on_host("BaseImage", lifecycles.BaseImage()),
)

"""nexus:host:OverlayDisk, the VM's qcow2 disk on top of the base image."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.core.lifecycle import Props
from nexus_components.host import lifecycles
from nexus_components.host.settings import disk_size_bytes

from ..spec import ResourceSpec, absolute_path, port, prop
from .base_image import DISK_SIZE, DISK_SIZE_RULE
from .connection import HostConnection, host_input, on_host


@dataclass(frozen=True)
class OverlayDiskArgs:
    state_dir: str = absolute_path("The stack's directory, where the disk is made (`disk.qcow2`).")
    base_path: str = prop("The base image's file (BaseImage's `path`): the overlay's backing file.")
    base_digest: str = prop("The base image's SHA-256 (BaseImage's `digest`): a new image makes a new disk.")
    disk_size: str = prop(
        "The disk's size. A larger size grows the disk in place (through the running VM if there is one); "
        "a smaller one is refused at preview, since it would cut off the guest's file system.",
        pattern=DISK_SIZE,
        rule=DISK_SIZE_RULE,
    )
    qemu_img: str = prop("The qemu-img program that makes and grows the disk (a name on PATH or a path).")
    qmp_tcp_port: int | None = port(
        "The VM's QMP port on Windows hosts, where a running VM's disk is grown through QMP over TCP; "
        "unset elsewhere (a socket in the stack's directory)."
    )
    host: HostConnection | None = host_input()


@dataclass(frozen=True)
class OverlayDiskState:
    size_bytes: int = prop("The disk's size in bytes (QEMU's binary units).")


def _with_size_in_bytes(props: Props) -> Props:
    size = props["disk_size"]
    return {**props, "size_bytes": disk_size_bytes(size) if isinstance(size, str) else size}


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:OverlayDisk",
    description="The VM's disk: a qcow2 overlay whose backing file is the base image, so the image "
    "in the cache is never written. Its id changes whenever it is made anew, so a VM that depends on "
    "it starts again on the new disk; a disk file deleted by hand is made again at the next `up`.",
    inputs=OverlayDiskArgs,
    outputs=OverlayDiskState,
    lifecycle=on_host("OverlayDisk", lifecycles.OverlayDisk()),
    derive=_with_size_in_bytes,
)

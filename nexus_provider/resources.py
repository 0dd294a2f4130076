"""Every resource of the `nexus` package, in one place: the provider and its schema read this."""

from __future__ import annotations

from .host import base_image, cloud_init_seed, overlay_disk, qemu_vm, ssh_key, state_dir
from .spec import ResourceSpec

RESOURCES: tuple[ResourceSpec, ...] = (
    state_dir.RESOURCE,
    base_image.RESOURCE,
    ssh_key.RESOURCE,
    overlay_disk.RESOURCE,
    cloud_init_seed.RESOURCE,
    qemu_vm.RESOURCE,
)

DESCRIPTION = (
    "A nested-virtualization lab on your own machine: a QEMU VM with Docker and KVM, a container in it "
    "and a VM inside that container. The host layer's resources so far; the guest layers and a Lab "
    "component follow (issue 14)."
)

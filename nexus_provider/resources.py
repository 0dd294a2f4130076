"""Every resource and component of the `nexus` package, in one place: the provider and schema read this."""

from __future__ import annotations

from .host import base_image, cloud_init_seed, overlay_disk, qemu_vm, ssh_key, state_dir
from .lab import COMPONENT as LAB
from .spec import ComponentSpec, ResourceSpec

RESOURCES: tuple[ResourceSpec, ...] = (
    state_dir.RESOURCE,
    base_image.RESOURCE,
    ssh_key.RESOURCE,
    overlay_disk.RESOURCE,
    cloud_init_seed.RESOURCE,
    qemu_vm.RESOURCE,
)

COMPONENTS: tuple[ComponentSpec, ...] = (LAB,)

DESCRIPTION = (
    "A nested-virtualization lab on your own machine: a QEMU VM with Docker and KVM, a container in it "
    "and a VM inside that container. So far: the host layer's resources (nexus:host:*) and the Lab "
    "component that wires them into a running VM; the guest layers follow (issue 14)."
)

"""Every resource and component of the `nexus` package, in one place: the provider and schema read this."""

from __future__ import annotations

from .guest import (
    container_preflight,
    container_presence,
    docker_daemon,
    inner_image_copy,
    inner_qemu,
    script_file,
    tarball_image,
)
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
    docker_daemon.RESOURCE,
    container_preflight.RESOURCE,
    container_presence.RESOURCE,
    tarball_image.RESOURCE,
    inner_image_copy.RESOURCE,
    inner_qemu.RESOURCE,
    script_file.RESOURCE,
)

COMPONENTS: tuple[ComponentSpec, ...] = (LAB,)

DESCRIPTION = (
    "A nested-virtualization lab on your own machine: a QEMU VM with Docker and KVM, a container in it "
    "and a VM inside that container. The Lab component wires the host layer's resources (nexus:host:*), "
    "the guest layers' (nexus:guest:*) and pulumi-docker's container into a running lab."
)

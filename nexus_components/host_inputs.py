"""The inputs of the host layer's resources, built from the stack's configuration.

The nexus plugin's Lab (nexus_provider/lab.py) builds its host resources' inputs here, from
the same settings the stack's `nexus:` keys are checked against.
"""

from __future__ import annotations

from typing import Any

from .config import NexusConfig
from .host import mounts as host_mounts

Props = dict[str, Any]


def base_image_inputs(config: NexusConfig, qemu_img: str) -> Props:
    return {
        "url": config.image.url,
        "sha256": config.image.sha256,
        "cache_dir": str(config.cache_dir),
        # Not part of the image's identity: the image checks that the disk can hold it.
        "disk_size": config.vm.disk_size,
        "qemu_img": qemu_img,
    }


def ssh_key_inputs(config: NexusConfig) -> Props:
    return {
        # This machine's: for a lab on a remote host too (the server gets a copy for its steps).
        "state_dir": str(config.key_dir),
        "comment": f"nexus-{config.stack}",
        "private_key_file": config.guest.ssh_private_key_file,
        "public_key_file": config.guest.ssh_public_key_file,
    }


def cloud_init_seed_inputs(config: NexusConfig, public_key: Any) -> Props:
    guest = config.guest
    return {
        "state_dir": str(config.state_dir),
        "username": guest.username,
        "hostname": guest.hostname,
        "arch": config.vm.arch,
        "install_packages": guest.install_packages,
        # A reverse-sshfs share needs sshfs in the VM: the seed installs it with the rest.
        "packages": list(dict.fromkeys([*guest.packages, *host_mounts.guest_packages(config.mounts)])),
        "user_data": dict(guest.user_data),
        "public_key": public_key,
    }

"""The host layer's settings: the image, the VM, its network and its guest login.

Plain frozen dataclasses, filled in by the stack configuration (`nexus_components.config`,
which composes these with the guest layers' settings) or by the provider's Lab; the host
modules take these and nothing above them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_components.core.errors import ConfigError
from nexus_components.host.remote import RemoteHost

UBUNTU_2404_AMD64 = (
    "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img"
)
UBUNTU_2404_ARM64 = (
    "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-arm64.img"
)

# The guest's sshd: nexus:network.sshPort forwards to it, and the guest layers reach the VM through it.
GUEST_SSH_PORT = 22


@dataclass(frozen=True)
class PortForward:
    host: int
    guest: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ImageConfig:
    url: str
    sha256: str | None


@dataclass(frozen=True)
class VmConfig:
    name: str
    arch: str
    cpus: int
    memory_mib: int
    disk_size: str
    accelerator: str
    machine: str | None
    cpu_model: str | None
    qemu_binary: str | None
    qemu_img_binary: str
    firmware_code: str | None
    firmware_vars: str | None
    boot_timeout_seconds: int
    state: str = "running"  # or "suspended" (nexus:vm.state)


@dataclass(frozen=True)
class NetworkConfig:
    bind_address: str
    ssh_port: int
    forwards: tuple[PortForward, ...]
    # Only used on Windows, whose QEMU cannot put QMP on a UNIX socket.
    qmp_port: int = 4444

    @property
    def ssh_host(self) -> str:
        """Where the host reaches the forwarded SSH port."""
        return "127.0.0.1" if self.bind_address == "0.0.0.0" else self.bind_address

    def all_forwards(self) -> tuple[PortForward, ...]:
        """SSH first, then the extra forwards: the order QEMU gets them in."""
        return (PortForward(self.ssh_port, GUEST_SSH_PORT), *self.forwards)

    def keyed_forwards(self) -> list[tuple[str, PortForward]]:
        """Each forward with the config key that sets its host port, for error messages."""
        keys = ["nexus:network.sshPort"] + [
            f"nexus:network.forwards[{i}].host" for i in range(len(self.forwards))
        ]
        return list(zip(keys, self.all_forwards(), strict=True))


@dataclass(frozen=True)
class GuestConfig:
    username: str
    hostname: str
    ssh_public_key_file: str | None
    ssh_private_key_file: str | None
    install_packages: bool
    packages: tuple[str, ...]
    user_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostConfig:
    """Everything the host layer needs for one stack's VM."""

    stack: str
    image: ImageConfig
    vm: VmConfig
    network: NetworkConfig
    guest: GuestConfig
    state_dir: Path  # where QEMU's files are: on the server, for a lab on a remote host
    cache_dir: Path
    # The server the lab runs on (nexus:host); None: this machine.
    host: RemoteHost | None = None
    # A lab on a remote host keeps its key pair and connect scripts here, on this machine,
    # and downloads what the guest layers copy into the VM (the inner VM's image) here.
    local_dir: Path | None = None
    local_cache: Path | None = None

    @property
    def key_dir(self) -> Path:
        """Where the stack's key pair and the connect scripts the user runs are written."""
        return self.local_dir or self.state_dir

    @property
    def local_cache_dir(self) -> Path:
        """The image cache on this machine (the guest layers' downloads)."""
        return self.local_cache or self.cache_dir


def default_image_url(arch: str) -> str:
    return UBUNTU_2404_ARM64 if arch == "aarch64" else UBUNTU_2404_AMD64


def disk_size_bytes(size: str) -> int:
    """'20G' -> bytes, with QEMU's binary units."""
    units = {"M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(size[:-1]) * units[size[-1]]


def check_disk_fits_base(disk_size: str, base_virtual_size: int) -> None:
    """The overlay cannot be smaller than the image under it; known once the image is cached."""
    if disk_size_bytes(disk_size) < base_virtual_size:
        at_least = -(-base_virtual_size // (1 << 30))
        raise ConfigError(
            f"nexus:vm.diskSize: got {disk_size!r}, smaller than the base image's own disk size "
            f"({base_virtual_size} bytes); allowed: at least {at_least}G",
            hint=f"set nexus:vm.diskSize to {at_least}G or more",
        )

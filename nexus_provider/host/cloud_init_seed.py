"""nexus:host:CloudInitSeed, the VM's NoCloud seed ISO."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from nexus_components.host import lifecycles

from ..spec import ResourceSpec, absolute_path, prop
from .connection import HostConnection, host_input, on_host


class Arch(Enum):
    """The guest's CPU architecture."""

    X86_64 = "x86_64"
    AARCH64 = "aarch64"


@dataclass(frozen=True)
class CloudInitSeedArgs:
    state_dir: str = absolute_path(
        "The stack's directory, where the seed is written (`cidata.iso`, and `user-data.yaml` to read)."
    )
    username: str = prop("The login user cloud-init creates, with `publicKey` authorised and sudo.")
    hostname: str = prop("The guest's host name.")
    arch: Arch = prop("The guest's architecture, which picks the packages' names.")
    install_packages: bool = prop(
        "Install the lab's packages in the guest (docker.io, qemu, libvirt, cpu-checker)."
    )
    packages: list[str] = prop("More packages to install.")
    user_data: dict[str, Any] = prop("More cloud-config, merged into the generated one.")
    public_key: str = prop("The public key authorised for `username` (SshKey's `publicKey`).")
    host: HostConnection | None = host_input()


@dataclass(frozen=True)
class CloudInitSeedState:
    instance_id: str = prop(
        "cloud-init's instance id, derived from the user-data: a changed seed makes cloud-init run again."
    )


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:CloudInitSeed",
    description="The VM's cloud-init seed: user-data and meta-data on a NoCloud ISO (label `cidata`), "
    "written in pure Python. A change rewrites it, and the VM that uses it restarts.",
    inputs=CloudInitSeedArgs,
    outputs=CloudInitSeedState,
    lifecycle=on_host("CloudInitSeed", lifecycles.CloudInitSeed()),
)

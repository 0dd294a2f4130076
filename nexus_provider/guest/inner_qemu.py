"""nexus:guest:InnerQemu, the inner VM: QEMU inside the playground container."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nexus_components.core.lifecycle import Props
from nexus_components.guest import lifecycles

from ..settings import setting
from ..spec import Failure, ResourceSpec, port, prop
from .access import VmAccess


class InnerAccelerator(Enum):
    """How the inner VM's QEMU runs its CPU. auto: KVM when a tiny probe guest boots with it in the
    container, else tcg; kvm fails instead of falling back."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class InnerImageSource:
    """Where the inner VM's cloud image came from (the stack setting nexus:innerVm.image)."""

    url: str = prop("An http(s) URL, a file:// URL or a path on this machine.")
    sha256: str | None = prop("Its expected SHA-256, if one was given.")


@dataclass(frozen=True)
class BootImage:
    """The cloud image's copy in the VM (InnerImageCopy's outputs), which the container mounts read-only."""

    path: str = prop("The copy's path in the VM and in the container (InnerImageCopy's `vmPath`).")
    format: str = prop("qcow2 or raw (InnerImageCopy's `format`).", pattern="qcow2|raw", rule="qcow2 or raw")
    digest: str = prop("The image's SHA-256 (InnerImageCopy's `digest`).")


@dataclass(frozen=True)
class ContainerPortToGuest:
    """A container port QEMU forwards to a port of the inner VM."""

    container: int = port("The port in the container.")
    guest: int = port("The port in the inner VM.")


@dataclass(frozen=True)
class InnerShareSpec:
    """A folder of the container the inner QEMU serves over 9p (a nexus:mounts entry with innerVm)."""

    tag: str = prop("The 9p mount tag the inner VM mounts it by (nexus<index in nexus:mounts>).")
    source: str = prop("The folder in the container (the mount's container path).")
    path: str = prop("Where the inner VM mounts it (its seed does with bootImage).")
    read_only: bool | None = prop(
        "QEMU refuses writes (readonly=on) and the seed mounts it ro; unset: false."
    )


@dataclass(frozen=True)
class InnerQemuArgs(VmAccess):
    container: str = setting("The playground container it runs in.", "playground", "name")
    container_id: str = prop("The container's id: a new container starts the inner VM again.")
    name: str = setting("The inner VM's name: its directory in the container.", "innerVm", "name")
    cpus: int = setting("vCPUs.", "innerVm", "cpus")
    memory_mib: int = setting("Memory in MiB.", "innerVm", "memoryMiB")
    disk_size: str = setting(
        "Its disk's size (a qcow2 in a volume of the container; with bootImage, an overlay on the image).",
        "innerVm",
        "diskSize",
    )
    accelerator: InnerAccelerator = prop("The accelerator asked for.")
    kernel: str | None = setting("A kernel to boot directly (a path in the container).", "innerVm", "kernel")
    initrd: str | None = setting("The kernel's initrd (a path in the container).", "innerVm", "initrd")
    kernel_args: str = setting("The kernel's command line.", "innerVm", "kernelArgs")
    iso: str | None = setting("An ISO to boot from (a path in the container).", "innerVm", "iso")
    image: InnerImageSource | None = prop("The cloud image's source, with bootImage.")
    boot_image: BootImage | None = prop("A cloud image to boot: an overlay disk on the copy, and a seed.")
    ssh_public_key: str | None = prop("With bootImage: the public key the seed puts on the login user.")
    username: str = setting("With bootImage: the image's login user.", "innerVm", "username")
    hostname: str | None = setting("With bootImage: its host name; unset: its name.", "innerVm", "hostname")
    forwards: list[ContainerPortToGuest] = prop("Container ports QEMU forwards to the inner VM's ports.")
    powerdown_timeout_seconds: int = setting(
        "How long `destroy` (or a restart) waits for an ACPI powerdown before QMP quit, then kill.",
        "innerVm",
        "powerdownTimeoutSeconds",
    )
    boot_timeout_seconds: int = setting(
        "How long `up` waits for QMP `running` (with bootImage, also its cloud-init and sshd).",
        "innerVm",
        "bootTimeoutSeconds",
    )
    shares: list[InnerShareSpec] | None = prop(
        "Container folders shared into the inner VM over 9p (nexus:mounts' innerVm); a change restarts it."
    )


@dataclass(frozen=True)
class InnerQemuState:
    chosen_accelerator: str = prop("The accelerator it runs with: kvm or tcg (what auto chose).")
    pid: int = prop("QEMU's process id in the container (0 when `refresh` found it not running).")
    qmp_status: str = prop("What QMP's query-status reported: running once ready.")
    ready_seconds: float = prop("How long it took to be ready.")


BOOT_MEDIA = ("bootImage", "kernel", "iso")


def _one_boot_medium(props: Props) -> list[Failure]:
    media = {
        "bootImage": props.get("boot_image"),
        "kernel": props.get("kernel"),
        "iso": props.get("iso"),
    }
    given = [name for name, value in media.items() if value]
    allowed = "exactly one boot medium: " + ", ".join(BOOT_MEDIA)
    failures = []
    if len(given) != 1:
        where = given[1] if given else "bootImage"
        got = "also " + " and ".join(given) if given else "none set"
        failures.append(Failure(where, f"{got}; allowed: {allowed}"))
    if props.get("initrd") and not props.get("kernel"):
        failures.append(
            Failure("initrd", f"got {props['initrd']!r} without kernel; allowed: an initrd with a kernel")
        )
    if props.get("boot_image") and not props.get("ssh_public_key"):
        failures.append(
            Failure("sshPublicKey", "missing with bootImage; allowed: the public key its seed carries")
        )
    return failures


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:InnerQemu",
    description="The inner VM: QEMU inside the playground container (KVM when a probe guest boots with it "
    "there, else TCG), ready when QMP reports running; booting a cloud image, also when its cloud-init is "
    "done and its sshd answers. `preview` shows it dead or its container new as a restart; `destroy` powers "
    "it off (ACPI, then QMP quit, then kill), or leaves it to the VM's shutdown when the VM does not answer.",
    inputs=InnerQemuArgs,
    outputs=InnerQemuState,
    lifecycle=lifecycles.InnerVm(),
    checks=_one_boot_medium,
)

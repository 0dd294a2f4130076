"""What the playground layer hands to pulumi-docker and its guest steps, as plain values.

The container itself is a pulumi-docker `Container` (the ecosystem's provider for it);
this module turns `PlaygroundConfig` into its arguments, and writes the commands of the
guest steps (`docker import` or `docker load` of a streamed tarball, as argument lists;
growing the root file system, a fixed script). No Pulumi import; unit-tested directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from nexus_components.core.runner import sharing_options
from nexus_components.core.ssh import CLIENT_OPTIONS, CONNECT_TIMEOUT_SECONDS, KEEPALIVE_OPTIONS, SshTarget

from .inner_vm import IMAGES_DIR, VOLUME_MOUNT
from .settings import PlaygroundConfig, PublishedPort, Volume

KVM_DEVICE = "/dev/kvm"


def ssh_options(target: SshTarget) -> list[str]:
    """pulumi-docker's `sshOpts`: the key by path (never its content), no host-key pinning
    (the VM's host key changes whenever it is recreated; see ssh.py), and the connection
    the other guest steps share. Bounded: a VM that stops answering fails the call
    instead of hanging it."""
    return [
        *sharing_options(target),
        *target.proxy_options(),
        "-i",
        str(target.private_key),
        *CLIENT_OPTIONS,
        *KEEPALIVE_OPTIONS,
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT_SECONDS}",
    ]


# The container carries this label, whose value is the presence check's id: a container
# removed behind the stack's back gets a new presence, hence a new label, which has
# pulumi-docker create it anew (labels force a new container).
PRESENCE_LABEL = "dev.nexus-nested-vm.generation"
# The container and its volume carry the VM disk's identity: a disk made anew (a new
# base image, a disk file deleted by hand) holds neither, so they are made anew on it.
DISK_LABEL = "dev.nexus-nested-vm.disk"


def container_state(container: str) -> list[str]:
    """Prints `<running> <disk label>` (`true <disk id>` while ours runs); fails when there
    is no such container. Read by `read_container_state`."""
    return [
        "docker",
        "inspect",
        "--type",
        "container",
        "--format",
        "{{.State.Running}} {{index .Config.Labels " + f'"{DISK_LABEL}"' + "}}",
        container,
    ]


# What `read_container_state` makes of the answer.
RUNNING = "running"  # a container this product made runs
STOPPED = "stopped"  # it exists but does not run (`docker stop`, or it exited)
GONE = "gone"  # no container by that name
FOREIGN = "foreign"  # one by that name that this product did not make
NO_ANSWER = "no answer"  # the daemon did not answer (stopped, or no access)


def read_container_state(returncode: int, output: str) -> str:
    if returncode != 0:
        return GONE if "No such container" in output or "No such object" in output else NO_ANSWER
    first_line = (output.strip().splitlines() or [""])[0]
    running, _, label = first_line.partition(" ")
    if not label.strip():
        return FOREIGN
    return RUNNING if running == "true" else STOPPED


def start_container(container: str) -> list[str]:
    return ["docker", "start", container]


def containers_named(container: str) -> list[str]:
    """Prints `<id> <disk label>` per container named exactly `container`; the label part
    is empty for a container this product did not make."""
    return [
        "docker",
        "ps",
        "--all",
        "--filter",
        f"name=^/{re.escape(container)}$",
        "--format",
        "{{.ID}} {{.Label " + f'"{DISK_LABEL}"' + "}}",
    ]


def split_by_maker(listing: str) -> tuple[list[str], list[str]]:
    """The ids in a `containers_named` listing: (made by this product, made by someone else)."""
    ours: list[str] = []
    theirs: list[str] = []
    for line in listing.splitlines():
        container_id, _, label = line.strip().partition(" ")
        if container_id:
            (ours if label.strip() else theirs).append(container_id)
    return ours, theirs


def remove_containers(ids: list[str]) -> list[str]:
    return ["docker", "rm", "--force", "--volumes", *ids]


def env_list(env: Mapping[str, str]) -> list[str]:
    """docker's `NAME=value` form; the value is passed through the API, never a shell."""
    return [f"{name}={value}" for name, value in sorted(env.items())]


def inner_vm_volume(container: str) -> Volume:
    return Volume(f"{container}-inner-vm", str(VOLUME_MOUNT))


def inner_images_volume() -> Volume:
    """The VM's copies of the inner VM's cloud images, read-only at the same path."""
    return Volume(str(IMAGES_DIR), str(IMAGES_DIR), read_only=True)


def all_volumes(config: PlaygroundConfig, *, inner_vm: bool) -> tuple[Volume, ...]:
    if not inner_vm:
        return config.volumes
    return (*config.volumes, inner_vm_volume(config.name), inner_images_volume())


def devices(config: PlaygroundConfig, *, pass_kvm: bool) -> list[str]:
    """The user's devices, plus /dev/kvm when the inner VM can use it."""
    chosen = list(config.devices)
    if pass_kvm and KVM_DEVICE not in chosen:
        chosen.append(KVM_DEVICE)
    return chosen


def settings_digest(config: PlaygroundConfig) -> str:
    """A digest of the container's settings that pulumi-docker alone applies (neither the
    preflight's ports and devices nor the image cover them)."""
    settings = {
        "env": dict(sorted(config.env.items())),
        "command": list(config.command),
        "volumes": [[v.source, v.target, v.read_only] for v in config.volumes],
        "restart": config.restart,
        "privileged": config.privileged,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def ports_by_container_port(ports: tuple[PublishedPort, ...]) -> dict[int, int]:
    return {port.container: port.vm for port in ports if port.protocol == "tcp"}


def file_digest(path: Path) -> str:
    """SHA-256 of a tarball: a changed file (by content, not date) makes a new image."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """SHA-256 over a build context's file names, modes and contents, in a stable order."""
    digest = hashlib.sha256()
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            digest.update(relative.encode() + b"\0" + oct(path.stat().st_mode & 0o777).encode() + b"\0")
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            else:
                digest.update(bytes.fromhex(file_digest(path)))
    return digest.hexdigest()


# An image archive (`docker save`) or a root-file-system tar is streamed over SSH into one
# of these, reading stdin: nothing is copied into the VM's file system, so nothing is left
# there whether the import succeeds or fails.
LOAD_IMAGE = ("docker", "load", "--quiet")
_LOADED = re.compile(r"^Loaded image(?: ID)?: (\S+)\s*$", re.MULTILINE)


def tarball_tag(container: str, digest: str) -> str:
    """The tag of an imported tarball's image: one per content, so a superseded import
    removes only its own."""
    return f"nexus/{container.lower()}:tarball-{digest[:16]}"


def import_rootfs(tag: str) -> list[str]:
    return ["docker", "import", "-", tag]


def loaded_image(load_output: str) -> str | None:
    """The last image `docker load` names ("Loaded image: web:1", "Loaded image ID: sha256:...")."""
    names = _LOADED.findall(load_output)
    return names[-1] if names else None


def tag_image(image: str, tag: str) -> list[str]:
    return ["docker", "tag", image, tag]


def image_id(reference: str) -> list[str]:
    """Prints the image's id; fails (`No such image`) when there is none by that reference."""
    return ["docker", "image", "inspect", "--format", "{{.Id}}", reference]


def remove_image(reference: str) -> list[str]:
    return ["docker", "image", "rm", "--force", reference]


def shell_script(target: SshTarget, container: str, shell: str = "sh") -> str:
    """A script beside connect-ssh.sh that opens a shell in the container, through SSH."""
    # -t: `docker exec -it` needs a terminal on the VM's side too.
    ssh = "ssh -t " + target.interactive_command().removeprefix("ssh ")
    inner = shlex.join(["docker", "exec", "-it", container, shell])
    return (
        "#!/bin/sh\n# Written by nexus-nested-vm: opens a shell in the playground container.\n"
        f"exec {ssh} {shlex.quote(inner)}\n"
    )

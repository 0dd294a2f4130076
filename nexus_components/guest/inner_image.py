"""The inner VM booted from a cloud image: the image's place in the VM, its seed, its reach.

    host cache (download.py)  --ssh, once per digest-->  VM /var/lib/nexus/images/<digest>.<fmt>
        --bind mount, read-only-->  container, same path  --backing file of-->  the inner VM's disk.qcow2

The inner VM gets its own NoCloud seed (the stack's SSH key on its login user), written
into the container next to its disk and attached as a read-only disk. Ready means its cloud-init
printed INNER_READY_LINE on the serial console and, when it has an SSH forward, its sshd
answers on that container port. `connect-inner-vm.sh` reaches that sshd through the VM,
as a jump host. No Pulumi import; unit-tested directly.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from nexus_components.core import cloudinit, seed_iso
from nexus_components.core.runner import CommandRunner, output_tail, unreachable, wait_for
from nexus_components.core.ssh import CLIENT_OPTIONS, SshTarget
from nexus_components.host.mounts import inner_fstab_script

from .inner_vm import IMAGES_DIR, InnerVmPaths, in_container
from .settings import InnerVmConfig, PortToGuest

QCOW2_MAGIC = b"QFI\xfb"
FORMATS = ("qcow2", "raw")
# The inner cloud-init's final message: the serial console shows it when the guest is set up.
INNER_READY_LINE = "nexus inner VM is ready:"
INNER_FINAL_MESSAGE = INNER_READY_LINE + " cloud-init $VERSION finished after $UPTIME seconds"
SSH_PORT = 22
BANNER_TIMEOUT_SECONDS = 10


def image_format(header: bytes) -> str:
    """qcow2 by its magic number, anything else is a raw disk image."""
    return "qcow2" if header.startswith(QCOW2_MAGIC) else "raw"


def detect_format(path: Path) -> str:
    with path.open("rb") as stream:
        return image_format(stream.read(len(QCOW2_MAGIC)))


@dataclass(frozen=True)
class BootImage:
    """The copied cloud image, as a path valid in the VM and (read-only) in the container."""

    path: str
    format: str
    digest: str

    @classmethod
    def of(cls, digest: str, fmt: str) -> BootImage:
        if fmt not in FORMATS:
            raise ValueError(f"unknown image format {fmt!r}; expected one of {FORMATS}")
        return cls(str(IMAGES_DIR / f"{digest}.{fmt}"), fmt, digest)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> BootImage | None:
        if not spec:
            return None
        return cls(str(spec["path"]), str(spec["format"]), str(spec["digest"]))


def prepare_images_dir_argv(username: str) -> list[str]:
    """IMAGES_DIR in the VM, writable by the login user, who streams the image into it."""
    script = 'sudo -n mkdir -p -- "$1" && sudo -n chown -- "$2" "$1"'
    return ["sh", "-c", script, "sh", str(IMAGES_DIR), username]


def receive_argv(path: str) -> list[str]:
    """Stdin to `path` in the VM; under its final name only once complete."""
    return ["sh", "-c", 'cat > "$1.partial" && mv -f -- "$1.partial" "$1"', "sh", path]


def size_argv(path: str) -> list[str]:
    return ["stat", "-c", "%s", "--", path]


def same_size(stat_output: str, size: object) -> bool:
    """`stat -c %s` in the VM against the size in the state (Pulumi keeps numbers as floats)."""
    try:
        return int(stat_output.strip()) == int(float(str(size)))
    except ValueError:
        return False


def remove_argv(path: str) -> list[str]:
    return ["sudo", "-n", "rm", "-f", "--", path, f"{path}.partial"]


def create_overlay(
    container: str, disk: PurePosixPath, backing_record: PurePosixPath, image: BootImage, size: str
) -> list[str]:
    """The inner VM's disk: a qcow2 overlay on the image, kept while the image stays the same.

    `backing_record` (InnerVmPaths.disk_backing) names the image the disk was made on; a
    disk on another image (or a blank one) is replaced. Values are positional parameters of
    a fixed script, never pasted into it.
    """
    script = (
        'if [ "$(cat "$2" 2>/dev/null)" != "$3" ]; then rm -f "$1" "$2"; fi; '
        'test -e "$1" || { qemu-img create -q -f qcow2 -b "$3" -F "$4" "$1" "$5" && printf %s "$3" > "$2"; }'
    )
    words = [str(disk), str(backing_record), image.path, image.format, size]
    return in_container(container, ["sh", "-c", script, "sh", *words])


@dataclass(frozen=True)
class InnerSeed:
    user_data: str
    meta_data: str
    instance_id: str


def render_seed(config: InnerVmConfig, ssh_public_key: str) -> InnerSeed:
    """user-data and meta-data of the inner VM: its login user with the stack's key, no packages.

    The instance id is derived from the content, so a changed seed makes cloud-init run again.
    """
    if not ssh_public_key.strip():
        raise ValueError("the inner VM's seed needs the stack's SSH public key")
    spec = cloudinit.CloudInitSpec(
        username=config.username,
        ssh_public_key=ssh_public_key,
        hostname=config.guest_hostname,
        guest_arch="x86_64",
        install_packages=False,
        extra_user_data={"final_message": INNER_FINAL_MESSAGE} | _share_user_data(config),
    )
    user_data = cloudinit.render_user_data(spec)
    instance_id = cloudinit.instance_id_for(user_data, config.guest_hostname)
    meta_data = cloudinit.render_meta_data(instance_id=instance_id, hostname=config.guest_hostname)
    return InnerSeed(user_data, meta_data, instance_id)


def _share_user_data(config: InnerVmConfig) -> dict[str, Any]:
    """bootcmd runs at every boot (runcmd only once per instance): the shares are written to
    fstab and mounted again after each start, and a changed share takes its new path. None
    without shares, so a seed without them stays as it was (its instance id too)."""
    if not config.shares:
        return {}
    return {"bootcmd": [["sh", "-c", inner_fstab_script(config.shares)]]}


def seed_iso_bytes(seed: InnerSeed) -> bytes:
    """The NoCloud ISO (label `cidata`), built on this machine and streamed into the container."""
    with tempfile.TemporaryDirectory(prefix="nexus-inner-seed-") as scratch:
        path = Path(scratch) / "seed.iso"
        seed_iso.write_seed_iso(
            path, {"user-data": seed.user_data.encode(), "meta-data": seed.meta_data.encode()}
        )
        return path.read_bytes()


def ssh_forward(config: InnerVmConfig) -> PortToGuest | None:
    """The forward that reaches the inner VM's sshd (container port -> guest 22), if any."""
    return next((forward for forward in config.forwards if forward.guest == SSH_PORT), None)


# --------------------------------------------------------------------------- readiness


class VmSilent(Exception):
    """The VM stopped answering while the inner VM booted."""


class GuestStuck(Exception):
    """The inner guest printed its ready line, then its sshd stayed silent: it stalls."""


def ready_line_argv(container: str, serial_log: PurePosixPath) -> list[str]:
    """Exit status 0 once the serial console holds the inner cloud-init's final message."""
    return in_container(container, ["grep", "-q", "-F", "--", INNER_READY_LINE, str(serial_log)])


def ssh_banner_argv(container: str, port: int) -> list[str]:
    """Connects to the forwarded port inside the container; sshd greets first with `SSH-2.0-...`."""
    return in_container(container, ["socat", f"-T{BANNER_TIMEOUT_SECONDS}", "-", f"TCP:127.0.0.1:{port}"])


def is_ssh_banner(output: str) -> bool:
    return any(line.startswith("SSH-") for line in output.splitlines())


# What `guest_missing` says when the probe itself did not reach the VM.
VM_SILENT = "the VM does not answer over SSH"
# ... and, in front of the port, when the guest's sshd does not greet.
SSHD_SILENT = "its sshd does not answer on container port"
# sshd starts before cloud-init's last stage prints the ready line. A guest whose sshd stays
# silent this long after it has stopped making progress (nested virtualization under an
# emulated CPU can stall so); its QEMU restarted, it boots on.
SSHD_AFTER_READY_SECONDS = 240.0
# A VM that misses this many probes in a row has stopped answering (it hangs), and no
# inner guest will become ready in it: the wait ends instead of running out its bound.
SILENT_PROBES_TO_GIVE_UP = 2


def guest_missing(runner: CommandRunner, container: str, config: InnerVmConfig) -> str | None:
    """What the booted image still lacks to be usable, or None when it is ready."""
    paths = InnerVmPaths(config.name)
    ready = runner.run(ready_line_argv(container, paths.serial_log), timeout=60)
    if unreachable(ready):
        return VM_SILENT
    if not ready.ok:
        return f"its cloud-init has not printed {INNER_READY_LINE!r} on the serial console yet"
    forward = ssh_forward(config)
    if forward is None:
        return None
    banner = runner.run(ssh_banner_argv(container, forward.container), timeout=BANNER_TIMEOUT_SECONDS + 30)
    if not is_ssh_banner(banner.stdout):
        shown = output_tail(banner.output, 3) or "no answer"
        return f"{SSHD_SILENT} {forward.container} yet ({shown})"
    return None


def give_up_when_silent(probe: Callable[[], str | None]) -> Callable[[], str | None]:
    """A readiness probe that raises VmSilent once `probe` has said VM_SILENT
    SILENT_PROBES_TO_GIVE_UP times in a row: no wait for the inner VM outlasts its VM."""
    silent_in_a_row = 0

    def watched() -> str | None:
        nonlocal silent_in_a_row
        missing = probe()
        silent_in_a_row = silent_in_a_row + 1 if missing == VM_SILENT else 0
        if silent_in_a_row >= SILENT_PROBES_TO_GIVE_UP:
            raise VmSilent(f"{VM_SILENT} ({silent_in_a_row} probes in a row)")
        return missing

    return watched


def give_up_when_stuck(
    probe: Callable[[], str | None],
    *,
    after_seconds: float = SSHD_AFTER_READY_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], str | None]:
    """A readiness probe that raises GuestStuck once `probe` has said SSHD_SILENT (the ready
    line is there, sshd is not) for `after_seconds` in a row."""
    silent_since: float | None = None

    def watched() -> str | None:
        nonlocal silent_since
        missing = probe()
        if missing is None or not missing.startswith(SSHD_SILENT):
            silent_since = None
            return missing
        now = clock()
        silent_since = now if silent_since is None else silent_since
        if now - silent_since >= after_seconds:
            silent = f"{now - silent_since:.0f} s"
            raise GuestStuck(f"its cloud-init finished, but {missing.removeprefix('its ')} after {silent}")
        return missing

    return watched


def wait_for_guest(
    runner: CommandRunner,
    container: str,
    config: InnerVmConfig,
    *,
    timeout: float,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[float, str | None]:
    """Poll until `guest_missing` is None or the time is up; (seconds, what was missing).

    Raises VmSilent when the VM stops answering the probes, GuestStuck when the guest does.
    """
    return wait_for(
        give_up_when_silent(give_up_when_stuck(lambda: guest_missing(runner, container, config))),
        timeout=timeout,
        poll_seconds=3.0,
        log=log,
        waiting_for="the inner VM's cloud-init and sshd",
    )


# --------------------------------------------------------------------------- reaching it


def jump_command(
    vm: SshTarget, container: str, forward: PortToGuest, vm_ports: Mapping[int, int]
) -> list[str]:
    """The ssh into the VM that carries the inner ssh connection (a ProxyCommand).

    Through the VM port that publishes the forward (`-W`), else, unpublished, through
    `docker exec ... socat` into the container.
    """
    jump = [
        "ssh",
        *CLIENT_OPTIONS,
        *vm.proxy_options(),
        "-i",
        str(vm.private_key),
        "-p",
        str(vm.port),
        f"{vm.user}@{vm.host}",
    ]
    vm_port = vm_ports.get(forward.container)
    if vm_port is not None:
        return [*jump, "-W", f"127.0.0.1:{vm_port}"]
    relay = ["docker", "exec", "-i", container, "socat", "-", f"TCP:127.0.0.1:{forward.container}"]
    return [*jump, "--", shlex.join(relay)]


def shell_argv(
    vm: SshTarget, container: str, config: InnerVmConfig, vm_ports: Mapping[int, int]
) -> list[str]:
    """ssh into the inner VM with the stack's key, the VM as jump host; None-free argv."""
    forward = ssh_forward(config)
    if forward is None:
        raise ValueError("the inner VM has no SSH forward")
    # ssh runs ProxyCommand through a shell after expanding %-tokens: quote it, double each %.
    proxy = shlex.join(jump_command(vm, container, forward, vm_ports)).replace("%", "%%")
    return [
        "ssh",
        *CLIENT_OPTIONS[2:],  # interactive: no BatchMode, so a host-key or password prompt can show
        "-i",
        str(vm.private_key),
        "-o",
        f"ProxyCommand={proxy}",
        f"{config.username}@{config.guest_hostname}",
    ]


def shell_script(vm: SshTarget, container: str, config: InnerVmConfig, vm_ports: Mapping[int, int]) -> str:
    """connect-inner-vm.sh: a shell (or the given command) in the inner VM."""
    header = (
        "#!/bin/sh\n"
        f"# Written by nexus-nested-vm: ssh into the inner VM {config.name!r} through the VM.\n"
        "# Usage: connect-inner-vm.sh [command...]\n"
    )
    forward = ssh_forward(config)
    if forward is None:
        console = shlex.join(
            ["docker", "exec", container, "tail", "-f", str(InnerVmPaths(config.name).serial_log)]
        )
        message = (
            f"the inner VM {config.name!r} has no SSH forward: add {{container: 2223, guest: 22}} to "
            "nexus:innerVm.forwards (and publish 2223 with nexus:playground.ports), then run pulumi up; "
            f"its serial console, in the VM: {console}"
        )
        return header + f"echo {shlex.quote(message)} >&2\nexit 1\n"
    if config.image is None:
        header += "# Its boot medium is not a cloud image: the stack's key works only if the guest has it.\n"
    return header + f'exec {shlex.join(shell_argv(vm, container, config, vm_ports))} "$@"\n'

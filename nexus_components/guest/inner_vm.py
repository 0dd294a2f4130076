"""The inner VM: every command the layer sends into the playground container, built here.

The inner VM is a QEMU process inside the container, started with `docker exec` over SSH
(the shared `CommandRunner`). Its files live in a volume of the container, named in one
place (`InnerVmPaths`, after `paths.VmPaths`). The accelerator is probed by booting a
512-byte guest with `-accel kvm` that writes to QEMU's `isa-debug-exit` port: only a
/dev/kvm that really runs guest code passes, an openable device node is not enough.
No Pulumi import; unit-tested directly.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from nexus_components.core.qemu_process import qmp_conversation, runtime_files
from nexus_components.core.qemu_process import qmp_reply as qmp_reply
from nexus_components.core.qemu_process import qmp_status as qmp_status
from nexus_components.host.mounts import inner_device_argv

from .settings import InnerVmConfig

if TYPE_CHECKING:
    from .inner_image import BootImage

# Where the container mounts the inner VM's volume.
VOLUME_MOUNT = PurePosixPath("/var/lib/nexus/inner-vm")
# Cloud images for the inner VM: copied here in the VM, bind-mounted read-only at the same
# path in the container (inner_image.py).
IMAGES_DIR = PurePosixPath("/var/lib/nexus/images")
QEMU_BINARY = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"

# The probe guest: `mov al, 0x21; out 0xf4, al; hlt; jmp $-1` as a boot sector. QEMU's
# isa-debug-exit device turns the write into exit status (0x21 << 1) | 1.
PROBE_CODE = bytes([0xB0, 0x21, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
PROBE_EXIT_STATUS = (0x21 << 1) | 1
PROBE_TIMEOUT_SECONDS = 60


def probe_boot_sector() -> bytes:
    return PROBE_CODE.ljust(510, b"\0") + b"\x55\xaa"


@dataclass(frozen=True)
class InnerVmPaths:
    """Every file of one inner VM, as paths inside the container."""

    name: str

    @property
    def dir(self) -> PurePosixPath:
        return VOLUME_MOUNT / self.name

    @property
    def disk(self) -> PurePosixPath:
        return self.dir / "disk.qcow2"

    @property
    def disk_backing(self) -> PurePosixPath:
        """The image an overlay disk was made on (only for a cloud-image boot)."""
        return self.dir / "disk.qcow2.backing"

    @property
    def seed_iso(self) -> PurePosixPath:
        """The inner VM's own NoCloud seed (only for a cloud-image boot)."""
        return self.dir / "seed.iso"

    @property
    def qmp_socket(self) -> PurePosixPath:
        return runtime_files(self.dir)[0]

    @property
    def serial_log(self) -> PurePosixPath:
        return self.dir / "serial.log"

    @property
    def pid_file(self) -> PurePosixPath:
        return runtime_files(self.dir)[1]

    @property
    def probe_image(self) -> PurePosixPath:
        return self.dir / "kvm-probe.img"

    def runtime_files(self) -> tuple[PurePosixPath, ...]:
        """Files that only exist while QEMU runs, named as the VM's own (qemu_process)."""
        return runtime_files(self.dir)


def _opt(value: object) -> str:
    """QEMU's option syntax: a comma inside a value is written twice."""
    return str(value).replace(",", ",,")


def build_inner_argv(config: InnerVmConfig, accelerator: str, boot: BootImage | None = None) -> list[str]:
    """The inner QEMU's command line, in the container (same layering as the VM's own).

    `boot` is the copied cloud image (config.image): the disk is an overlay on it and the
    inner VM's seed is a second, read-only disk.
    """
    paths = InnerVmPaths(config.name)
    argv = [
        QEMU_BINARY,
        "-name",
        f"{config.name},process=nexus-inner-{config.name}",
        "-machine",
        f"q35,accel={accelerator}",
        "-smp",
        str(config.cpus),
        "-m",
        f"{config.memory_mib}M",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        f"id=disk0,if=virtio,format=qcow2,file={_opt(paths.disk)}",
    ]
    if config.kernel:
        argv += ["-kernel", config.kernel]
        if config.initrd:
            argv += ["-initrd", config.initrd]
        argv += ["-append", config.kernel_args]
    elif boot is not None:
        # cloud-init finds the seed by its `cidata` label on any block device; a virtio disk
        # needs no CD-ROM driver, which cloud kernels often lack (as the VM's own seed).
        # virtio-rng: sshd's first start does not wait for entropy.
        argv += [
            "-drive",
            f"id=seed,if=virtio,format=raw,readonly=on,file={_opt(paths.seed_iso)}",
            "-device",
            "virtio-rng-pci",
        ]
    elif config.iso:
        argv += ["-drive", f"media=cdrom,readonly=on,file={_opt(config.iso)}", "-boot", "order=dc"]
    # nexus:mounts with innerVm: 9p devices for the container's view of them (any boot medium).
    argv += inner_device_argv(config.shares)
    forwards = [f"hostfwd=tcp::{f.container}-:{f.guest}" for f in config.forwards]
    argv += [
        "-netdev",
        ",".join(["user,id=net0", *forwards]),
        "-device",
        "virtio-net-pci,netdev=net0",
        "-serial",
        f"file:{paths.serial_log}",
        "-pidfile",
        str(paths.pid_file),
        "-qmp",
        f"unix:{_opt(paths.qmp_socket)},server=on,wait=off",
        "-daemonize",
    ]
    return argv


def probe_argv(accelerator: str, image: PurePosixPath) -> list[str]:
    """Boot the probe sector with `accelerator`; exits PROBE_EXIT_STATUS if guest code ran."""
    return [
        "timeout",
        str(PROBE_TIMEOUT_SECONDS),
        QEMU_BINARY,
        "-accel",
        accelerator,
        "-machine",
        "pc",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-drive",
        f"file={_opt(image)},format=raw,if=ide",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]


def in_container(container: str, argv: Sequence[str], *, stdin: bool = False) -> list[str]:
    """`docker exec` of an argument list (ssh then quotes every word for the VM's shell)."""
    return ["docker", "exec", *(["-i"] if stdin else []), container, *argv]


def write_file(container: str, path: PurePosixPath) -> list[str]:
    """Copy stdin to `path` in the container."""
    return in_container(container, ["dd", f"of={path}", "status=none"], stdin=True)


def make_dir(container: str, path: PurePosixPath) -> list[str]:
    return in_container(container, ["mkdir", "-p", str(path)])


def create_disk_if_missing(container: str, disk: PurePosixPath, size: str) -> list[str]:
    # Values are positional parameters of a fixed script, never pasted into it. An overlay
    # on a cloud image (it has a `.backing` record) is no disk for another boot medium.
    script = (
        'if [ -e "$1.backing" ]; then rm -f "$1" "$1.backing"; fi; '
        'test -e "$1" || qemu-img create -q -f qcow2 "$1" "$2"'
    )
    return in_container(container, ["sh", "-c", script, "sh", str(disk), size])


# Where the VM's cgroup v2 file system lists a Docker container's processes: under systemd's
# cgroup driver (Docker's default with systemd), then under the cgroupfs driver.
CGROUP_PROCS = (
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/cgroup.procs",
    "/sys/fs/cgroup/docker/{id}/cgroup.procs",
)
# qemu_runs_in's exit statuses (SSH's own failure is 255).
RUNS, DOES_NOT_RUN, PROCESS_LIST_NOT_FOUND = 0, 1, 2


def qemu_runs_in(container_id: str, pid_file: PurePosixPath) -> list[str]:
    """Exits RUNS when a process of the container runs this VM's QEMU (its command line names
    the pid file), DOES_NOT_RUN when none does, PROCESS_LIST_NOT_FOUND when the container's
    process list is not where Docker's cgroup drivers put it (then `running_pid` asks inside
    the container).

    Read from the VM's side, as the login user: no `docker exec`, which costs over a second
    under TCG (the Docker CLI, then runc entering the container), on every preview and up."""
    script = (
        'pid_file=$1; shift; for procs; do [ -r "$procs" ] || continue; '
        'while read -r pid; do grep -qF -- "$pid_file" "/proc/$pid/cmdline" 2>/dev/null && exit 0; '
        'done < "$procs"; exit 1; done; exit 2'
    )
    return ["sh", "-c", script, "sh", str(pid_file), *(path.format(id=container_id) for path in CGROUP_PROCS)]


def running_pid(container: str, pid_file: PurePosixPath) -> list[str]:
    """Prints the pid if the pid file names a live QEMU of this VM (its command line has the file)."""
    script = (
        'pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && grep -qF -- "$1" "/proc/$pid/cmdline" && echo "$pid"'
    )
    return in_container(container, ["sh", "-c", script, "sh", str(pid_file)])


def process_alive(container: str, pid_file: PurePosixPath, pid: int) -> list[str]:
    """Exits 0 while the process `pid` (a QEMU of this VM) has not ended: QEMU removes its
    pid file as it exits, before its threads let go of the disk, so the file cannot tell.
    A zombie has ended unless threads of it still run (as vm_process.process_alive)."""
    script = (
        'stat=$(cat "/proc/$2/stat" 2>/dev/null) || exit 1; state=${stat##*) }; '
        'if [ "${state%% *}" = Z ]; then set -- "/proc/$2/task/"*; [ "$#" -gt 1 ]; exit; fi; '
        'grep -qF -- "$1" "/proc/$2/cmdline"'
    )
    return in_container(container, ["sh", "-c", script, "sh", str(pid_file), str(pid)])


def kill_pid(container: str, pid: int, signum: int = 9) -> list[str]:
    """`kill -<signum>` (SIGKILL unless told; 15 is SIGTERM) in the container."""
    return in_container(container, ["kill", f"-{signum}", str(pid)])


def remove_files(container: str, paths: Sequence[PurePosixPath]) -> list[str]:
    return in_container(container, ["rm", "-rf", "--", *(str(path) for path in paths)])


def qmp_argv(container: str, socket: PurePosixPath) -> list[str]:
    """socat relays stdin to the QMP socket; -t1 waits a second for the replies after EOF."""
    return in_container(container, ["socat", "-t1", "-", f"UNIX-CONNECT:{socket}"], stdin=True)


# What is sent to the QMP socket, and read back, is written once in qemu_process; these
# are the names the inner VM's callers and tests use.
qmp_input = qmp_conversation


def serial_tail(container: str, serial_log: PurePosixPath, lines: int = 20) -> list[str]:
    return in_container(container, ["tail", "-n", str(lines), str(serial_log)])


def reach_hint(
    container: str, config: InnerVmConfig, vm_ports: dict[int, int], shell_script: str | None = None
) -> str:
    """How a user reaches the inner VM (the `innerVmReach` output)."""
    paths = InnerVmPaths(config.name)
    console = shlex.join(["docker", "exec", container, "tail", "-f", str(paths.serial_log)])
    hints = [f"serial console: {console}"]
    if shell_script is not None:
        has_ssh = any(forward.guest == 22 for forward in config.forwards)
        hints.insert(
            0,
            f"shell: {shell_script}" if has_ssh else f"shell: none, no SSH forward ({shell_script} says how)",
        )
    for forward in config.forwards:
        vm_port = vm_ports.get(forward.container)
        where = f"VM port {vm_port}" if vm_port else f"container port {forward.container} (not published)"
        hints.append(f"guest port {forward.guest}: {where}")
    return "; ".join(hints)

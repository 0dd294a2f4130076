"""The one place that names every file of a stack's VM (after Lima's limatype/filenames).

Create, delete and the tests all go through `VmPaths`, so `pulumi destroy` can remove
exactly what the stack made and nothing else, even in a directory the user chose.

A state directory carries a marker file naming its stack and the directories `up`
created for it: a directory without one that already holds files is the user's, and
`up` refuses it at preview instead of writing into it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nexus_components.core.errors import ConfigError
from nexus_components.core.files import remove_quietly
from nexus_components.core.qemu_process import runtime_files

MARKER_NAME = ".nexus-nested-vm"
STATE_DIR_KEY = "nexus:paths.stateDir"
# What the marker's `format` says about the stack whose lab this is: 1 (or no field), a stack
# whose state holds the earlier dynamic providers; 2, one whose state holds the nexus
# package's resources (issue 14). A format-1 lab is taken over only after its stack's
# state was upgraded (scripts/upgrade-stack), which then writes 2.
STATE_FORMAT = 2
UPGRADE_COMMAND = "scripts/upgrade-stack"
# nexus:mounts holds at most this many entries (config.py's schema).
MAX_MOUNTS = 16


@dataclass(frozen=True)
class VmPaths:
    state_dir: Path
    # Windows QEMU has no UNIX sockets: there QMP listens on this localhost TCP port.
    qmp_tcp_port: int | None = None

    @property
    def qmp_address(self) -> str | tuple[str, int]:
        """What QEMU's -qmp listens on and the QMP client connects to."""
        if self.qmp_tcp_port is not None:
            return ("127.0.0.1", self.qmp_tcp_port)
        return str(self.qmp_socket)

    @property
    def marker(self) -> Path:
        return self.state_dir / MARKER_NAME

    @property
    def overlay_disk(self) -> Path:
        return self.state_dir / "disk.qcow2"

    @property
    def disk_record(self) -> Path:
        # Which disk this is (its id in the stack's state and the base image it was made on),
        # so a create that finds it (an upgrade, an interrupted up) takes it over as it is.
        return self.state_dir / "disk.json"

    @property
    def seed_iso(self) -> Path:
        return self.state_dir / "cidata.iso"

    @property
    def user_data(self) -> Path:
        # A readable copy of what went into the seed, like the seed's configs/user-data.yaml.
        return self.state_dir / "user-data.yaml"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def ssh_private_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def ssh_public_key(self) -> Path:
        return self.ssh_dir / "id_ed25519.pub"

    @property
    def firmware_vars(self) -> Path:
        return self.state_dir / "efi-vars.fd"

    @property
    def qmp_socket(self) -> Path:
        return runtime_files(self.state_dir)[0]

    @property
    def pid_file(self) -> Path:
        return runtime_files(self.state_dir)[1]

    @property
    def serial_log(self) -> Path:
        return self.state_dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.state_dir / "qemu.log"

    @property
    def connect_script(self) -> Path:
        return self.state_dir / "connect-ssh.sh"

    @property
    def tunnel_script(self) -> Path:
        # A lab on a server: its forwarded ports brought to this machine (remote.tunnel_script).
        return self.state_dir / "tunnel.sh"

    @property
    def inner_vm_connect_script(self) -> Path:
        # ssh into the inner VM through the VM (guest/inner_image.py).
        return self.state_dir / "connect-inner-vm.sh"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def bench_results(self) -> Path:
        # Written by scripts/bench-layers; part of the stack, so destroy removes them.
        return self.state_dir / "bench-layers.json"

    @property
    def bench_chart(self) -> Path:
        return self.state_dir / "bench-layers.svg"

    def virtiofs_socket(self, index: int) -> Path:
        # nexus:mounts[index] of type virtiofs: virtiofsd's vhost-user socket (short: sun_path).
        return self.state_dir / f"vfs-{index}.sock"

    def virtiofs_pid(self, index: int) -> Path:
        return self.state_dir / f"vfs-{index}.pid"

    def virtiofs_log(self, index: int) -> Path:
        return self.state_dir / f"vfs-{index}.log"

    def sshfs_pids(self, index: int) -> Path:
        # nexus:mounts[index] of type reverse-sshfs: the pids of its ssh and sftp-server.
        return self.state_dir / f"sshfs-{index}.pids"

    def sshfs_log(self, index: int) -> Path:
        return self.state_dir / f"sshfs-{index}.log"

    def virtiofs_files(self) -> tuple[Path, ...]:
        """The per-mount files of nexus:mounts (virtiofs and reverse-sshfs)."""
        per_mount = (
            self.virtiofs_socket,
            self.virtiofs_pid,
            self.virtiofs_log,
            self.sshfs_pids,
            self.sshfs_log,
        )
        return tuple(f(i) for i in range(MAX_MOUNTS) for f in per_mount)

    def runtime_files(self) -> tuple[Path, ...]:
        """Files that only exist while QEMU runs (named as for the inner VM: qemu_process)."""
        return runtime_files(self.state_dir)

    def all_files(self) -> tuple[Path, ...]:
        """Every file the stack may create, deepest first, for a complete teardown."""
        return (
            *self.runtime_files(),
            *self.virtiofs_files(),
            self.serial_log,
            self.qemu_log,
            self.connect_script,
            self.tunnel_script,
            self.inner_vm_connect_script,
            self.ssh_config,
            self.bench_results,
            self.bench_chart,
            self.firmware_vars,
            self.seed_iso,
            self.user_data,
            self.overlay_disk,
            self.disk_record,
            self.ssh_private_key,
            self.ssh_public_key,
            self.marker,
        )

    def all_dirs(self) -> tuple[Path, ...]:
        return (self.ssh_dir, self.state_dir)


@dataclass(frozen=True)
class StateDirMarker:
    """What the marker file records: whose directory this is and what `up` created."""

    stack: str
    created_dirs: tuple[Path, ...] = field(default_factory=tuple)
    format: int = STATE_FORMAT

    @classmethod
    def read(cls, paths: VmPaths) -> StateDirMarker | None:
        try:
            document = json.loads(paths.marker.read_text())
            return cls(
                str(document["stack"]),
                tuple(Path(d) for d in document.get("created_dirs", [])),
                int(document.get("format", 1)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, paths: VmPaths) -> None:
        document = {
            "written_by": "nexus-nested-vm",
            "stack": self.stack,
            "created_dirs": [str(d) for d in self.created_dirs],
            "format": self.format,
        }
        paths.marker.write_text(json.dumps(document, indent=2) + "\n")


@dataclass(frozen=True)
class DiskRecord:
    """The disk's id in the stack's state and the base image it was made on (`disk.json`)."""

    id: str
    base_digest: str
    base_path: str

    @classmethod
    def read(cls, paths: VmPaths) -> DiskRecord | None:
        try:
            document = json.loads(paths.disk_record.read_text())
            return cls(str(document["id"]), str(document["base_digest"]), str(document["base_path"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, paths: VmPaths) -> None:
        partial = paths.disk_record.with_name(paths.disk_record.name + ".partial")
        document = {"id": self.id, "base_digest": self.base_digest, "base_path": self.base_path}
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(paths.disk_record)


def check_state_dir(paths: VmPaths, *, stack: str) -> None:
    """Refuse, before anything changes, a state directory that is not ours to write into."""
    state_dir = paths.state_dir
    for path in (state_dir, *state_dir.parents):
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"{STATE_DIR_KEY}: {str(state_dir)!r} cannot be a directory: {path} is a file",
                hint=f"set {STATE_DIR_KEY} to a directory path (it is created if missing)",
            )
    if not state_dir.is_dir():
        return
    marker = StateDirMarker.read(paths)
    if marker is not None:
        if marker.stack != stack:
            raise ConfigError(
                f"{STATE_DIR_KEY}: {state_dir} belongs to the stack {marker.stack!r}, not {stack!r}",
                hint=f"give every stack its own {STATE_DIR_KEY}",
            )
        if marker.format < STATE_FORMAT:
            raise upgrade_needed(paths, stack)
        return
    try:
        entries = sorted(entry.name for entry in state_dir.iterdir())
    except OSError as error:
        raise ConfigError(
            f"{STATE_DIR_KEY}: {state_dir} cannot be read: {error.strerror or error}",
            hint=f"fix its permissions or choose another {STATE_DIR_KEY}",
        ) from error
    if entries and _made_by_an_earlier_version(paths, entries):
        raise upgrade_needed(paths, stack)
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"{STATE_DIR_KEY}: {state_dir} already exists and holds files nexus-nested-vm did not "
            f"create ({shown})",
            hint=f"choose a new or empty directory for {STATE_DIR_KEY} "
            "(the default ~/.nexus-nested-vm/stacks/<stack> is one); the lab never writes into "
            "or deletes from a directory that is not its own",
        )


def upgrade_needed(paths: VmPaths, stack: str) -> ConfigError:
    """A lab made by a version whose stack state held dynamic providers: its state must be
    upgraded first, or this version would make a second lab beside it and the old state's
    deletes would run code that no longer exists."""
    return ConfigError(
        f"{STATE_DIR_KEY}: the lab in {paths.state_dir} was made by an earlier version of "
        f"nexus-nested-vm (dynamic providers in the stack {stack!r}'s state); nothing was changed",
        hint=f"run `{UPGRADE_COMMAND} {stack}` once: it hands the lab to this version's resources "
        "without recreating its disk (`scripts/up` does it by itself); then `pulumi up` again",
    )


def _made_by_an_earlier_version(paths: VmPaths, entries: Sequence[str]) -> bool:
    # Stacks made before the marker existed: only our own file names, and the disk or the seed.
    ours = {path.name for path in paths.all_files() if path.parent == paths.state_dir}
    ours.add(paths.ssh_dir.name)
    return set(entries) <= ours and bool({paths.overlay_disk.name, paths.seed_iso.name} & set(entries))


def make_state_dir(paths: VmPaths, *, stack: str) -> tuple[Path, ...]:
    """Create the state directory (and missing parents) and mark it as this stack's.

    Returns the directories created, outermost first; only those are made private
    (0700) and only those are removed again on destroy. A re-run after an interrupted
    `up` keeps what the first run recorded.
    """
    check_state_dir(paths, stack=stack)
    previous = StateDirMarker.read(paths)
    missing = [path for path in (paths.state_dir, *paths.state_dir.parents) if not path.exists()]
    created = tuple(reversed(missing))
    for directory in created:
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile: then it is not ours
        except OSError as error:
            raise ConfigError(
                f"{STATE_DIR_KEY}: cannot create {directory}: {error.strerror or error}",
                hint=f"choose a {STATE_DIR_KEY} in a directory you can write to",
            ) from error
        os.chmod(directory, 0o700)
    if previous is not None:
        created = previous.created_dirs + tuple(d for d in created if d not in previous.created_dirs)
    StateDirMarker(stack, created, STATE_FORMAT).write(paths)
    return created


def remove_stack_files(paths: VmPaths, created_dirs: Sequence[Path] | None = None) -> list[Path]:
    """Remove every known file, then the directories `up` created if they are empty.

    `created_dirs` comes from the marker (or, if it is gone, from the stack's state);
    without either, the state directory counts as ours, as before markers existed.
    Returns what had to be kept (a directory holding files we did not create).
    """
    marker = StateDirMarker.read(paths)
    if created_dirs is None:
        created_dirs = marker.created_dirs if marker is not None else (paths.state_dir,)
    for path in paths.all_files():
        remove_quietly(path)
    # Deepest first, so a parent is empty by the time its turn comes.
    ours = sorted(set(created_dirs), key=lambda d: len(d.parts), reverse=True)
    kept = []
    for directory in (paths.ssh_dir, *ours):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            if directory.is_relative_to(paths.state_dir):
                kept.append(directory)
    return kept

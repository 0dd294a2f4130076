"""The one place that names every file of a stack's VM (after Lima's limatype/filenames).

Create, delete and the tests all go through `VmPaths`, so `pulumi destroy` can remove
exactly what the stack made and nothing else, even in a directory the user chose.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


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
    def overlay_disk(self) -> Path:
        return self.state_dir / "disk.qcow2"

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
        return self.state_dir / "qmp.sock"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "qemu.pid"

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
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def bench_results(self) -> Path:
        # Written by scripts/bench-layers; part of the stack, so destroy removes them.
        return self.state_dir / "bench-layers.json"

    @property
    def bench_chart(self) -> Path:
        return self.state_dir / "bench-layers.svg"

    def runtime_files(self) -> tuple[Path, ...]:
        """Files that only exist while QEMU runs."""
        return (self.qmp_socket, self.pid_file)

    def all_files(self) -> tuple[Path, ...]:
        """Every file the stack may create, deepest first, for a complete teardown."""
        return (
            *self.runtime_files(),
            self.serial_log,
            self.qemu_log,
            self.connect_script,
            self.ssh_config,
            self.bench_results,
            self.bench_chart,
            self.firmware_vars,
            self.seed_iso,
            self.user_data,
            self.overlay_disk,
            self.ssh_private_key,
            self.ssh_public_key,
        )

    def all_dirs(self) -> tuple[Path, ...]:
        return (self.ssh_dir, self.state_dir)


def remove_quietly(path: Path) -> None:
    """Delete a file; one that is already gone is what we wanted anyway."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_stack_files(paths: VmPaths) -> list[Path]:
    """Remove every known file and then the directories if empty.

    Returns what had to be kept (a directory holding files we did not create).
    """
    for path in paths.all_files():
        remove_quietly(path)
    kept = []
    for directory in paths.all_dirs():
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            kept.append(directory)
    return kept

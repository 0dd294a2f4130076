"""reverse-sshfs for real, with this machine as the guest: a throwaway sshd stands in for the VM's,
the host's sftp-server serves the folder, and sshfs (on this machine) mounts it over the pipe."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nexus_components.core.errors import NexusError
from nexus_components.core.ssh import SshTarget
from nexus_components.host import shares
from nexus_components.host.mounts import Mount
from nexus_components.host.paths import VmPaths
from tests.support.sshd import running_sshd

pytestmark = pytest.mark.skipif(
    not (shutil.which("sshfs") and os.path.exists("/dev/fuse")) or shares.find_sftp_server("linux") is None,
    reason="needs sshfs, /dev/fuse and sftp-server on this machine",
)


def is_mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def wait_unmounted(path: Path, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while is_mounted(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_folder_is_served_by_sftp_server_and_mounted_by_sshfs_then_stopped(tmp_path: Path) -> None:
    shared, frozen = tmp_path / "my $dir", tmp_path / "frozen"
    shared.mkdir()
    frozen.mkdir()
    (shared / "from-host.txt").write_text("hello\n")
    (frozen / "keep.txt").write_text("keep\n")
    mount_rw, mount_ro = tmp_path / "guest" / "rw", tmp_path / "guest" / "ro"
    state = tmp_path / "state"
    state.mkdir()
    paths = VmPaths(state)
    items = [
        Mount(str(shared), str(mount_rw), "reverse-sshfs"),
        Mount(str(frozen), str(mount_ro), "reverse-sshfs", read_only=True),
    ]
    with running_sshd(tmp_path / "sshd") as sshd:
        target = SshTarget(sshd.host, sshd.port, sshd.user, sshd.private_key)
        try:
            shares.start_reverse_sshfs(paths, target, items, shares.find_sftp_server("linux"), "linux")
            assert (mount_rw / "from-host.txt").read_text() == "hello\n"
            (mount_rw / "from-guest.txt").write_text("written\n")
            (mount_rw / "from-guest.txt").chmod(0o640)
            assert (shared / "from-guest.txt").read_text() == "written\n"
            assert (shared / "from-guest.txt").stat().st_uid == os.getuid()
            assert (shared / "from-guest.txt").stat().st_mode & 0o777 == 0o640
            assert (mount_ro / "keep.txt").read_text() == "keep\n"
            with pytest.raises(OSError) as refused:
                (mount_ro / "new.txt").write_text("no")
            assert refused.value.errno in (30, 13)  # EROFS, EACCES
        finally:
            shares.stop_reverse_sshfs(paths)
            for path in (mount_rw, mount_ro):
                if not wait_unmounted(path):
                    subprocess.run(["fusermount3", "-uz", str(path)], check=False)
                    pytest.fail(f"{path} still mounted after stop_reverse_sshfs")
    assert not (frozen / "new.txt").exists()
    assert not paths.sshfs_pids(0).exists()


def test_a_guest_without_the_folder_reports_what_failed(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    with running_sshd(tmp_path / "sshd") as sshd:
        target = SshTarget(sshd.host, sshd.port, sshd.user, sshd.private_key)
        item = Mount(str(tmp_path / "gone"), str(tmp_path / "mnt"), "reverse-sshfs")
        with pytest.raises(NexusError, match=r"nexus:mounts\[0\]: the VM did not mount"):
            shares.start_reverse_sshfs(paths, target, [item], shares.find_sftp_server("linux"), "linux")


def test_a_guest_without_sshfs_is_told_to_install_it_naming_the_mount(tmp_path: Path) -> None:
    # The stand-in guest's sessions get a PATH with a shell's basics and no sshfs.
    bin_dir = tmp_path / "guest-bin"
    bin_dir.mkdir()
    for tool in ("id", "mkdir", "sh", "mountpoint"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    paths = VmPaths(tmp_path)
    with running_sshd(tmp_path / "sshd", [f"SetEnv PATH={bin_dir}"]) as sshd:
        target = SshTarget(sshd.host, sshd.port, sshd.user, sshd.private_key)
        item = Mount(str(tmp_path), str(tmp_path / "mnt"), "reverse-sshfs")
        with pytest.raises(NexusError) as caught:
            shares.start_reverse_sshfs(paths, target, [item], shares.find_sftp_server("linux"), "linux")
    message = str(caught.value)
    assert "nexus:mounts[0]: type reverse-sshfs needs sshfs in the VM" in message, message
    assert "sudo apt-get install sshfs" in message, message
    assert not paths.sshfs_pids(0).exists()

"""nexus:mounts and scripts/lab cp on a real VM (the base Debian test image, under TCG).

The test image's kernel is Debian's cloud kernel: it has virtiofs (and FUSE) but no 9p
(CONFIG_NET_9P is not set), so the mounts here are virtiofs; 9p's part of the command line is
unit-tested, and QEMU accepting it is checked by tests/unit/test_mounts.py's argv tests only.

One VM, in order: up with one read-write mount -> read a host file, write one from the VM ->
cp a folder named with a space and a `$` in and out -> install sshfs in the guest -> add a
read-only virtiofs mount and a reverse-sshfs one (preview shows the VM's restart) -> up: the
first mount is back, the read-only one refuses writes, the login user writes through sshfs ->
destroy: the host folders are byte-identical to what they were before destroy.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nexus_components.cli.copy import copy, layers_of
from nexus_components.cli.stack import LabOutputs
from nexus_components.cli.transfer import Endpoint
from nexus_components.host.shares import find_virtiofsd
from tests.e2e.test_lab import free_port, image_url, lab_config, lab_stack, qemu_processes_of, ssh

pytestmark = [pytest.mark.engine, pytest.mark.vm]

__all__ = ["image_url"]

TRICKY = "my $HOME dir"


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(folder)): (
            stat.S_IMODE(p.stat().st_mode),
            p.stat().st_uid,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.skipif(find_virtiofsd() is None, reason="no virtiofsd on this host")
def test_host_folders_are_mounted_survive_a_restart_and_destroy_leaves_them_as_they_were(
    tmp_path: Path, image_url: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host.txt").write_text("hello from the host\n")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    (frozen / "keep.txt").write_text("read only\n")
    frozen_before = snapshot(frozen)
    served = tmp_path / "served over ssh"
    served.mkdir()
    (served / "hello.txt").write_text("over sftp\n")

    cli = lab_stack(tmp_path, "mounts")
    config = lab_config(tmp_path, image_url, free_port(), free_port())
    config["nexus:mounts"] = [{"host": str(shared), "vm": "/srv/shared", "type": "virtiofs"}]
    cli.init(config)
    state_dir = tmp_path / "state"
    try:
        cli.up()
        outputs = cli.outputs()
        assert ssh(outputs, "cat /srv/shared/from-host.txt") == "hello from the host"
        # Root in the VM, as the playground container's user is; the host sees the host user's file.
        ssh(outputs, "echo written in the VM | sudo tee /srv/shared/from-vm.txt >/dev/null")
        assert (shared / "from-vm.txt").read_text() == "written in the VM\n"
        assert (shared / "from-vm.txt").stat().st_uid == os.getuid()
        assert "/srv/shared virtiofs" in ssh(outputs, "grep nexus0 /etc/fstab")

        # scripts/lab cp, both ways, through the real VM.
        source = tmp_path / "to copy" / TRICKY
        (source / "sub").mkdir(parents=True)
        (source / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (source / "run.sh").chmod(0o750)
        (source / "sub" / "a $b").write_text("x")
        layers = layers_of(LabOutputs("mounts", outputs), "vm")
        copy(Endpoint("host", str(source)), Endpoint("vm", "/tmp"), layers)
        assert ssh(outputs, f"stat -c %a '/tmp/{TRICKY}/run.sh'") == "750"
        back = tmp_path / "back"
        copy(Endpoint("vm", f"/tmp/{TRICKY}"), Endpoint("host", str(back)), layers)
        assert snapshot(back) == snapshot(source)

        # reverse-sshfs needs sshfs in the guest (the test image has none; a user adds it with
        # nexus:guest.packages): from Debian's mirror, over the VM's user network.
        ssh(outputs, "sudo apt-get update -qq && sudo apt-get install -y -qq sshfs >/dev/null", timeout=600)

        # A read-only virtiofs mount and a reverse-sshfs one: a change of the VM's command line
        # (the first), so a restart.
        for index, (host, vm, kind) in enumerate(
            [(frozen, "/srv/frozen", "virtiofs"), (served, "/srv/served", "reverse-sshfs")], start=1
        ):
            cli.set_config(f"nexus:mounts[{index}].host", str(host))
            cli.set_config(f"nexus:mounts[{index}].vm", vm)
            cli.set_config(f"nexus:mounts[{index}].type", kind)
        cli.set_config("nexus:mounts[1].readOnly", "true")
        preview = cli.preview()
        assert "nexus:host:QemuVm" in preview.stdout and "update" in preview.stdout, preview.stdout
        pid = outputs["vmPid"]
        cli.up()
        outputs = cli.outputs()
        assert outputs["vmPid"] != pid, "the VM restarted with the new share"
        assert ssh(outputs, "cat /srv/shared/from-vm.txt") == "written in the VM", "the first mount is back"
        assert ssh(outputs, "cat /srv/frozen/keep.txt") == "read only"
        refused = ssh(outputs, "sudo touch /srv/frozen/new 2>&1 || echo refused")
        assert "Read-only file system" in refused and refused.endswith("refused"), refused
        # reverse-sshfs: the login user reads and writes; the host sees the host user's file.
        assert ssh(outputs, "cat '/srv/served/hello.txt'") == "over sftp"
        ssh(outputs, "echo from the login user > /srv/served/written.txt")
        assert (served / "written.txt").read_text() == "from the login user\n"
        assert (served / "written.txt").stat().st_uid == os.getuid()
        served_before = snapshot(served)
        shared_before = snapshot(shared)
    finally:
        destroyed = cli.destroy(check=False)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert qemu_processes_of(state_dir) == []
    assert snapshot(shared) == shared_before
    assert snapshot(frozen) == frozen_before
    assert snapshot(served) == served_before

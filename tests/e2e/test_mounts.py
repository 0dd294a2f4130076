"""nexus:mounts and scripts/lab cp on a real lab: the guest-layers test image (Docker baked in)
under TCG, with the playground container and an inner VM booting the test playground's kernel
and busybox initramfs (tests/support/playground_rootfs.py), which mounts every 9p share it is
given and reports on its console what it reads and whether a write succeeds.

The test image's kernel is Debian's cloud kernel: it has virtiofs (and FUSE) but no 9p
(CONFIG_NET_9P is not set), so the VM's mounts here are virtiofs and reverse-sshfs; 9p has its own
test on the generic-kernel image (test_ninep.py). The image has sshfs baked in, as the seed
installs it for a reverse-sshfs mount (this stack skips the seed's package step).

One lab, in order: up with a read-write and a read-only virtiofs mount, both also in the
container and the inner VM -> a host file read in the VM, the container and the inner VM, a
file written in the container or the inner VM appears on the host as the host user's, the
inner VM's write to the read-only one is refused -> cp a folder named with a space and a `$` in
and out -> add a reverse-sshfs mount (preview shows QemuVm's update: a restart) -> up: the
mounts are back in the VM, in the container Docker restarted and in the restarted inner VM,
the read-only one refuses writes in all three, the login user writes through sshfs ->
destroy: the inner VM powered off first, no process of the lab left and the host folders
byte-identical to what they were.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bench.mount_bench import Share, render
from bench.mount_bench import run as run_bench
from nexus_components.cli.copy import copy, layers_of
from nexus_components.cli.stack import LabOutputs
from nexus_components.cli.transfer import Endpoint
from nexus_components.host.shares import find_virtiofsd
from tests.e2e.test_guest_layers import guest_image_url, in_container, rootfs_tarball, wait_for_serial
from tests.e2e.test_lab import free_port, lab_config, lab_stack, qemu_processes_of, ssh
from tests.support.playground_rootfs import (
    INNER_INITRD,
    INNER_KERNEL,
    INNER_SHARE_PREFIX,
    INNER_USERSPACE_MARKER,
    INNER_WRITTEN_FILE,
    INNER_WRITTEN_TEXT,
)

pytestmark = [pytest.mark.engine, pytest.mark.vm, pytest.mark.guest]

__all__ = ["guest_image_url", "rootfs_tarball"]

TRICKY = "my $HOME dir"


def assert_inner_vm_sees_the_shares(outputs: dict[str, Any], shared: Path) -> None:
    """The inner VM's init mounted both shares (tags nexus0, nexus1: the mounts' indexes), read
    the host's files, wrote to the read-write one and was refused the read-only one."""
    serial = wait_for_serial(outputs, INNER_USERSPACE_MARKER, 300)
    assert f"{INNER_SHARE_PREFIX} nexus0: from-host.txt: hello from the host" in serial, serial[-3000:]
    assert f"{INNER_SHARE_PREFIX} nexus0: write ok" in serial, serial[-3000:]
    assert f"{INNER_SHARE_PREFIX} nexus1: keep.txt: read only" in serial, serial[-3000:]
    refused = f"{INNER_SHARE_PREFIX} nexus1: write refused:"
    assert refused in serial and "Read-only file system" in serial.split(refused)[1].splitlines()[0], serial
    written = shared / INNER_WRITTEN_FILE
    assert written.read_text() == INNER_WRITTEN_TEXT + "\n"
    assert written.stat().st_uid == os.getuid()


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
    tmp_path: Path, guest_image_url: str, rootfs_tarball: Path
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
    config = lab_config(
        tmp_path,
        guest_image_url,
        free_port(),
        free_port(),
        vm={"memoryMiB": 1536, "diskSize": "10G", "bootTimeoutSeconds": 1200},
        playground={
            "enabled": True,
            "rootfsTarball": str(rootfs_tarball),
            "command": ["sleep", "1000000"],
            "ports": [],
            "readyTimeoutSeconds": 900,
        },
        # The playground's kernel and initramfs: /init mounts each 9p tag at /mnt/<tag>.
        innerVm={
            "enabled": True,
            "memoryMiB": 256,
            "kernel": INNER_KERNEL,
            "initrd": INNER_INITRD,
            "kernelArgs": "console=ttyS0 panic=-1",
        },
    )
    config["nexus:mounts"] = [
        {
            "host": str(shared),
            "vm": "/srv/shared",
            "container": "/work",
            "innerVm": "/mnt/nexus0",
            "type": "virtiofs",
        },
        {
            "host": str(frozen),
            "vm": "/srv/frozen",
            "container": "/frozen",
            "innerVm": "/mnt/nexus1",
            "type": "virtiofs",
            "readOnly": True,
        },
    ]
    cli.init(config)
    state_dir = tmp_path / "state"
    try:
        cli.up()
        outputs = cli.outputs()
        assert ssh(outputs, "cat /srv/shared/from-host.txt") == "hello from the host"
        assert in_container(outputs, "cat", "/work/from-host.txt") == "hello from the host"
        # The container's user (root): the host sees the file as the host user's.
        in_container(outputs, "sh", "-c", "echo written in the container > /work/from-vm.txt")
        assert (shared / "from-vm.txt").read_text() == "written in the container\n"
        assert (shared / "from-vm.txt").stat().st_uid == os.getuid()
        assert "/srv/shared virtiofs" in ssh(outputs, "grep nexus0 /etc/fstab")
        # The inner VM: 9p from the container's view of both mounts, the read-only one refused.
        assert outputs["innerVmQmpStatus"] == "running"
        assert_inner_vm_sees_the_shares(outputs, shared)

        # scripts/lab cp, both ways, through the real VM.
        source = tmp_path / "to copy" / TRICKY
        (source / "sub").mkdir(parents=True)
        (source / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (source / "run.sh").chmod(0o750)
        (source / "sub" / "a $b").write_text("x")
        layers = layers_of(LabOutputs("mounts", outputs), "vm", "playground")
        copy(Endpoint("host", str(source)), Endpoint("vm", "/tmp"), layers)
        assert ssh(outputs, f"stat -c %a '/tmp/{TRICKY}/run.sh'") == "750"
        back = tmp_path / "back"
        copy(Endpoint("vm", f"/tmp/{TRICKY}"), Endpoint("host", str(back)), layers)
        assert snapshot(back) == snapshot(source)
        copy(Endpoint("host", str(source)), Endpoint("playground", "/root"), layers)
        assert in_container(outputs, "stat", "-c", "%a", f"/root/{TRICKY}/run.sh") == "750"
        from_container = tmp_path / "from container"
        copy(Endpoint("playground", f"/root/{TRICKY}"), Endpoint("host", str(from_container)), layers)
        assert snapshot(from_container) == snapshot(source)

        # A reverse-sshfs mount: a change of the VM's command line (QemuVm's mounts), so a restart.
        # The container is not replaced: Docker restarts it after the boot mounted the shares.
        cli.set_config("nexus:mounts[2].host", str(served))
        cli.set_config("nexus:mounts[2].vm", "/srv/served")
        cli.set_config("nexus:mounts[2].type", "reverse-sshfs")
        preview = cli.preview()
        assert "nexus:host:QemuVm" in preview.stdout and "update" in preview.stdout, preview.stdout
        pid = outputs["vmPid"]
        (shared / INNER_WRITTEN_FILE).unlink()  # the restarted inner VM writes it again
        cli.up()
        outputs = cli.outputs()
        assert outputs["vmPid"] != pid, "the VM restarted with the new share"
        assert ssh(outputs, "cat /srv/shared/from-vm.txt") == "written in the container", "the mount is back"
        # Docker restarted the container after the share was mounted (fstab: before docker.service).
        assert in_container(outputs, "cat", "/work/from-vm.txt") == "written in the container"
        assert ssh(outputs, "cat /srv/frozen/keep.txt") == "read only"
        refused = ssh(outputs, "sudo touch /srv/frozen/new 2>&1 || echo refused")
        assert "Read-only file system" in refused and refused.endswith("refused"), refused
        refused = in_container(outputs, "sh", "-c", "touch /frozen/new 2>&1 || echo refused")
        assert "Read-only file system" in refused and refused.endswith("refused"), refused
        # The inner VM restarted with the VM (its container did) and has its shares again.
        assert_inner_vm_sees_the_shares(outputs, shared)
        # reverse-sshfs: the login user reads and writes; the host sees the host user's file.
        assert ssh(outputs, "cat '/srv/served/hello.txt'") == "over sftp"
        ssh(outputs, "echo from the login user > /srv/served/written.txt")
        assert (served / "written.txt").read_text() == "from the login user\n"
        assert (served / "written.txt").stat().st_uid == os.getuid()
        served_before = snapshot(served)
        shared_before = snapshot(shared)

        # The mount bench, small (its defaults, run by scripts/bench-mounts, are 256 MiB and 5,000
        # files); it prints its table (pytest -s shows it) and leaves the shares as they were.
        shares = [
            Share(shared, "/srv/shared", "/work", "virtiofs"),
            Share(served, "/srv/served", None, "reverse-sshfs"),
        ]
        results = run_bench(shares, layers, size_mib=16, files=200, log=print)
        print(render(results))
        assert {(r.workload, r.layer) for r in results} >= {("large", "playground"), ("small", "vm")}
        assert snapshot(shared) == shared_before and snapshot(served) == served_before
    finally:
        destroyed = cli.destroy(check=False)
    output = destroyed.stdout + destroyed.stderr
    assert destroyed.returncode == 0, output
    # Inside out: the inner VM powers off gracefully before its container and the VM go.
    assert "[inner-vm] powered off" in output, output
    assert output.index("[inner-vm] powered off") < output.index("[vm] VM powered off"), output
    assert qemu_processes_of(state_dir) == []
    assert snapshot(shared) == shared_before
    assert snapshot(frozen) == frozen_before
    assert snapshot(served) == served_before

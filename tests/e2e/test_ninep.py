"""9p shares (nexus:mounts type 9p) mounted in a real guest: the generic-kernel test image (Debian's
generic kernel has 9p; the cloud kernel of the other images has not) under TCG, host layers only.

One lab, in order: up with a read-write and a read-only 9p mount -> a host file read in the VM,
a file the VM's login user writes appears on the host, the read-only one refuses writes -> the
mount bench, small -> a memory change restarts the VM -> the mounts are back (the guest's fstab)
-> destroy: no process or port of the lab is left and the host folders are byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.mount_bench import Share, render
from bench.mount_bench import run as run_bench
from nexus_components.cli.copy import layers_of
from nexus_components.cli.stack import LabOutputs
from tests.e2e.test_lab import free_port, lab_config, lab_stack, port_is_free, qemu_processes_of, ssh
from tests.e2e.test_mounts import snapshot
from tests.support.debian_image import GENERIC, IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving

pytestmark = [pytest.mark.engine, pytest.mark.vm]


@pytest.fixture(scope="module")
def generic_image_url() -> Iterator[str]:
    with serving(ensure_test_image(recipe=GENERIC), IMAGE_NAME) as url:
        yield url


def test_9p_shares_mount_refuse_writes_when_read_only_come_back_after_a_restart(
    tmp_path: Path, generic_image_url: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    # The login user (uid 1000 in the VM) writes here whoever owns the folder on the host.
    shared.chmod(0o777)
    (shared / "from-host.txt").write_text("hello from the host\n")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    (frozen / "keep.txt").write_text("read only\n")
    frozen_before = snapshot(frozen)

    ssh_port = free_port()
    cli = lab_stack(tmp_path, "ninep")
    config = lab_config(tmp_path, generic_image_url, ssh_port, free_port(), vm={"memoryMiB": 768})
    config["nexus:mounts"] = [
        {"host": str(shared), "vm": "/srv/shared", "type": "9p"},
        {"host": str(frozen), "vm": "/srv/frozen", "type": "9p", "readOnly": True},
    ]
    cli.init(config)
    state_dir = tmp_path / "state"
    try:
        cli.up()
        outputs = cli.outputs()
        assert ssh(outputs, "cat /srv/shared/from-host.txt") == "hello from the host"
        assert ssh(outputs, "findmnt -n -o FSTYPE /srv/shared") == "9p"
        ssh(outputs, "echo from the login user > /srv/shared/from-vm.txt")
        written = shared / "from-vm.txt"
        assert written.read_text() == "from the login user\n"
        # security_model=none: QEMU creates the file as itself, then tries to give it the guest's
        # uid; an unprivileged QEMU cannot, so the file is the host user's. QEMU run as root (as
        # here, and CI) can: the file keeps the login user's uid, as with passthrough.
        guest_uid = int(ssh(outputs, "id -u"))
        assert written.stat().st_uid == (guest_uid if os.geteuid() == 0 else os.getuid())
        refused = ssh(outputs, "sudo touch /srv/frozen/new 2>&1 || echo refused")
        assert "Read-only file system" in refused and refused.endswith("refused"), refused
        assert ssh(outputs, "cat /srv/frozen/keep.txt") == "read only"

        # The mount bench, small (its defaults are 256 MiB and 5,000 files): printed with -s.
        shared_before = snapshot(shared)
        layers = layers_of(LabOutputs("ninep", outputs), "vm")
        results = run_bench(
            [Share(shared, "/srv/shared", None, "9p")], layers, size_mib=16, files=200, log=print
        )
        print(render(results))
        assert {(r.workload, r.layer) for r in results} == {("large", "vm"), ("small", "vm")}
        assert snapshot(shared) == shared_before

        # A memory change restarts the VM: the guest's fstab mounts the shares again at boot.
        cli.set_config("nexus:vm.memoryMiB", "896")
        pid = outputs["vmPid"]
        cli.up()
        outputs = cli.outputs()
        assert outputs["vmPid"] != pid, "the VM restarted"
        assert ssh(outputs, "cat /srv/shared/from-vm.txt") == "from the login user"
        assert ssh(outputs, "grep -c ' 9p ' /etc/fstab") == "2"
        # The boot mounted it from fstab (systemd's own mount job), not only up's guest script:
        # so a reboot inside the guest mounts the shares too.
        boot_log = ssh(outputs, "sudo journalctl -b -o cat -u srv-shared.mount -u srv-frozen.mount")
        assert "Mounted srv-shared.mount" in boot_log and "Mounted srv-frozen.mount" in boot_log, boot_log
        refused = ssh(outputs, "sudo touch /srv/frozen/new 2>&1 || echo refused")
        assert "Read-only file system" in refused and refused.endswith("refused"), refused
    finally:
        destroyed = cli.destroy(check=False)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert qemu_processes_of(state_dir) == []
    assert port_is_free(ssh_port)
    assert snapshot(shared) == shared_before
    assert snapshot(frozen) == frozen_before

"""A program outside this repository brings up a real host-only lab through nexus:index:Lab.

The consumer of tests/support/nexus_consumer.py (the package added from this checkout's
plugin) boots the cached Debian test image under TCG, as tests/e2e/test_lab.py does for the
reference program: SSH answers, a second `up` changes nothing, `destroy` leaves nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_lab import image_url, port_is_free, qemu_processes_of, ssh
from tests.support.nexus_consumer import (
    LAB_PROGRAM,
    consumer_project,
    free_port,
    lab_consumer_config,
    output_of,
)

pytestmark = [pytest.mark.engine, pytest.mark.vm]

__all__ = ["image_url"]  # the module-scoped fixture that serves the test image


def test_a_consumer_brings_up_a_host_only_lab_with_the_lab_component_and_destroys_it(
    tmp_path: Path, pulumi_home: Path, image_url: str
) -> None:
    ssh_port = free_port()
    config = {
        **lab_consumer_config(tmp_path, {"url": image_url}, ssh_port),
        "consumer:cpus": "2",
        "consumer:diskSize": "4G",
        "consumer:bootTimeoutSeconds": "600",
    }
    lab = consumer_project(tmp_path, pulumi_home, LAB_PROGRAM, config)
    state_dir = tmp_path / "state"
    try:
        up = lab.up()
        assert "nexus:index:Lab" in up.stdout, output_of(up)
        outputs = lab.outputs()
        assert outputs["sshPort"] == ssh_port and outputs["stateDir"] == str(state_dir)
        assert ssh(outputs, "whoami") == "nexus"
        assert qemu_processes_of(state_dir) == [outputs["vmPid"]]

        root_fs = int(ssh(outputs, "df -B1 --output=size / | tail -n 1"))
        assert root_fs > 3 << 30, "the root file system grown to the 4G disk"
        again = lab.up("--expect-no-changes")
        assert "8 unchanged" in again.stdout, output_of(again)
    finally:
        destroyed = lab.destroy(check=False)
    assert destroyed.returncode == 0, output_of(destroyed)
    qemu = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False).stdout
    assert str(state_dir) not in qemu, qemu
    assert port_is_free(ssh_port)
    assert not state_dir.exists()
    assert lab.resources() == []

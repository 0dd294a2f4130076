"""A program outside this repository brings up a lab with the playground container through
nexus:index:Lab, and destroys it.

The consumer of tests/support/nexus_consumer.py boots the guest-layers test image (Docker
baked in) under TCG with the Lab's typed `playground` argument: the container runs from the
root-file-system tarball and answers HTTP through host port -> VM 80 -> container 80. Then
`destroy` leaves nothing: no container resource, no QEMU, no stack files.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_guest_layers import http_get, nothing_listens
from tests.e2e.test_lab import port_is_free, qemu_processes_of, ssh
from tests.support.debian_image import GUEST_LAYERS, IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.nexus_consumer import LAB_PLAYGROUND_PROGRAM, consumer_project, free_port, output_of
from tests.support.playground_rootfs import PAGE_MARKER, ensure_busybox_rootfs

pytestmark = [pytest.mark.engine, pytest.mark.vm, pytest.mark.guest]


@pytest.fixture(scope="module")
def guest_image_url() -> Iterator[str]:
    with serving(ensure_test_image(recipe=GUEST_LAYERS), IMAGE_NAME) as url:
        yield url


def test_a_consumer_ups_a_lab_with_the_playground_and_destroys_it_leaving_nothing(
    tmp_path: Path, pulumi_home: Path, guest_image_url: str
) -> None:
    ssh_port, http_port = free_port(), free_port()
    state_dir = tmp_path / "state"
    config = {
        "consumer:imageUrl": guest_image_url,
        "consumer:sshPort": str(ssh_port),
        "consumer:httpPort": str(http_port),
        "consumer:stateDir": str(state_dir),
        "consumer:cacheDir": str(tmp_path / "cache"),
        "consumer:rootfsTarball": str(ensure_busybox_rootfs()),
    }
    lab = consumer_project(tmp_path, pulumi_home, LAB_PLAYGROUND_PROGRAM, config)
    try:
        up = lab.up()
        output = output_of(up)
        for kind in ("DockerDaemon", "ContainerPreflight", "ContainerPresence", "TarballImage", "ScriptFile"):
            assert f"nexus:guest:{kind}" in up.stdout, output
        assert "docker:index:Container" in up.stdout, output  # as the progress display names it
        outputs = lab.outputs()
        assert outputs["playgroundContainer"] == "nexus-playground"
        assert outputs["dockerVersion"].startswith("20.10"), outputs
        assert int(ssh(outputs, "df -B1 --output=size / | tail -n 1")) > 8 << 30, "grown to the disk"
        assert PAGE_MARKER in http_get(http_port)
        running = ssh(outputs, "docker inspect --format '{{.State.Running}}' nexus-playground")
        assert running == "true"
        assert Path(outputs["playgroundShellScript"]).is_file()
    finally:
        destroyed = lab.destroy(check=False)
    assert destroyed.returncode == 0, output_of(destroyed)
    qemu = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False).stdout
    assert str(state_dir) not in qemu, qemu
    assert qemu_processes_of(state_dir) == []
    # The HTTP port's last connection may sit in TIME_WAIT a minute: nothing listens is what counts.
    assert port_is_free(ssh_port) and nothing_listens(http_port)
    assert not state_dir.exists()
    assert lab.resources() == []

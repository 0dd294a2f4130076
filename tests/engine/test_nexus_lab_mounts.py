"""The Lab's typed `mounts` argument through the real CLI, from a program outside this repository:
preview shows the shares on QemuVm, and a missing host folder is refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.test_nexus_lab import assert_refused_argument, refused_preview
from tests.support.nexus_consumer import consumer_project, free_port, lab_consumer_config, output_of

pytestmark = pytest.mark.engine

MOUNTS_PROGRAM = """
import pulumi
import pulumi_nexus as nexus

config = pulumi.Config()
lab = nexus.Lab(
    "lab",
    image=nexus.LabImageArgs(url=config.require("imageUrl"), sha256=config.get("imageSha256")),
    vm=nexus.LabVmArgs(accelerator=nexus.AcceleratorChoice.TCG, cpus=1, memory_mib=1024, disk_size="2G"),
    network=nexus.LabNetworkArgs(ssh_port=config.require_int("sshPort"), forwards=[]),
    guest=nexus.LabGuestArgs(username="nexus", install_packages=False),
    paths=nexus.LabPathsArgs(state_dir=config.require("stateDir"), cache_dir=config.require("cacheDir")),
    playground=nexus.LabPlaygroundArgs(enabled=False),
    mounts=[
        nexus.LabMountArgs(
            host=config.require("shared"), vm="/srv/shared", read_only=True, type=nexus.MountTypeChoice.NINE_P
        )
    ],
)
pulumi.export("stateDir", lab.state_dir)
"""


def test_a_consumer_declares_a_mount_it_shows_on_qemu_vm_and_a_missing_folder_is_refused(
    tmp_path: Path, pulumi_home: Path, blank_image: dict[str, str]
) -> None:
    shared = tmp_path / "my shared"
    shared.mkdir()
    config = {**lab_consumer_config(tmp_path, blank_image, free_port()), "consumer:shared": str(shared)}
    lab = consumer_project(tmp_path, pulumi_home, MOUNTS_PROGRAM, config)
    preview = lab.preview()
    output = output_of(preview)
    assert "nexus:host:QemuVm" in preview.stdout, output
    assert f'host    : "{shared}"' in preview.stdout and 'type    : "9p"' in preview.stdout, output
    assert "readOnly: true" in preview.stdout, output

    lab.set_config("consumer:shared", str(tmp_path / "gone"))
    assert_refused_argument(
        refused_preview(lab), f"nexus:mounts[0].host: got '{tmp_path / 'gone'}', which does not exist"
    )

"""The `nexus:index:Lab` component through the real CLI, from a program outside this repository.

The program declares one Lab with typed arguments (tests/support/nexus_consumer.py's
LAB_PROGRAM); its stack also holds `nexus:` keys as the reference program's stack files do,
which Pulumi hands to the package's default provider. A blank base image stands in for a
cloud image: every host resource is made, and QEMU never starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_components.host.paths import VmPaths
from tests.support.nexus_consumer import (
    LAB_PLAYGROUND_PROGRAM,
    LAB_PROGRAM,
    consumer_project,
    free_port,
    lab_consumer_config,
    output_of,
    up_refused_at_qemu,
)
from tests.support.pulumi_cli import PulumiCli

pytestmark = pytest.mark.engine

LAB_CHILDREN = ("BaseImage", "StateDir", "SshKey", "OverlayDisk", "CloudInitSeed", "QemuVm")


@pytest.fixture
def lab(tmp_path: Path, pulumi_home: Path, blank_image: dict[str, str]) -> Iterator[PulumiCli]:
    cli = consumer_project(
        tmp_path, pulumi_home, LAB_PROGRAM, lab_consumer_config(tmp_path, blank_image, free_port())
    )
    yield cli
    cli.destroy(check=False)


def refused_preview(cli: PulumiCli) -> str:
    refused = cli.run("preview", *cli.stack_args(), check=False)
    output = output_of(refused)
    assert refused.returncode != 0, output
    return output


def assert_refused_argument(output: str, *messages: str) -> None:
    """The Lab's arguments are refused by the provider's Construct, with its messages and no stack
    of its own. The engine then answers the program's registration of the Lab with
    `resource monitor shut down` (codes.Unknown, pulumi pkg/resource/deploy/source_eval.go),
    which this SDK reports as an unhandled exception with the program's stack: known, upstream."""
    assert "nexus:index:Lab resource 'lab' has a problem: " in output, output
    for message in messages:
        assert message in output, output
    for ours in ("nexus_provider", "nexus_components", "consumer/__main__.py"):
        assert ours not in output, output
    if "Traceback" in output:
        assert output.count("Traceback") == output.count("Exception: resource monitor shut down") * 2, output


def test_a_consumer_with_nexus_stack_keys_previews_the_lab_and_its_children_and_is_refused_a_bad_argument(
    lab: PulumiCli, tmp_path: Path
) -> None:
    preview = lab.preview()
    output = output_of(preview)
    # The stack, the Lab and its six host resources (a host-only lab: no guest layer, not even
    # pulumi-docker loaded); the nexus: keys are not provider settings.
    assert "+ 8 to create" in preview.stdout, output
    assert "nexus:index:Lab" in preview.stdout, output
    for name in LAB_CHILDREN:
        assert f"nexus:host:{name}" in preview.stdout, output
    assert not (tmp_path / "state").exists() and not (tmp_path / "cache").exists(), "preview makes nothing"

    lab.set_config("consumer:memoryMib", "64")
    assert_refused_argument(
        refused_preview(lab),
        "nexus:index:Lab lab: invalid arguments",
        "- property vm.memoryMib with value 64 has a problem: got 64; allowed: at least 512",
    )


def test_the_lab_is_refused_what_the_stack_config_refuses_with_its_words(lab: PulumiCli) -> None:
    lab.set_config("consumer:diskSize", "2X")
    assert_refused_argument(
        refused_preview(lab),
        "- property vm.diskSize with value \"2X\" has a problem: got '2X'; "
        "allowed: a size such as 20G: a whole number (up to 6 digits) and M, G or T",
    )
    # A rule across settings is config.load_config's, and so are its words.
    lab.set_config("consumer:diskSize", "2G")
    lab.set_config("consumer:stateDir", "/tmp")
    assert_refused_argument(
        refused_preview(lab), "nexus:paths.stateDir: got '/tmp', a directory other programs share"
    )


def test_up_makes_the_labs_host_files_then_a_smaller_disk_is_refused_with_the_providers_message(
    lab: PulumiCli, tmp_path: Path
) -> None:
    """QEMU never starts: the SSH port is taken, which the VM refuses before launching."""
    up_refused_at_qemu(lab)
    made = {resource["type"] for resource in lab.resources()}
    assert made >= {
        "nexus:index:Lab",
        *(f"nexus:host:{name}" for name in LAB_CHILDREN if name != "QemuVm"),
    }, made
    assert VmPaths(tmp_path / "state").overlay_disk.is_file()

    lab.set_config("consumer:diskSize", "1G")
    output = refused_preview(lab)
    assert "nexus:vm.diskSize: shrinking the disk from 2G to 1G is refused" in output, output

    lab.set_config("consumer:diskSize", "2G")
    lab.destroy()
    assert not (tmp_path / "state").exists()
    assert lab.resources() == []


def test_a_lab_with_the_playground_previews_the_guest_layers_with_pulumi_docker(
    tmp_path: Path, pulumi_home: Path, blank_image: dict[str, str]
) -> None:
    """The Lab's `playground` argument: its guest resources and pulumi-docker's children,
    declared by the provider's construct; a preview touches no VM and makes nothing."""
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(b"a root file system, as far as a preview can tell\n")
    config = {
        "consumer:imageUrl": blank_image["url"],
        "consumer:sshPort": str(free_port()),
        "consumer:httpPort": str(free_port()),
        "consumer:stateDir": str(tmp_path / "state"),
        "consumer:cacheDir": str(tmp_path / "cache"),
        "consumer:rootfsTarball": str(rootfs),
    }
    cli = consumer_project(tmp_path, pulumi_home, LAB_PLAYGROUND_PROGRAM, config)
    preview = cli.preview()
    output = output_of(preview)
    for kind in ("DockerDaemon", "ContainerPreflight", "ContainerPresence", "TarballImage", "ScriptFile"):
        assert f"nexus:guest:{kind}" in preview.stdout, output
    for kind in ("docker:index/container:Container", "pulumi:providers:docker"):
        assert kind in preview.stdout, output
    assert "nexus:guest:InnerQemu" not in preview.stdout, "the inner VM is off by default"
    assert not (tmp_path / "state").exists() and not (tmp_path / "cache").exists(), "preview makes nothing"

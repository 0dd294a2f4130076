"""The `nexus` provider plugin through the real CLI: installed by scripts/setup, its schema,
and a Pulumi program outside this repository that adds the package and declares a host lab.

Everything runs on a throwaway PULUMI_HOME whose plugin directory holds the `command`
and `docker` plugins scripts/setup installed and the `nexus` plugin of this checkout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_components.host.paths import VmPaths
from nexus_provider import VERSION
from tests.support.nexus_consumer import (
    LAUNCHER,
    assert_no_traceback,
    cli_in,
    consumer_project,
    free_port,
    output_of,
    run_setup,
    up_refused_at_qemu,
)
from tests.support.pulumi_cli import PulumiCli

pytestmark = pytest.mark.engine

HOST_RESOURCES = ("StateDir", "BaseImage", "SshKey", "OverlayDisk", "CloudInitSeed", "QemuVm")
GUEST_RESOURCES = (
    "DockerDaemon",
    "ContainerPreflight",
    "ContainerPresence",
    "TarballImage",
    "InnerImageCopy",
    "InnerQemu",
    "ScriptFile",
)


def test_setup_installs_the_plugin_so_plugin_ls_lists_it(pulumi_home: Path, tmp_path: Path) -> None:
    again, seconds = run_setup(pulumi_home)
    assert "nexus plugin" not in again.stderr, "a re-run installs nothing"
    assert seconds < 3, f"a re-run of scripts/setup took {seconds:.1f} s"
    cli = cli_in(tmp_path, tmp_path / "backend", pulumi_home)
    listed = {
        (plugin["name"], plugin["kind"], plugin["version"])
        for plugin in json.loads(cli.run("plugin", "ls", "--json").stdout)
    }
    assert ("nexus", "resource", VERSION) in listed, listed


def test_get_schema_lists_every_resource_and_the_lab_with_descriptions(
    pulumi_home: Path, tmp_path: Path
) -> None:
    cli = cli_in(tmp_path, tmp_path / "backend", pulumi_home)
    schema = json.loads(cli.run("package", "get-schema", str(LAUNCHER)).stdout)
    assert schema["name"] == "nexus" and schema["version"] == VERSION
    assert set(schema["resources"]) == {
        *(f"nexus:host:{name}" for name in HOST_RESOURCES),
        *(f"nexus:guest:{name}" for name in GUEST_RESOURCES),
        "nexus:index:Lab",
    }
    assert schema["resources"]["nexus:index:Lab"]["isComponent"] is True
    for token, resource in schema["resources"].items():
        assert resource["description"], token
        for name, property_schema in {**resource["inputProperties"], **resource["properties"]}.items():
            assert property_schema.get("description"), f"{token}.{name}"
    assert {value["value"] for value in schema["types"]["nexus:host:Arch"]["enum"]} == {"x86_64", "aarch64"}


# A host lab declared with the package's generated Python SDK, as another team's program would.
CONSUMER = """
import pulumi
import pulumi_nexus as nexus

config = pulumi.Config()
state_dir = config.require("stateDir")
opts = pulumi.ResourceOptions

image = nexus.host.BaseImage(
    "image",
    url=config.require("imageUrl"),
    sha256=config.require("imageSha256"),
    cache_dir=config.require("cacheDir"),
    disk_size="2G",
    qemu_img="qemu-img",
)
state = nexus.host.StateDir(
    "state", state_dir=state_dir, stack=pulumi.get_stack(), opts=opts(depends_on=[image])
)
after_state = opts(depends_on=[state])
key = nexus.host.SshKey("key", state_dir=state_dir, comment="nexus-consumer", opts=after_state)
disk = nexus.host.OverlayDisk(
    "disk",
    state_dir=state_dir,
    base_path=image.path,
    base_digest=image.digest,
    disk_size="2G",
    qemu_img="qemu-img",
    opts=after_state,
)
seed = nexus.host.CloudInitSeed(
    "seed",
    state_dir=state_dir,
    username="nexus",
    hostname="consumer",
    arch=nexus.host.Arch.X86_64,
    install_packages=False,
    packages=[],
    user_data={},
    public_key=key.public_key,
    opts=after_state,
)
ssh_port = config.require_int("sshPort")
vm = nexus.host.QemuVm(
    "vm",
    name="consumer",
    state_dir=state_dir,
    arch=nexus.host.Arch.X86_64,
    accelerator=nexus.host.Accelerator.TCG,
    cpus=1,
    memory_mib=config.get_int("memoryMib") or 1024,
    bind_address=nexus.host.BindAddress.LOOPBACK,
    ssh_port=ssh_port,
    forwards=[],
    username="nexus",
    private_key=key.private_key_path,
    instance_id=seed.instance_id,
    overlay_id=disk.id,
    boot_timeout_seconds=30,
    opts=after_state,
)
pulumi.export("imagePath", image.path)
pulumi.export("publicKey", key.public_key)
"""


@pytest.fixture
def consumer(tmp_path: Path, pulumi_home: Path, blank_image: dict[str, str]) -> Iterator[PulumiCli]:
    cli = consumer_project(
        tmp_path,
        pulumi_home,
        CONSUMER,
        {
            "consumer:stateDir": str(tmp_path / "state"),
            "consumer:cacheDir": str(tmp_path / "cache"),
            "consumer:imageUrl": blank_image["url"],
            "consumer:imageSha256": blank_image["sha256"],
            "consumer:sshPort": str(free_port()),
        },
    )
    yield cli
    cli.destroy(check=False)


def test_a_program_outside_the_repository_adds_the_package_and_previews_a_host_lab(
    consumer: PulumiCli, tmp_path: Path
) -> None:
    preview = consumer.preview()
    assert "+ 7 to create" in preview.stdout, output_of(preview)  # the stack and six resources
    for name in HOST_RESOURCES:
        assert f"nexus:host:{name}" in preview.stdout, preview.stdout
    assert not (tmp_path / "state").exists() and not (tmp_path / "cache").exists(), "preview makes nothing"

    consumer.set_config("consumer:memoryMib", "64")
    refused = consumer.run("preview", *consumer.stack_args(), check=False)
    output = output_of(refused)
    assert refused.returncode != 0
    assert "property memoryMib value {64} has a problem: got 64; allowed: at least 512" in output, output
    assert_no_traceback(output)


def test_up_makes_the_host_files_and_reports_a_provider_error_as_its_message_then_destroy(
    consumer: PulumiCli, tmp_path: Path
) -> None:
    """QEMU is never started: its SSH port is taken, which the VM refuses before launching.
    Every other host resource is made through the plugin, and destroy removes them all."""
    up_refused_at_qemu(consumer)
    made = {resource["type"] for resource in consumer.resources()}
    assert made >= {f"nexus:host:{name}" for name in HOST_RESOURCES if name != "QemuVm"}, made
    assert "pulumi-python:dynamic:Resource" not in made
    state = VmPaths(tmp_path / "state")
    assert state.overlay_disk.is_file() and state.seed_iso.is_file(), sorted(state.state_dir.iterdir())
    assert consumer.outputs()["publicKey"].startswith("ssh-ed25519 ")

    destroyed = consumer.destroy()
    assert "deleted" in destroyed.stdout, output_of(destroyed)
    assert not state.state_dir.exists()
    assert consumer.resources() == []
    assert (tmp_path / "cache").is_dir(), "the image cache stays"


# Guest resources declared directly, as a program that wires its own lab would: nothing here
# reaches a VM at preview (creates are previewed without touching the machine).
GUEST_CONSUMER = """
import pulumi
import pulumi_nexus as nexus

config = pulumi.Config()
access = dict(ssh_host="127.0.0.1", ssh_port=2222, username="nexus", private_key="/nonexistent/key")
docker_host = "ssh://nexus@127.0.0.1:2222"
daemon = nexus.guest.DockerDaemon(
    "docker",
    docker_host=docker_host,
    vm_pid=1,
    instance_id="nexus-1",
    timeout_seconds=config.get_int("readyTimeoutSeconds") or 900,
    **access,
)
nexus.guest.ContainerPreflight(
    "preflight",
    container="nexus-playground",
    docker_host=docker_host,
    ports=[nexus.guest.WantedVmPortArgs(vm=80, protocol=nexus.host.Protocol.TCP, key="ports[0].vm")],
    devices=[nexus.guest.WantedDeviceArgs(path=config.get("device") or "/dev/fuse", key="devices[0]")],
    **access,
)
nexus.guest.ScriptFile("script", path=config.require("script"), content="#!/bin/sh\\n")
"""


def test_a_bad_guest_input_is_refused_at_preview_by_property_without_a_traceback(
    tmp_path: Path, pulumi_home: Path
) -> None:
    script = tmp_path / "connect.sh"
    cli = consumer_project(tmp_path, pulumi_home, GUEST_CONSUMER, {"consumer:script": str(script)})
    preview = cli.preview()
    assert "+ 4 to create" in preview.stdout, output_of(preview)
    for name in ("DockerDaemon", "ContainerPreflight", "ScriptFile"):
        assert f"nexus:guest:{name}" in preview.stdout, preview.stdout
    assert not script.exists(), "preview writes nothing"

    # The engine stops at the first refusal: one bad input at a time.
    for key, value, message in (
        (
            "consumer:readyTimeoutSeconds",
            "5",
            "property timeoutSeconds value {5} has a problem: got 5; allowed: at least 30",
        ),
        (
            "consumer:device",
            "fuse",
            # The engine prints no value for a nested property ({<nil>}); the reason names it.
            "property devices[0].path value {<nil>} has a problem: got 'fuse'; "
            "allowed: a device path under /dev/, without ':', ',' or control characters",
        ),
    ):
        cli.set_config(key, value)
        refused = cli.run("preview", *cli.stack_args(), check=False)
        output = output_of(refused)
        assert refused.returncode != 0
        assert message in output, output
        assert_no_traceback(output)
        cli.run("config", "rm", key, *cli.stack_args())

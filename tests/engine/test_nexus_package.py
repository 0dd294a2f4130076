"""The `nexus` provider plugin through the real CLI: installed by scripts/setup, its schema,
and a Pulumi program outside this repository that adds the package and declares a host lab.

Everything runs on a throwaway PULUMI_HOME whose plugin directory holds the `command`
and `docker` plugins scripts/setup installed and the `nexus` plugin of this checkout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nexus_components.paths import VmPaths
from nexus_provider import VERSION
from tests.support.blank_image import make_blank_image
from tests.support.pulumi_cli import REPO, PulumiCli, installed_plugins_dir

pytestmark = pytest.mark.engine

LAUNCHER = REPO / "nexus_provider" / "pulumi-resource-nexus"
HOST_RESOURCES = ("StateDir", "BaseImage", "SshKey", "OverlayDisk", "CloudInitSeed", "QemuVm")


def setup(pulumi_home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "scripts" / "setup")],
        env={**os.environ, "PULUMI_HOME": str(pulumi_home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def pulumi_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PULUMI_HOME with the pinned plugins, where scripts/setup installs this checkout's nexus."""
    home = tmp_path_factory.mktemp("pulumi-home")
    (home / "plugins").mkdir()
    for installed in installed_plugins_dir().glob("resource-*-v*"):
        if installed.is_dir() and not installed.name.startswith("resource-nexus-"):
            (home / "plugins" / installed.name).symlink_to(installed, target_is_directory=True)
    first, _ = setup(home)
    assert f"installed the nexus plugin {VERSION}" in first.stderr, first.stderr
    return home


def cli_in(project: Path, backend: Path, pulumi_home: Path) -> PulumiCli:
    return PulumiCli(
        project_dir=project,
        backend_dir=backend,
        stack="consumer",
        config_file=project / "Pulumi.consumer.yaml",
        extra_env={"PULUMI_HOME": str(pulumi_home)},
    )


def test_setup_installs_the_plugin_so_plugin_ls_lists_it(pulumi_home: Path, tmp_path: Path) -> None:
    again, seconds = setup(pulumi_home)
    assert "nexus plugin" not in again.stderr, "a re-run installs nothing"
    assert seconds < 3, f"a re-run of scripts/setup took {seconds:.1f} s"
    cli = cli_in(tmp_path, tmp_path / "backend", pulumi_home)
    listed = {
        (plugin["name"], plugin["kind"], plugin["version"])
        for plugin in json.loads(cli.run("plugin", "ls", "--json").stdout)
    }
    assert ("nexus", "resource", VERSION) in listed, listed


def test_get_schema_lists_every_host_resource_with_descriptions(pulumi_home: Path, tmp_path: Path) -> None:
    cli = cli_in(tmp_path, tmp_path / "backend", pulumi_home)
    schema = json.loads(cli.run("package", "get-schema", str(LAUNCHER)).stdout)
    assert schema["name"] == "nexus" and schema["version"] == VERSION
    assert set(schema["resources"]) == {f"nexus:host:{name}" for name in HOST_RESOURCES}
    for token, resource in schema["resources"].items():
        assert resource["description"], token
        for name, property_schema in resource["properties"].items():
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
    """A Python project outside the repository, on its own virtualenv, with the package added."""
    project = tmp_path / "consumer"
    project.mkdir()
    assert REPO not in project.parents
    venv = project / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The Pulumi SDK from the project's .venv, so nothing is downloaded: only the generated
    # SDK is installed into this virtualenv.
    site_packages = next(venv.glob("lib/python*/site-packages"))
    (site_packages / "nexus-sdk.pth").write_text(
        f"{next((REPO / '.venv').glob('lib/python*/site-packages'))}\n"
    )
    runtime = {"name": "python", "options": {"virtualenv": "venv"}}
    (project / "Pulumi.yaml").write_text(
        yaml.safe_dump({"name": "consumer", "runtime": runtime}, sort_keys=False)
    )
    (project / "requirements.txt").write_text("")
    (project / "__main__.py").write_text(CONSUMER)
    cli = cli_in(project, tmp_path / "backend", pulumi_home)
    added = cli.run("package", "add", str(LAUNCHER), timeout=600)
    assert "Successfully generated an SDK for the nexus package" in added.stdout, output_of(added)
    assert yaml.safe_load((project / "Pulumi.yaml").read_text())["packages"] == {"nexus": f"nexus@{VERSION}"}
    cli.init(
        {
            "consumer:stateDir": str(tmp_path / "state"),
            "consumer:cacheDir": str(tmp_path / "cache"),
            "consumer:imageUrl": blank_image["url"],
            "consumer:imageSha256": blank_image["sha256"],
            "consumer:sshPort": str(free_port()),
        }
    )
    yield cli
    cli.destroy(check=False)


@pytest.fixture
def blank_image(tmp_path: Path) -> dict[str, str]:
    return make_blank_image(tmp_path / "images")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_no_traceback(output: str) -> None:
    for trace in ("Traceback", 'File "', "nexus_components/"):
        assert trace not in output, output


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
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        consumer.set_config("consumer:sshPort", str(busy))
        up = consumer.up(check=False)
    output = output_of(up)
    assert up.returncode != 0
    assert f"nexus:network.sshPort: host port {busy} on 127.0.0.1 is already in use" in output, output
    assert_no_traceback(output)
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

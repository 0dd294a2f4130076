"""A Pulumi program of another project that uses the `nexus` package, outside this repository.

Its own virtualenv (with this project's Pulumi SDK on its path, so nothing is downloaded),
`pulumi package add` of this checkout's plugin, and a throwaway backend and PULUMI_HOME
whose plugin directory holds this checkout's `nexus` plugin, installed by scripts/setup.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from nexus_provider import VERSION
from tests.support.pulumi_cli import REPO, PulumiCli, installed_plugins_dir

LAUNCHER = REPO / "nexus_provider" / "pulumi-resource-nexus"


def run_setup(pulumi_home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
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


def make_pulumi_home(home: Path) -> subprocess.CompletedProcess[str]:
    """A PULUMI_HOME with the pinned plugins, where scripts/setup installs this checkout's nexus."""
    (home / "plugins").mkdir(parents=True)
    for installed in installed_plugins_dir().glob("resource-*-v*"):
        if installed.is_dir() and not installed.name.startswith("resource-nexus-"):
            # A directory of links: Pulumi skips a plugin directory that is itself a link
            # (a Lab's pulumi-command and pulumi-docker children need these plugins).
            plugin = home / "plugins" / installed.name
            plugin.mkdir()
            for item in installed.iterdir():
                (plugin / item.name).symlink_to(item)
    first, _ = run_setup(home)
    assert f"installed the nexus plugin {VERSION}" in first.stderr, first.stderr
    return first


def cli_in(project: Path, backend: Path, pulumi_home: Path) -> PulumiCli:
    return PulumiCli(
        project_dir=project,
        backend_dir=backend,
        stack="consumer",
        config_file=project / "Pulumi.consumer.yaml",
        extra_env={"PULUMI_HOME": str(pulumi_home)},
    )


def consumer_project(folder: Path, pulumi_home: Path, program: str, config: dict[str, Any]) -> PulumiCli:
    """A Python project in `folder` running `program`, with the package added and a stack made."""
    project = folder / "consumer"
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
    (project / "__main__.py").write_text(program)
    cli = cli_in(project, folder / "backend", pulumi_home)
    added = cli.run("package", "add", str(LAUNCHER), timeout=600)
    assert "Successfully generated an SDK for the nexus package" in added.stdout, output_of(added)
    assert yaml.safe_load((project / "Pulumi.yaml").read_text())["packages"] == {"nexus": f"nexus@{VERSION}"}
    cli.init(config)
    return cli


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_no_traceback(output: str) -> None:
    """No Python stack in what the user sees, but for one that Pulumi itself can cause in
    the user's program: when a step fails, its Python language host sends the program
    SIGINT, and a program still waiting on the engine then prints a KeyboardInterrupt
    (and "no running event loop" when its event loop is gone). Such a stack is in the SDK
    and gRPC only, never in the package's code."""
    for ours in ("nexus_components/", "nexus_provider/", "pulumi_nexus/"):
        assert ours not in output, output
    for stack in output.split("Traceback (most recent call last):")[1:]:
        assert "KeyboardInterrupt" in stack or "RuntimeError: no running event loop" in stack, output


def up_refused_at_qemu(cli: PulumiCli) -> None:
    """`up` with the VM's SSH port taken: every host resource but the VM is made, and the VM
    refuses to start QEMU with the provider's own message, no Python stack."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        cli.set_config("consumer:sshPort", str(busy))
        up = cli.up(check=False)
    output = output_of(up)
    assert up.returncode != 0
    assert f"nexus:network.sshPort: host port {busy} on 127.0.0.1 is already in use" in output, output
    assert_no_traceback(output)


# A lab declared through the Lab component, with typed arguments, as another team's program would.
LAB_PROGRAM = """
import pulumi
import pulumi_nexus as nexus

config = pulumi.Config()
lab = nexus.Lab(
    "lab",
    image=nexus.LabImageArgs(url=config.require("imageUrl"), sha256=config.get("imageSha256")),
    vm=nexus.LabVmArgs(
        accelerator=nexus.AcceleratorChoice.TCG,
        cpus=config.get_int("cpus") or 1,
        memory_mib=config.get_int("memoryMib") or 1024,
        disk_size=config.get("diskSize") or "2G",
        boot_timeout_seconds=config.get_int("bootTimeoutSeconds") or 60,
    ),
    network=nexus.LabNetworkArgs(ssh_port=config.require_int("sshPort"), forwards=[]),
    guest=nexus.LabGuestArgs(username="nexus", install_packages=False),
    paths=nexus.LabPathsArgs(state_dir=config.require("stateDir"), cache_dir=config.require("cacheDir")),
    # A host-only lab: no Docker in the test image (the guest layers have their own program).
    playground=nexus.LabPlaygroundArgs(enabled=False),
)
pulumi.export("sshCommand", lab.ssh_command)
pulumi.export("sshPort", lab.ssh_port)
pulumi.export("privateKeyPath", lab.private_key_path)
pulumi.export("vmPid", lab.vm_pid)
pulumi.export("stateDir", lab.state_dir)
"""


def lab_consumer_config(folder: Path, image: dict[str, str], ssh_port: int) -> dict[str, Any]:
    """The LAB_PROGRAM's settings: its own keys, and `nexus:` keys as the reference program's
    stack files have them (Pulumi hands these to the package's default provider)."""
    return {
        "consumer:stateDir": str(folder / "state"),
        "consumer:cacheDir": str(folder / "cache"),
        "consumer:imageUrl": image["url"],
        **({"consumer:imageSha256": image["sha256"]} if "sha256" in image else {}),
        "consumer:sshPort": str(ssh_port),
        "nexus:vm": {"memoryMiB": 2048, "accelerator": "auto"},
        "nexus:network": {"sshPort": 2222, "forwards": [{"host": 8080, "guest": 80}]},
        "nexus:playground": {"enabled": False},
    }


# A lab with the playground container, through the Lab's typed arguments: the container runs
# from a root-file-system tarball on this machine and serves a page on its port 80.
LAB_PLAYGROUND_PROGRAM = """
import pulumi
import pulumi_nexus as nexus

config = pulumi.Config()
serve = "exec busybox httpd -f -p 80 -h /srv/www"
lab = nexus.Lab(
    "lab",
    image=nexus.LabImageArgs(url=config.require("imageUrl")),
    vm=nexus.LabVmArgs(
        accelerator=nexus.AcceleratorChoice.TCG,
        cpus=2,
        memory_mib=2048,
        disk_size="10G",
        boot_timeout_seconds=1200,
    ),
    network=nexus.LabNetworkArgs(
        ssh_port=config.require_int("sshPort"),
        forwards=[nexus.host.PortForwardArgs(
            host=config.require_int("httpPort"), guest=80, protocol=nexus.host.Protocol.TCP
        )],
    ),
    guest=nexus.LabGuestArgs(username="nexus", install_packages=False),
    paths=nexus.LabPathsArgs(state_dir=config.require("stateDir"), cache_dir=config.require("cacheDir")),
    playground=nexus.LabPlaygroundArgs(
        rootfs_tarball=config.require("rootfsTarball"),
        command=["sh", "-c", serve],
        ports=[nexus.LabPublishedPortArgs(vm=80, container=80)],
        ready_timeout_seconds=900,
    ),
)
for name in ("sshPort", "privateKeyPath", "vmPid", "stateDir", "dockerVersion",
             "playgroundContainer", "playgroundImageDigest", "playgroundShellScript"):
    pulumi.export(name, getattr(lab, "".join("_" + c.lower() if c.isupper() else c for c in name)))
"""

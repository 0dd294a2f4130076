"""A lab made by the previous release (dynamic providers) is upgraded and keeps its disk.

The previous release's program and modules, as they were at PREVIOUS_RELEASE, make a real
host-only lab (the small Debian test image under TCG); a file is written in the guest. Then
the project switches to this checkout's program: a plain `pulumi up` stops before changing
anything and names the one-time command; `scripts/upgrade-stack` upgrades the stack's
state; `pulumi up` takes the lab over: the same disk file (same inode), the file still in
the guest, no dynamic-provider record left in the state; `destroy` leaves nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from tests.e2e.test_lab import (
    blank_stack,
    free_port,
    image_url,
    lab_config,
    port_is_free,
    qemu_processes_of,
    ssh,
)
from tests.support.processes import running
from tests.support.pulumi_cli import REPO, PulumiCli, project_view

pytestmark = [pytest.mark.engine]

__all__ = ["image_url"]  # the module-scoped fixture that serves the test image

# The last release (landed main) whose program declared its layers through dynamic providers.
PREVIOUS_RELEASE = "06a1d818b383b69e242d0580834955cc953a4eb1"


def previous_release(dest: Path) -> Path:
    """The previous release's program and modules, from git (no worktree to clean up)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "__main__.py", "nexus_components"],
        capture_output=True,
        check=True,
    ).stdout
    dest.mkdir()
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def use_program(project: Path, source: Path) -> None:
    """Point the project at a checkout's program and modules (the .venv stays this one's)."""
    for name in ("__main__.py", "nexus_components"):
        (project / name).unlink()
        (project / name).symlink_to(source / name)


def records(cli: PulumiCli) -> list[tuple[str, str, str]]:
    return [(r["urn"], r["type"], str(r.get("id"))) for r in cli.resources()]


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.vm
def test_a_lab_of_the_previous_release_is_upgraded_without_recreating_its_disk(
    tmp_path: Path, image_url: str
) -> None:
    old = previous_release(tmp_path / "previous-release")
    project = project_view(tmp_path / "project")
    (project / "scripts").symlink_to(REPO / "scripts")
    use_program(project, old)
    cli = PulumiCli(project, tmp_path / "backend", "upgrade", project / "Pulumi.upgrade.yaml")
    ssh_port, http_port = free_port(), free_port()
    cli.init(lab_config(tmp_path, image_url, ssh_port, http_port))
    state_dir = tmp_path / "state"
    disk = state_dir / "disk.qcow2"
    try:
        cli.up()
        outputs = cli.outputs()
        old_pid = outputs["vmPid"]
        ssh(outputs, "echo written-before-the-upgrade > /home/nexus/kept && sync")
        inode = disk.stat().st_ino
        records_before = records(cli)
        assert any(kind == "pulumi-python:dynamic:Resource" for _, kind, _ in records_before)

        use_program(project, REPO)
        # A plain up refuses the old stack before changing anything, naming the command.
        refused = cli.up(check=False)
        said = output_of(refused)
        assert refused.returncode != 0
        assert f"run `scripts/upgrade-stack {cli.stack}` once" in said, said
        assert "Traceback" not in said and "ModuleNotFoundError" not in said, said
        # Nothing changed: the same records (secrets are encrypted anew on each save) and VM.
        assert records(cli) == records_before and qemu_processes_of(state_dir) == [old_pid]

        upgraded = subprocess.run(
            [str(project / "scripts" / "upgrade-stack"), cli.stack],
            cwd=project,
            env=cli.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert upgraded.returncode == 0, output_of(upgraded)
        assert "upgrading its state once" in upgraded.stderr, upgraded.stderr

        up = cli.up()
        assert "kept the stack's disk" in up.stdout, up.stdout
        outputs = cli.outputs()
        assert ssh(outputs, "cat /home/nexus/kept") == "written-before-the-upgrade"
        assert disk.stat().st_ino == inode, "the disk file was not made anew"
        exported = cli.run("stack", "export", "--stack", cli.stack).stdout
        assert exported.count("__provider") == 0
        types = {r["type"] for r in json.loads(exported)["deployment"]["resources"]}
        assert "pulumi-python:dynamic:Resource" not in types, types
        assert {"nexus:index:Lab", "nexus:host:OverlayDisk", "nexus:host:QemuVm"} <= types, types
        assert qemu_processes_of(state_dir) == [outputs["vmPid"]]
        again = cli.up("--expect-no-changes")
        assert again.returncode == 0
        rerun = subprocess.run(
            [str(project / "scripts" / "upgrade-stack"), cli.stack],
            cwd=project,
            env=cli.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert rerun.returncode == 0 and "nothing to upgrade" in rerun.stderr, output_of(rerun)
        last_pid = outputs["vmPid"]
    finally:
        destroyed = cli.destroy(check=False)
        for leftover in qemu_processes_of(state_dir):
            os.kill(leftover, signal.SIGKILL)
    assert destroyed.returncode == 0, output_of(destroyed)
    assert not running(last_pid) and qemu_processes_of(state_dir) == []
    assert port_is_free(ssh_port) and port_is_free(http_port)
    assert not state_dir.exists()
    assert cli.resources() == []


def test_scripts_up_upgrades_a_stack_of_the_previous_release_by_itself(
    tmp_path: Path, blank_image: dict[str, str]
) -> None:
    """Without booting a guest: the previous release makes every file of the lab but the VM
    (its SSH port is taken), then `scripts/up` of this checkout upgrades the stack on its own
    and takes the files over, the disk included, before QEMU refuses the same taken port."""
    old = previous_release(tmp_path / "previous-release")
    state_dir = tmp_path / "state"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        cli = blank_stack(tmp_path, blank_image, "auto", network={"sshPort": holder.getsockname()[1]})
        project = cli.project_dir
        (project / "scripts").symlink_to(REPO / "scripts")
        use_program(project, old)
        assert cli.up(check=False).returncode != 0
        inode = (state_dir / "disk.qcow2").stat().st_ino
        assert "__provider" in cli.run("stack", "export", "--stack", cli.stack).stdout

        use_program(project, REPO)
        up = subprocess.run(
            [str(project / "scripts" / "up"), cli.stack, "--yes", "--skip-preview", "--non-interactive"],
            cwd=project,
            env={**cli.env(), "NEXUS_SETUP_DONE": "1"},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    said = output_of(up)
    assert "upgrading its state once" in up.stderr, said
    assert "kept the stack's disk" in up.stdout, said
    assert "is already in use" in said and "Traceback" not in said, said
    assert (state_dir / "disk.qcow2").stat().st_ino == inode
    assert "__provider" not in cli.run("stack", "export", "--stack", cli.stack).stdout
    destroyed = cli.destroy(check=False)
    assert destroyed.returncode == 0, output_of(destroyed)
    assert not state_dir.exists() and cli.resources() == []

"""The README's TypeScript example brings up a real host-only lab, under TCG.

examples/typescript, copied outside the repository with the `nexus` package added, boots the
cached Debian test image through nexus:index:Lab: SSH answers through the `sshCommand` it
exports, a second `up` changes nothing, and `destroy` leaves no QEMU, no listening port, no
stack directory, and nothing for `pulumi stack rm` to refuse: the stack's file goes with it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_lab import image_url, port_is_free, qemu_processes_of
from tests.support.language_examples import Example
from tests.support.nexus_consumer import free_port, output_of

pytestmark = [pytest.mark.engine, pytest.mark.vm]

__all__ = ["image_url"]  # the module-scoped fixture that serves the test image


def run_ssh_command(ssh_command: str, command: str) -> str:
    """The exported command as a user runs it, without prompts, plus one command."""
    ssh, *rest = shlex.split(ssh_command)
    argv = [ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", *rest, command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv} failed: {result.stderr}"
    return result.stdout.strip()


def test_the_typescript_example_brings_up_a_host_only_lab_and_destroys_it(
    typescript_example: Example, tmp_path: Path, home: Path, image_url: str
) -> None:
    ssh_port = free_port()
    lab = typescript_example.stack(
        tmp_path,
        home,
        "e2e",
        {
            "imageUrl": image_url,
            "accelerator": "tcg",
            "cpus": "2",
            "memoryMib": "1024",
            "diskSize": "4G",
            "sshPort": str(ssh_port),
            "username": "nexus",
            "installPackages": "false",
        },
    )
    state_dir = home / ".nexus-nested-vm" / "stacks" / "e2e"
    try:
        up = lab.up()
        assert "nexus:index:Lab" in up.stdout and "nexus:host:QemuVm" in up.stdout, output_of(up)
        outputs = lab.outputs()
        assert outputs["accelerator"] == "tcg"
        assert f"-p {ssh_port} " in outputs["sshCommand"], outputs
        assert run_ssh_command(outputs["sshCommand"], "whoami") == "nexus"
        assert len(qemu_processes_of(state_dir)) == 1

        again = lab.up("--expect-no-changes")
        assert "8 unchanged" in again.stdout, output_of(again)
    finally:
        destroyed = lab.destroy(check=False)
    assert destroyed.returncode == 0, output_of(destroyed)
    assert qemu_processes_of(state_dir) == []
    assert port_is_free(ssh_port)
    assert not state_dir.exists()
    assert lab.resources() == []
    checkpoint = tmp_path / "backend" / ".pulumi" / "stacks" / typescript_example.name() / "e2e.json"
    assert checkpoint.is_file()
    lab.run("stack", "rm", "--yes", "--stack", lab.stack)
    assert not checkpoint.exists()  # Pulumi keeps only its own backup copies beside it
    assert json.loads(lab.run("stack", "ls", "--json").stdout) == []

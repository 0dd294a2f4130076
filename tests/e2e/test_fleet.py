"""scripts/fleet end to end: a fleet of real labs, two at a time, through the project's program.

Two host-only labs (TCG, no packages, no playground; their own ports and state directories,
one shared image cache) and one whose settings have a misspelt key: `up` brings the two up
and fails the third alone; a second `up` of the two changes nothing; `destroy` leaves nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_lab import free_port, lab_config, port_is_free, qemu_processes_of, ssh
from tests.e2e.test_lab import image_url as image_url  # a module fixture, shared
from tests.support.fleet import run_fleet, summary, write_description
from tests.support.pulumi_cli import PulumiCli, project_view

pytestmark = [pytest.mark.engine, pytest.mark.vm]

GOOD = ("east", "west")
# The e2e labs' settings (tests/e2e/test_lab.py) every lab of the fleet shares.
SHARED = ("nexus:image", "nexus:vm", "nexus:guest", "nexus:playground")


def lab(tmp_path: Path, name: str, ports: tuple[int, int], **config: Any) -> dict[str, Any]:
    ssh_port, http_port = ports
    return {
        "name": name,
        "config": {
            "nexus:network": {"sshPort": ssh_port, "forwards": [{"host": http_port, "guest": 80}]},
            "nexus:paths": {"stateDir": str(tmp_path / name), "cacheDir": str(tmp_path / "cache")},
            **config,
        },
    }


def test_a_fleet_comes_up_two_at_a_time_fails_one_lab_alone_converges_and_goes(
    tmp_path: Path, image_url: str
) -> None:
    project = project_view(tmp_path / "project")
    # For the stacks' outputs; the fleet makes the stacks itself.
    cli = PulumiCli(project, tmp_path / "backend", "east", project / "Pulumi.east.yaml")
    cli.backend_dir.mkdir()
    ports = {name: (free_port(), free_port()) for name in (*GOOD, "typo")}
    common = lab_config(tmp_path, image_url, 0, 0)
    description = write_description(
        tmp_path / "fleet.yaml",
        {
            "project": "project",
            "parallel": 2,
            "defaults": {"config": {key: common[key] for key in SHARED}},
            "labs": [
                lab(tmp_path, "east", ports["east"]),
                # memoryMB for memoryMiB: the program refuses it before anything is made.
                lab(tmp_path, "typo", ports["typo"], **{"nexus:vm": {"memoryMB": 1024}}),
                lab(tmp_path, "west", ports["west"]),
            ],
        },
    )
    try:
        up = run_fleet(cli, description, "up")
        output = up.stdout + up.stderr
        print(up.stdout)
        assert up.returncode == 1, output
        rows = summary(up.stdout)
        assert sorted(rows) == ["east", "typo", "west"], output
        assert rows["typo"]["RESULT"] == "failed", output
        assert "nexus:vm.memoryMB: unknown key" in rows["typo"]["ERROR"], output
        assert not (tmp_path / "typo").exists(), "the bad lab made nothing"
        pids = {}
        for name in GOOD:
            assert rows[name]["RESULT"] == "ready", output
            assert rows[name]["STACK"] == name and int(rows[name]["SECONDS"]) > 0
            # The provider's long steps show as the lab's progress lines.
            assert f"{name}  [vm] ready after" in up.stdout, up.stdout
            outputs = PulumiCli(project, cli.backend_dir, name, project / f"Pulumi.{name}.yaml").outputs()
            assert outputs["sshPort"] == ports[name][0]
            assert ssh(outputs, "whoami") == "nexus"
            pids[name] = outputs["vmPid"]

        again = run_fleet(cli, description, "up", "--lab", "east", "--lab", "west")
        assert again.returncode == 0, again.stdout + again.stderr
        rows = summary(again.stdout)
        assert sorted(rows) == list(GOOD)
        assert all(rows[name]["CHANGES"] == "no changes" for name in GOOD), again.stdout
        assert "fleet up: 2 ready; nothing changed" in again.stdout
        assert "stack settings:" not in again.stdout, "the stacks already had their settings"
        for name in GOOD:
            outputs = PulumiCli(project, cli.backend_dir, name, project / f"Pulumi.{name}.yaml").outputs()
            assert outputs["vmPid"] == pids[name], "the same VM runs on"
    finally:
        gone = run_fleet(cli, description, "destroy")

    assert gone.returncode == 0, gone.stdout + gone.stderr
    rows = summary(gone.stdout)
    assert [rows[name]["RESULT"] for name in (*GOOD, "typo")] == ["destroyed"] * 3, gone.stdout
    for name in (*GOOD, "typo"):
        assert qemu_processes_of(tmp_path / name) == []
        assert not (tmp_path / name).exists()
        assert all(port_is_free(port) for port in ports[name])

"""scripts/fleet end to end: a fleet of real labs on a remote host, as many at once as the
memory given to the fleet holds (two), through the project's program.

Three host-only labs (TCG, no packages, no playground) on one server (`nexus:host`, the
"server" of tests/support/remote_server.py: its own user, home and sshd), each with its own
ports and state directory there and one shared image cache, and a fourth lab whose settings
have a misspelt key: `up` brings the three up and fails the fourth alone; a second `up`
changes nothing; `destroy` leaves nothing on the server.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_lab import free_port, lab_config, port_is_free
from tests.e2e.test_lab import image_url as image_url  # a module fixture, shared
from tests.support.fleet import run_fleet, summary, write_description
from tests.support.pulumi_cli import PulumiCli, cache_root, project_view
from tests.support.remote_server import remote_server

pytestmark = [pytest.mark.engine, pytest.mark.vm]

GOOD = ("east", "west", "north")
# Two labs' VMs (1024 MiB each, plus QEMU's own 256) and not three.
MEMORY_MIB = 2600
# The e2e labs' settings (tests/e2e/test_lab.py) every lab of the fleet shares.
SHARED = ("nexus:image", "nexus:vm", "nexus:guest", "nexus:playground")


def lab(name: str, ports: tuple[int, int], **config: Any) -> dict[str, Any]:
    ssh_port, http_port = ports
    return {
        "name": name,
        # Each stack's directory is the server's default for it; the image cache is shared there.
        "config": {
            "nexus:network": {"sshPort": ssh_port, "forwards": [{"host": http_port, "guest": 80}]},
            **config,
        },
    }


def connect(outputs: dict[str, Any], command: str) -> str:
    """Through the lab's connect script, as its user would: via the server, as a jump host."""
    done = subprocess.run(
        [outputs["connectScript"], command], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def most_at_once(output: str) -> int:
    """How many labs were under way at once, by the fleet's progress lines in their order."""
    under_way = most = 0
    for line in output.splitlines():
        if re.match(r"\s*\d+s  \S+ +started: up", line):
            under_way += 1
            most = max(most, under_way)
        elif re.match(r"\s*\d+s  \S+ +(ready|failed) after", line):
            under_way -= 1
    return most


def test_a_fleet_on_a_remote_host_comes_up_as_memory_allows_fails_one_lab_alone_converges_and_goes(
    tmp_path: Path, image_url: str
) -> None:
    project = project_view(tmp_path / "project")
    # For the stacks' outputs; the fleet makes the stacks itself.
    cli = PulumiCli(project, tmp_path / "backend", "east", project / "Pulumi.east.yaml")
    cli.backend_dir.mkdir()
    # This side's home: the labs' key pairs and connect scripts are all it gets.
    cli.extra_env["HOME"] = str(tmp_path / "home")
    # scripts/fleet finds the toolchain in the cache under HOME unless told where it is.
    cli.extra_env["NEXUS_CACHE_DIR"] = str(cache_root())
    (tmp_path / "home").mkdir()
    ports = {name: (free_port(), free_port()) for name in (*GOOD, "typo")}
    common = lab_config(tmp_path, image_url, 0, 0)
    with remote_server(tmp_path / "server") as server:
        host = {
            "ssh": f"{server.user}@{server.address}:{server.port}",
            "keyFile": str(server.private_key),
            "knownHostsFile": str(server.known_hosts),
        }
        description = write_description(
            tmp_path / "fleet.yaml",
            {
                "project": "project",
                "parallel": 4,  # the memory is the bound
                "defaults": {"config": {**{key: common[key] for key in SHARED}, "nexus:host": host}},
                "labs": [
                    lab("east", ports["east"]),
                    # memoryMB for memoryMiB: the program refuses it before anything is made.
                    lab("typo", ports["typo"], **{"nexus:vm": {"memoryMB": 1024}}),
                    lab("west", ports["west"]),
                    lab("north", ports["north"]),
                ],
            },
        )
        stacks = server.home / ".nexus-nested-vm" / "stacks"
        run_the_fleet(tmp_path, project, cli, description, ports)
        assert server.processes() == [], server.processes()
        assert not stacks.exists() or list(stacks.iterdir()) == []
        assert [p for p in (tmp_path / "home").rglob("*") if p.is_file()] == []


def run_the_fleet(
    tmp_path: Path, project: Path, cli: PulumiCli, description: Path, ports: dict[str, tuple[int, int]]
) -> None:
    try:
        up = run_fleet(cli, description, "up", "--memory", str(MEMORY_MIB))
        output = up.stdout + up.stderr
        print(up.stdout)
        assert up.returncode == 1, output
        assert f": {MEMORY_MIB} MiB (--memory)" in up.stdout, output
        # Four labs of 1280 MiB and room for two: the others waited, and said so.
        assert re.search(r"\S+ +waits for memory on \S+: it needs 1280 MiB", up.stdout), output
        assert most_at_once(up.stdout) == 2, output
        rows = summary(up.stdout)
        assert sorted(rows) == ["east", "north", "typo", "west"], output
        assert rows["typo"]["RESULT"] == "failed", output
        assert "nexus:vm.memoryMB: unknown key" in rows["typo"]["ERROR"], output
        assert not (tmp_path / "home" / ".nexus-nested-vm" / "stacks" / "typo").exists(), "it made nothing"
        pids = {}
        for name in GOOD:
            assert rows[name]["RESULT"] == "ready", output
            assert rows[name]["STACK"] == name and int(rows[name]["SECONDS"]) > 0
            # The provider's long steps show as the lab's progress lines.
            assert re.search(rf"{name} +\[vm\] ready after", up.stdout), up.stdout
            outputs = PulumiCli(project, cli.backend_dir, name, project / f"Pulumi.{name}.yaml").outputs()
            assert outputs["sshPort"] == ports[name][0]
            assert connect(outputs, "whoami") == "nexus"
            pids[name] = outputs["vmPid"]

        again = run_fleet(cli, description, "up", *(arg for name in GOOD for arg in ("--lab", name)))
        assert again.returncode == 0, again.stdout + again.stderr
        rows = summary(again.stdout)
        assert sorted(rows) == sorted(GOOD)
        assert all(rows[name]["CHANGES"] == "no changes" for name in GOOD), again.stdout
        assert "fleet up: 3 ready; nothing changed" in again.stdout
        assert "stack settings:" not in again.stdout, "the stacks already had their settings"
        for name in GOOD:
            outputs = PulumiCli(project, cli.backend_dir, name, project / f"Pulumi.{name}.yaml").outputs()
            assert outputs["vmPid"] == pids[name], "the same VM runs on"
    finally:
        gone = run_fleet(cli, description, "destroy")

    assert gone.returncode == 0, gone.stdout + gone.stderr
    rows = summary(gone.stdout)
    assert [rows[name]["RESULT"] for name in (*GOOD, "typo")] == ["destroyed"] * 4, gone.stdout
    for name in (*GOOD, "typo"):
        assert all(port_is_free(port) for port in ports[name])

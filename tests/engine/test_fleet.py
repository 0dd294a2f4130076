"""scripts/fleet through the real Pulumi engine, without a VM: Ctrl-C in the middle of a fleet.

A one-resource program (pulumi-command's local.Command, which waits) stands in for the lab,
so the interruption lands while an update runs. The VM fleet itself is tests/e2e/test_fleet.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.fleet import fleet_argv, run_fleet, summary, write_description
from tests.support.processes import processes_where, running
from tests.support.pulumi_cli import REPO, PulumiCli, scratch_program

pytestmark = pytest.mark.engine

# The fleet sets only `nexus:` keys, so the stand-in reads its settings from there. Like the
# project's program, it leaves quietly when the engine ends the run.
PROGRAM = """
import pulumi
import pulumi_command as command

from nexus_components.interrupt import leave_quietly_on_interrupt

leave_quietly_on_interrupt()

config = pulumi.Config("nexus")
command.local.Command(
    "wait",
    create='touch "$MARKS.started" && exec sleep "$WAIT"',
    delete='rm -f "$MARKS.started"',
    environment={"MARKS": config.require("marks"), "WAIT": str(config.require_int("wait"))},
)
"""


def description(tmp_path: Path, *, wait: int, parallel: int) -> Path:
    return write_description(
        tmp_path / "fleet.yaml",
        {
            "project": "project",
            "parallel": parallel,
            "defaults": {"config": {"nexus:wait": wait}},
            "labs": [
                {"name": name, "config": {"nexus:marks": str(tmp_path / name)}}
                for name in ("first", "second")
            ],
        },
    )


def processes_with(marks: Path) -> list[int]:
    """Live processes the stand-in started for a lab (its MARKS is in their environment)."""
    needle = f"MARKS={marks}\0".encode()
    return processes_where(lambda proc: needle in (proc / "environ").read_bytes() and running(int(proc.name)))


def stacks(cli: PulumiCli) -> list[str]:
    listed = cli.run("stack", "ls", "--json")
    return sorted(entry["name"] for entry in json.loads(listed.stdout))


def test_ctrl_c_cancels_the_running_update_starts_no_other_and_a_rerun_converges(tmp_path: Path) -> None:
    cli = scratch_program(tmp_path, "fleet-probe", PROGRAM, extra_env={"PYTHONPATH": str(REPO)})
    cli.backend_dir.mkdir()
    fleet = subprocess.Popen(
        fleet_argv(description(tmp_path, wait=600, parallel=1), "up"),
        cwd=tmp_path,
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "first.started").exists():
            assert fleet.poll() is None and time.monotonic() < deadline, "the first lab's update never ran"
            time.sleep(0.2)
        # The fleet alone, as a terminal's Ctrl-C reaches it (its updates have their own groups).
        os.kill(fleet.pid, signal.SIGINT)
        output, _ = fleet.communicate(timeout=180)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()

    assert fleet.returncode == 130, output
    assert "Ctrl-C: labs not started yet will not start" in output
    rows = summary(output)
    assert rows["first"]["RESULT"] == "interrupted", output
    assert "run the fleet again to finish it" in rows["first"]["ERROR"]
    assert rows["second"]["RESULT"] == "not started" and rows["second"]["CHANGES"] == "nothing changed"
    assert "`scripts/fleet up fleet.yaml` again goes on from there" in output
    assert "Traceback" not in output, output
    # Nothing runs on: the update was cancelled, its command with it; the second lab never began.
    assert processes_with(tmp_path / "first") == []
    assert stacks(cli) == ["first"]
    assert not (tmp_path / "second.started").exists()

    again = run_fleet(cli, description(tmp_path, wait=0, parallel=2), "up")
    assert again.returncode == 0, again.stdout + again.stderr
    rows = summary(again.stdout)
    assert [rows[name]["RESULT"] for name in ("first", "second")] == ["ready", "ready"], again.stdout
    assert (tmp_path / "second.started").exists()
    assert "pending operations" not in again.stdout + again.stderr

    gone = run_fleet(cli, tmp_path / "fleet.yaml", "destroy")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not (tmp_path / "first.started").exists() and not (tmp_path / "second.started").exists()
    # The user's selected stack is theirs: the fleet names its stacks and selects none.
    assert cli.run("stack", "--show-name", check=False).returncode != 0

"""scripts/bench-layers on a real lab under TCG, and its errors for a bad stack or layer.

The lab is the one tests/e2e/test_lab.py boots (its fixtures and config, reused): the
host and VM columns are measured, and the container and inner-VM columns say `not up`
until the stack has those layers.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.layer_overhead.results import WORKLOADS
from tests.e2e.test_lab import free_port, lab_config, lab_stack, qemu_processes_of, ssh
from tests.e2e.test_lab import image_url as image_url  # a module fixture, shared
from tests.support.pulumi_cli import REPO, PulumiCli

BENCH = REPO / "scripts" / "bench-layers"


def bench_layers(cli: PulumiCli, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, pointed at the test's own project and throwaway backend."""
    env = cli.env()
    env["NEXUS_BENCH_PULUMI"] = shlex.join(["pulumi", "-C", str(cli.project_dir)])
    result = subprocess.run(
        [str(BENCH), *args], env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    print(result.stdout, result.stderr)
    return result


def table_rows(stdout: str) -> tuple[list[str], list[str]]:
    """The table's header line and its rows, one per workload."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("workload "))
    return lines[start].split("  "), lines[start + 2 : start + 2 + len(WORKLOADS)]


@pytest.mark.engine
def test_no_such_stack_and_a_stack_that_is_not_up(tmp_path: Path) -> None:
    cli = lab_stack(tmp_path, "idle")
    cli.init({})
    missing = bench_layers(cli, "ghost", "--quick")
    assert missing.returncode == 1
    assert "bench-layers: no stack named 'ghost'" in missing.stderr
    assert "scripts/pulumi stack ls" in missing.stderr
    idle = bench_layers(cli, "idle", "--quick")
    assert idle.returncode == 1
    assert "stack 'idle' is not up" in idle.stderr
    assert "scripts/pulumi up --stack idle" in idle.stderr
    assert "Traceback" not in missing.stderr + idle.stderr


@pytest.mark.engine
@pytest.mark.vm
def test_bench_layers_measures_host_and_vm_under_tcg(tmp_path: Path, image_url: str) -> None:
    cli = lab_stack(tmp_path, "bench")
    cli.init(lab_config(tmp_path, image_url, free_port(), free_port()))
    state_dir = tmp_path / "state"
    try:
        cli.up()
        outputs = cli.outputs()
        result = bench_layers(cli, "bench", "--quick", "--repeats", "2")
        assert result.returncode == 0, result.stderr

        # A progress line per layer and workload, and one for each layer that is not up.
        for layer in ("host", "vm"):
            for index in range(1, len(WORKLOADS) + 1):
                assert f"[{layer} {index}/{len(WORKLOADS)}] " in result.stdout
        assert "[container] not up: the stack has no playground container" in result.stdout
        assert "[inner-vm] not up: the stack has no inner VM" in result.stdout

        # A row per workload, a column per layer naming its accelerator.
        header, rows = table_rows(result.stdout)
        columns = [cell.strip() for cell in header if cell.strip()]
        assert columns == ["workload", "unit", "host [native]", "vm [tcg]", "container [tcg]", "inner-vm [-]"]
        assert [row.split("  ")[0].strip() for row in rows] == [w.title for w in WORKLOADS]
        for row in rows:
            assert row.count("not up") == 2, row
            assert "failed" not in row and "n/a" not in row, row

        # The same figures as JSON, every cell measured twice, and a chart, in the stack's directory.
        document = json.loads((state_dir / "bench-layers.json").read_text())
        assert [(layer["name"], layer["accelerator"], layer["up"]) for layer in document["layers"]] == [
            ("host", "native", True),
            ("vm", "tcg", True),
            ("container", "tcg", False),
            ("inner-vm", "-", False),
        ]
        cells = {(r["workload"], r["layer"]): r for r in document["results"]}
        assert set(cells) == {(w.name, layer) for w in WORKLOADS for layer in ("host", "vm")}
        for cell in cells.values():
            assert len(cell["values"]) == 2 and cell["median"] > 0 and cell["percentOfHost"] > 0, cell
        vm_layer = next(layer for layer in document["layers"] if layer["name"] == "vm")
        assert vm_layer["platform"] == "linux/amd64"
        chart = ET.parse(state_dir / "bench-layers.svg").getroot()  # noqa: S314 (our own output)
        assert chart.tag == "{http://www.w3.org/2000/svg}svg"

        # Nothing of the benchmark is left in the VM: its program, its files, its HTTP server.
        assert ssh(outputs, "ls /var/tmp | grep -c nexus-bench || true") == "0"
        assert ssh(outputs, "pgrep -x nexus-bench || echo none") == "none"

        # A VM whose SSH no longer answers is an error naming the layer.
        ssh(outputs, "sudo -n systemctl stop ssh.service")
        unreachable = bench_layers(cli, "bench", "--quick")
        assert unreachable.returncode == 1
        assert "layer vm: unreachable over SSH" in unreachable.stderr, unreachable.stderr
    finally:
        destroyed = cli.destroy(check=False)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert qemu_processes_of(state_dir) == []
    assert not state_dir.exists(), "destroy removes the benchmark's results with the stack"

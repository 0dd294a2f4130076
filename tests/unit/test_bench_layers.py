"""Unit tests for the layer-overhead benchmark (bench/layer_overhead).

The pure parts (parsing, statistics, table, JSON, SVG, reading a deployment, port routes)
are tested directly; the workload program is built with the real Go toolchain and run on
this host, the HTTP workload included, through the same runner the VM layers use.
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.layer_overhead.errors import BenchError
from bench.layer_overhead.lab import Forward, Lab, lab_from_deployment, pulumi_failure
from bench.layer_overhead.layers import (
    GO_ARCH,
    ContainerShell,
    HostShell,
    Layer,
    VmShell,
    find_container,
    find_host,
    find_inner_vm,
    host_platform,
    http_routes_to_container,
    http_routes_to_vm,
    not_up,
)
from bench.layer_overhead.program import build_program, source_digest
from bench.layer_overhead.render import format_value, render_svg, render_table
from bench.layer_overhead.results import (
    WORKLOADS,
    LayerStatus,
    Measurement,
    Report,
    Settings,
    parse_measurement,
    percent_of_host,
)
from bench.layer_overhead.run import run_batch, run_benchmark
from nexus_components.core.ssh import SshTarget
from nexus_components.host.paths import VmPaths, remove_stack_files

SVG = "{http://www.w3.org/2000/svg}"
TARGET = SshTarget("127.0.0.1", 2222, "nexus", Path("/state/ssh/id_ed25519"))


# --- parsing the program's output ----------------------------------------------------------------


def test_parse_measurement_reads_the_values_and_note() -> None:
    line = '{"workload":"cpu-single","unit":"Mops/s","values":[10,12.5,11],"note":"x"}\n'
    measurement = parse_measurement("vm", "cpu-single", line)
    assert measurement == Measurement("cpu-single", "vm", (10.0, 12.5, 11.0), "x")
    assert measurement.median == 11.0
    assert measurement.spread_percent == pytest.approx(2.5 / 11 * 100)


@pytest.mark.parametrize(
    ("stdout", "fragment"),
    [
        ("", "printed nothing"),
        ("Segmentation fault\n", "printed no JSON"),
        ('{"workload":"memory","unit":"Mops/s","values":[1]}', "unexpected result"),
        ('{"workload":"cpu-single","unit":"MiB/s","values":[1]}', "unexpected result"),
        ('{"workload":"cpu-single","unit":"Mops/s","values":[]}', "unexpected result"),
        ('{"workload":"cpu-single","unit":"Mops/s","values":[-1]}', "unexpected result"),
        ('{"workload":"cpu-single","unit":"Mops/s","values":["9"]}', "unexpected result"),
        ("[1, 2]", "unexpected result"),
    ],
)
def test_parse_measurement_names_the_layer_on_bad_output(stdout: str, fragment: str) -> None:
    with pytest.raises(BenchError) as raised:
        parse_measurement("container", "cpu-single", stdout)
    assert str(raised.value).startswith("layer container: cpu-single")
    assert fragment in str(raised.value)


def test_single_repeat_has_no_spread() -> None:
    assert Measurement("memory", "vm", (5.0,)).spread_percent is None


def test_percent_of_host_inverts_latency() -> None:
    assert percent_of_host("cpu-single", 50, 200) == 25
    assert percent_of_host("http", 4.0, 1.0) == 25  # 4x the host's latency is 25 % of host
    assert percent_of_host("http", 0.0, 1.0) is None


def test_settings_bound_the_time_and_refuse_zero_repeats() -> None:
    assert Settings.default() == Settings(seconds=1.5, repeats=3, file_mib=32)
    assert Settings.default(quick=True).repeats == 1
    assert Settings.default(quick=True, repeats=5).repeats == 5
    with pytest.raises(BenchError, match="--repeats: got 0; allowed: 1 or more"):
        Settings.default(repeats=0)
    # Seven workloads at the default settings stay well under a minute of measuring per layer.
    default = Settings.default()
    assert len(WORKLOADS) * default.repeats * default.seconds < 40


# --- table, JSON, chart ---------------------------------------------------------------------------


def sample_report(stack: str = "lab") -> Report:
    layers = (
        LayerStatus("host", "native", True, platform="linux/amd64"),
        LayerStatus("vm", "tcg", True, platform="linux/amd64"),
        LayerStatus("container", "tcg", False, "the stack has no playground container"),
        LayerStatus("inner-vm", "-", False, "the stack has no inner VM"),
    )
    measurements = [Measurement(w.name, "host", (100.0, 110.0, 90.0)) for w in WORKLOADS if w.name != "http"]
    measurements += [Measurement(w.name, "vm", (10.0, 10.0, 10.0)) for w in WORKLOADS if w.name != "http"]
    measurements += [
        Measurement("http", "host", (0.5, 0.5, 0.5)),
        Measurement("http", "vm", (), error="GET http://127.0.0.1:1/: connection refused"),
    ]
    return Report(stack, "2026-11-27T03:00:00+00:00", Settings.default(), layers, tuple(measurements))


def test_table_has_a_row_per_workload_and_a_column_per_layer_with_its_accelerator() -> None:
    table = render_table(sample_report())
    lines = table.splitlines()
    assert lines[0].split() == [
        "workload", "unit", "host", "[native]", "vm", "[tcg]", "container", "[tcg]", "inner-vm", "[-]"
    ]  # fmt: skip
    rows = lines[2 : 2 + len(WORKLOADS)]
    assert [row.startswith(w.title) for row, w in zip(rows, WORKLOADS, strict=True)] == [True] * len(
        WORKLOADS
    )
    cpu = rows[0]
    assert cpu.split()[4:10] == ["100", "100%", "±20%", "10.0", "10%", "±0%"]
    assert cpu.count("not up") == 2
    http = rows[-1]
    assert "failed" in http
    assert "vm / http: GET http://127.0.0.1:1/: connection refused" in table
    assert "container: not up (the stack has no playground container)" in table
    assert "seed's claims" in table


def test_format_value_keeps_three_figures() -> None:
    assert [format_value(v) for v in (4521.7, 12.34, 1.234, 0.4123)] == ["4522", "12.3", "1.23", "0.412"]


def test_json_carries_every_cell_with_its_percentage() -> None:
    document = json.loads(json.dumps(sample_report().to_json()))
    assert [layer["name"] for layer in document["layers"]] == ["host", "vm", "container", "inner-vm"]
    assert [layer["up"] for layer in document["layers"]] == [True, True, False, False]
    cell = next(r for r in document["results"] if r["workload"] == "memory" and r["layer"] == "vm")
    assert cell["median"] == 10.0 and cell["percentOfHost"] == pytest.approx(10.0)
    failed = next(r for r in document["results"] if r["workload"] == "http" and r["layer"] == "vm")
    assert failed["median"] is None and failed["percentOfHost"] is None and "refused" in failed["error"]
    assert document["settings"] == {"secondsPerMeasurement": 1.5, "repeats": 3, "fileMiB": 32}


def test_svg_has_a_bar_group_per_workload_and_escapes_text() -> None:
    svg = render_svg(sample_report(stack="a<b&c"))
    root = ET.fromstring(svg)  # noqa: S314 (our own output); well-formed despite the stack name
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.find(f"{SVG}title") is not None]
    titles = [bar.findtext(f"{SVG}title") or "" for bar in bars]
    # Host and VM bars for the six workloads that worked; the failed HTTP cell has no VM bar.
    assert len(bars) == 2 * (len(WORKLOADS) - 1) + 1
    assert sum(t.startswith("vm [tcg]") for t in titles) == len(WORKLOADS) - 1
    texts = [text.text or "" for text in root.iter(f"{SVG}text")]
    assert any("a<b&c" in text for text in texts)
    assert "not up: container, inner-vm" in texts
    labels = " ".join(texts)  # a long title takes two lines
    for workload in WORKLOADS:
        assert workload.title in labels


# --- reading the stack ------------------------------------------------------------------------------


def deployment(
    outputs: dict[str, Any],
    forwards: list[dict[str, Any]] | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "resources": [
            *(extra or []),
            {"urn": "urn:pulumi:lab::nexus-nested-vm::pulumi:pulumi:Stack::nexus-nested-vm-lab",
             "type": "pulumi:pulumi:Stack", "outputs": outputs},
            {"urn": "urn:pulumi:lab::nexus-nested-vm::nexus:index:Lab$nexus:host:QemuVm::nexus-vm",
             "type": "nexus:host:QemuVm",
             "outputs": {"forwards": forwards or [], "pid": 42}},
        ]
    }  # fmt: skip


LAB_OUTPUTS = {
    "sshCommand": "ssh -o StrictHostKeyChecking=no -i /state/ssh/id_ed25519 -p 2222 nexus@127.0.0.1",
    "sshPort": 2222,
    "privateKeyPath": "/state/ssh/id_ed25519",
    "stateDir": "/state",
    "vmPid": 42,
    "accelerator": "tcg",
}


def test_lab_from_deployment_reads_ssh_accelerator_and_forwards() -> None:
    forwards = [
        {"host": 8080, "guest": 80, "protocol": "tcp"},
        {"host": 5353, "guest": 53, "protocol": "udp"},
    ]
    lab = lab_from_deployment("lab", deployment(LAB_OUTPUTS, forwards))
    assert lab.ssh == TARGET
    assert lab.accelerator == "tcg" and lab.vm_pid == 42 and lab.state_dir == Path("/state")
    assert lab.forwards == (Forward(8080, 80),)


def test_container_ports_come_from_the_playground_containers_docker_resource() -> None:
    def container(name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "docker:index/container:Container", "outputs": {"name": name, "ports": ports}}

    extra = [
        container("other", [{"internal": 22, "external": 2200, "protocol": "tcp"}]),
        container(
            "nexus-playground",
            [
                {"internal": 80, "external": 8000, "ip": "0.0.0.0", "protocol": "tcp"},
                {"internal": 53, "external": 53, "protocol": "udp"},
            ],
        ),
    ]
    outputs = {**LAB_OUTPUTS, "playgroundContainer": "nexus-playground"}
    assert lab_from_deployment("lab", deployment(outputs, extra=extra)).container_ports == ((8000, 80),)
    assert lab_from_deployment("lab", deployment(LAB_OUTPUTS, extra=extra)).container_ports == ()


def test_a_stack_without_vm_is_not_up() -> None:
    for broken in ({}, {**LAB_OUTPUTS, "vmPid": 0}):
        with pytest.raises(BenchError) as raised:
            lab_from_deployment("lab", deployment(broken))
        message = str(raised.value)
        assert "stack 'lab' is not up" in message
        assert "scripts/pulumi up --stack lab" in message


def test_a_lab_on_a_server_is_not_measured_against_this_machine() -> None:
    assert lab_from_deployment("lab", deployment({**LAB_OUTPUTS, "host": "local"})).vm_pid == 42
    with pytest.raises(BenchError) as raised:
        lab_from_deployment("lab", deployment({**LAB_OUTPUTS, "host": "alice@lab-server:22"}))
    assert "stack 'lab' runs on alice@lab-server:22 (nexus:host)" in str(raised.value)
    assert "without nexus:host" in raised.value.hint


def test_pulumi_failures_become_next_steps() -> None:
    missing = str(pulumi_failure("nope", "error: no stack named 'nope' found"))
    assert "no stack named 'nope'" in missing and "scripts/pulumi stack ls" in missing
    unselected = str(
        pulumi_failure("(selected)", "error: no stack selected; please use `pulumi stack select`")
    )
    assert "none selected" in unselected


# --- layers: commands and routes --------------------------------------------------------------------


def remote_words(argv: list[str]) -> list[str]:
    """What the remote shell runs: ssh's last argument, split as that shell would."""
    return shlex.split(argv[-1])


def test_vm_commands_are_quoted_and_root_goes_through_sudo() -> None:
    shell = VmShell(TARGET)
    assert remote_words(shell.command(["/var/tmp/nexus-bench", "run", "x; rm -rf /"])) == [
        "/var/tmp/nexus-bench", "run", "x; rm -rf /"
    ]  # fmt: skip
    assert remote_words(shell.command(["id"], as_root=True)) == ["sudo", "-n", "id"]


def test_vm_commands_share_one_ssh_connection() -> None:
    argv = VmShell(TARGET, "/tmp/nexus-bench-x/ssh").command(["id"])
    destination = argv.index("nexus@127.0.0.1")
    assert "ControlPath=/tmp/nexus-bench-x/ssh" in argv[:destination]
    assert "ControlPersist=60" in argv[:destination]
    assert remote_words(argv) == ["id"]


def test_container_commands_run_through_docker_exec_in_the_vm() -> None:
    shell = ContainerShell(VmShell(TARGET), "nexus-playground")
    assert remote_words(shell.command(["/tmp/nexus-bench", "info"])) == [
        "sudo", "-n", "docker", "exec", "-i", "nexus-playground", "/tmp/nexus-bench", "info"
    ]  # fmt: skip
    assert remote_words(shell.command(["id"], as_root=True))[4:7] == ["-i", "-u", "0"]


def test_http_routes_chain_forwards_to_published_container_ports() -> None:
    forwards = [Forward(8080, 80), Forward(8443, 443), Forward(9000, 9000)]
    assert [(r.host_port, r.layer_port) for r in http_routes_to_container(forwards, [(80, 8000)])] == [
        (8080, 8000)
    ]
    # A VM port the container publishes is not free for a server in the VM itself.
    assert [r.host_port for r in http_routes_to_vm(forwards, [80])] == [8443, 9000]


def lab(outputs: dict[str, Any]) -> Lab:
    return Lab("lab", Path("/state"), "tcg", TARGET, 42, (Forward(8080, 80),), (), outputs)


def test_a_stack_without_playground_reports_the_container_not_up() -> None:
    vm = Layer("vm", "tcg", VmShell(TARGET), platform="linux/amd64")
    container = find_container(lab(LAB_OUTPUTS), vm, VmShell(TARGET))
    assert not container.up
    assert container.not_up_reason == "the stack has no playground container"
    assert container.accelerator == "tcg"


def test_an_inner_vm_without_a_way_in_is_not_up_but_shows_its_accelerator() -> None:
    vm = Layer("vm", "tcg", VmShell(TARGET))
    container = Layer("container", "tcg", ContainerShell(VmShell(TARGET), "nexus-playground"))
    absent = find_inner_vm(lab(LAB_OUTPUTS), container)
    assert (absent.up, absent.accelerator, absent.not_up_reason) == (False, "-", "the stack has no inner VM")
    running = find_inner_vm(lab({**LAB_OUTPUTS, "innerVmAccelerator": "kvm"}), container)
    assert not running.up and running.accelerator == "kvm"
    assert "no way to run commands in it" in running.not_up_reason
    assert vm.up


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_the_inner_vm_is_reached_through_its_generated_script(tmp_path: Path) -> None:
    """connect-inner-vm.sh takes one remote shell line, as ssh does; here it runs it locally."""
    container = Layer("container", "tcg", ContainerShell(VmShell(TARGET), "nexus-playground"))
    way_in = script(tmp_path / "connect-inner-vm.sh", 'exec sh -c "$1"\n')
    inner = find_inner_vm(
        lab({**LAB_OUTPUTS, "innerVmAccelerator": "kvm", "innerVmShellScript": way_in}), container
    )
    assert (
        inner.up and inner.accelerator == "kvm" and inner.platform == f"linux/{GO_ARCH[platform.machine()]}"
    )
    assert inner.shell is not None
    argv = inner.shell.command(["printf", "%s", "a b; $HOME"])
    assert subprocess.run(argv, capture_output=True, text=True, check=True).stdout == "a b; $HOME"

    no_forward = script(
        tmp_path / "no-forward.sh", "echo \"the inner VM 'inner' has no SSH forward: ...\" >&2; exit 1\n"
    )
    outputs = {**LAB_OUTPUTS, "innerVmAccelerator": "kvm", "innerVmShellScript": no_forward}
    unreachable = find_inner_vm(lab(outputs), container)
    assert not unreachable.up and "no SSH forward (nexus:innerVm.forwards)" in unreachable.not_up_reason

    broken = script(
        tmp_path / "broken.sh",
        "echo 'ssh: connect to host 127.0.0.1 port 2223: Connection refused' >&2; exit 255\n",
    )
    with pytest.raises(BenchError, match="layer inner-vm: uname -m over SSH failed"):
        find_inner_vm(
            lab({**LAB_OUTPUTS, "innerVmAccelerator": "kvm", "innerVmShellScript": broken}), container
        )


# --- the real program on this host ------------------------------------------------------------------


def test_results_files_are_part_of_the_stack(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "state")
    paths.state_dir.mkdir()
    paths.bench_results.write_text("{}")
    paths.bench_chart.write_text("<svg/>")
    assert remove_stack_files(paths) == []
    assert not paths.state_dir.exists()


def test_program_builds_once_per_source_version(tmp_path: Path) -> None:
    first = build_program(host_platform(), tmp_path)
    assert source_digest() in first.name and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert build_program(host_platform(), tmp_path) == first
    assert first.stat().st_mtime_ns == stamp, "a cached build is reused, not rebuilt"
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no temporary file is left"


def test_every_workload_runs_on_this_host(tmp_path: Path) -> None:
    """The runner end to end with the host layer: the figures are real and the table shows them."""
    cache = tmp_path / "cache"
    lines: list[str] = []
    host = find_host(lab(LAB_OUTPUTS))
    host = Layer("host", host.accelerator, HostShell(), platform=host.platform, scratch_dir=str(tmp_path),
                 http_routes=host.http_routes)  # fmt: skip
    layers = [host, not_up("vm", "tcg", "not started in this test")]
    settings = Settings(seconds=0.2, repeats=2, file_mib=4)
    report = run_benchmark("unit", layers, settings, build=lambda target: build_program(target, cache),
                           progress=lines.append)  # fmt: skip
    for workload in WORKLOADS:
        cell = report.cell(workload.name, "host")
        assert cell is not None and cell.ok, cell
        assert len(cell.values) == 2 and all(value > 0 for value in cell.values)
        assert report.percent(cell) == pytest.approx(100)
    assert len([line for line in lines if line.startswith("[host ")]) == len(WORKLOADS)
    assert "[vm] not up: not started in this test" in lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"], "the disk workloads clean up"
    table = render_table(report)
    assert "not up" in table and "100%" in table


def test_one_batch_reports_a_failed_workload_and_goes_on(tmp_path: Path) -> None:
    """A layer runs every workload in one process; a scratch dir that does not exist fails
    the disk workloads there, each with its reason, and the others are still measured."""
    program = build_program(host_platform(), tmp_path / "cache")
    layer = Layer("host", "native", HostShell(), scratch_dir=str(tmp_path / "no such dir"))
    batched = [workload for workload in WORKLOADS if workload.name != "http"]
    settings = Settings(seconds=0.2, repeats=1, file_mib=4)
    results = {m.workload: m for m in run_batch(layer, HostShell(), str(program), batched, settings)}
    assert list(results) == [workload.name for workload in batched]
    for name in ("disk-write", "disk-randread"):
        assert not results[name].ok and "no such dir" in results[name].error, results[name]
    for name in ("cpu-single", "cpu-all", "memory", "spawn"):
        assert results[name].ok and results[name].values[0] > 0, results[name]


class FirstLineOnly:
    """A layer whose connection drops after the first result line (real processes: sh, head)."""

    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        return ["sh", "-c", '"$@" | head -n 1', "sh", *argv]

    def install(self, program: Path) -> str:
        return str(program)


def test_a_batch_that_dies_gives_every_remaining_cell_its_reason(tmp_path: Path) -> None:
    program = build_program(host_platform(), tmp_path / "cache")
    layer = Layer("host", "native", FirstLineOnly(), scratch_dir=str(tmp_path))
    settings = Settings(seconds=0.2, repeats=1, file_mib=4)
    results = list(run_batch(layer, FirstLineOnly(), str(program), WORKLOADS[:3], settings))
    assert [m.workload for m in results] == [w.name for w in WORKLOADS[:3]]
    assert results[0].ok, results[0]
    for measurement in results[1:]:
        assert not measurement.ok and "ended before reporting" in measurement.error, measurement

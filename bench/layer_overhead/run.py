"""Runs every workload at every layer that is up, with a progress line each, into a Report."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from .errors import BenchError
from .layers import Layer, LayerShell, host_platform, run_in
from .program import build_program
from .render import format_value
from .results import (
    WORKLOAD_BY_NAME,
    WORKLOADS,
    LayerStatus,
    Measurement,
    Report,
    Settings,
    Workload,
    parse_measurement,
    parse_result_line,
)

Progress = Callable[[str], None]
Builder = Callable[[str], Path]
SERVER_START_TIMEOUT = 60.0


def _options(settings: Settings, scratch_dir: str) -> list[str]:
    return [
        "--seconds",
        f"{settings.seconds:g}",
        "--repeats",
        str(settings.repeats),
        "--dir",
        scratch_dir,
        "--file-mib",
        str(settings.file_mib),
    ]


def workload_argv(program: str, workload: Workload, settings: Settings, scratch_dir: str) -> list[str]:
    return [program, "run", workload.name, *_options(settings, scratch_dir)]


def batch_argv(
    program: str, workloads: Sequence[Workload], settings: Settings, scratch_dir: str
) -> list[str]:
    return [program, "batch", *_options(settings, scratch_dir), *(workload.name for workload in workloads)]


def _lines_of(stream: IO[bytes]) -> queue.Queue[bytes]:
    """The stream's lines as they come (a thread, so it works everywhere); b"" at its end."""
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, b""):
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def run_batch(
    layer: Layer, shell: LayerShell, program: str, workloads: Sequence[Workload], settings: Settings
) -> Generator[Measurement, None, None]:
    """Every workload in one process in the layer, each measurement as soon as it is done.

    One `docker exec` over SSH into an emulated VM costs 10-15 s: paid once per layer,
    not once per workload. A workload that does not report within its bound, or a
    process that dies, leaves the remaining cells with the reason.
    """
    argv = shell.command(batch_argv(program, workloads, settings, layer.scratch_dir))
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError:
        for workload in workloads:
            yield Measurement(workload.name, layer.name, error=f"layer {layer.name}: {argv[0]} was not found")
        return
    assert process.stdout is not None and process.stderr is not None
    lines = _lines_of(process.stdout)
    ended = ""  # why the process gave no more results
    try:
        for workload in workloads:
            line = b""
            if not ended:
                try:
                    line = lines.get(timeout=settings.timeout())
                except queue.Empty:
                    process.kill()
                    ended = f"no result within {settings.timeout():.0f} s"
                if not line.strip():  # the output ended, or nothing came in time
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=30)
                    stderr = (
                        process.stderr.read().decode(errors="replace").strip().splitlines()
                        if process.poll() is not None
                        else []
                    )
                    ended = stderr[-1] if stderr else ended
                    ended = (
                        ended or f"the program ended before reporting it (exit status {process.returncode})"
                    )
            if ended:
                yield Measurement(workload.name, layer.name, error=ended)
                continue
            try:
                yield parse_result_line(layer.name, workload.name, line.decode(errors="replace"))
            except BenchError as error:
                yield Measurement(workload.name, layer.name, error=error.what)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def run_program(layer_name: str, workload: str, argv: Sequence[str], settings: Settings) -> Measurement:
    """One run of the program (all repeats); a failure becomes the cell's error, not an abort."""
    try:
        result = run_in(layer_name, argv, timeout=settings.timeout())
    except BenchError as error:
        return Measurement(workload, layer_name, error=error.what)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return Measurement(
            workload, layer_name, error=lines[-1] if lines else f"exit status {result.returncode}"
        )
    try:
        return parse_measurement(layer_name, workload, result.stdout.decode(errors="replace"))
    except BenchError as error:
        return Measurement(workload, layer_name, error=error.what)


def measure_http(
    layer: Layer, shell: LayerShell, program: str, host_program: Path, host_address: str, settings: Settings
) -> Measurement:
    """A server in the layer, the client on the host, through the layer's forwarded port."""
    if not layer.http_routes:
        return Measurement("http", layer.name, skipped="no forwarded port reaches this layer")
    route = layer.http_routes[0]
    # The server exits when its stdin closes (in `finally`), or at the latest after this bound.
    serve = [program, "serve", "--port", str(route.layer_port), "--seconds", f"{settings.timeout():g}"]
    if layer.name == "host":
        serve += ["--address", "127.0.0.1"]  # a guest's server must take the forward; the host's stays local
    server = subprocess.Popen(
        shell.command(serve, as_root=layer.name != "host" and route.layer_port < 1024),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        try:
            line = _lines_of(server.stdout).get(timeout=SERVER_START_TIMEOUT).decode(errors="replace")
        except queue.Empty:
            line = ""
        if not line:
            server.kill()
            _, err = server.communicate(timeout=10)
            why = (err.decode(errors="replace").strip().splitlines() or ["no answer"])[-1]
            return Measurement("http", layer.name, skipped=f"no server on port {route.layer_port}: {why}")
        # Port 0 (the host's own route): the port the server picked.
        port = route.host_port or int(json.loads(line)["listening"])
        client = [
            *workload_argv(str(host_program), WORKLOAD_BY_NAME["http"], settings, "."),
            "--url",
            f"http://{host_address}:{port}/",
        ]
        return run_program(layer.name, "http", client, settings)
    finally:
        with contextlib.suppress(OSError):
            server.stdin.close()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def status_of(layer: Layer) -> LayerStatus:
    return LayerStatus(layer.name, layer.accelerator, layer.up, layer.not_up_reason, layer.platform)


def describe(measurement: Measurement, unit: str) -> str:
    if measurement.skipped:
        return f"n/a ({measurement.skipped})"
    if not measurement.ok:
        return f"failed: {measurement.error}"
    spread = measurement.spread_percent
    return f"{format_value(measurement.median)} {unit}" + (f" ±{spread:.0f}%" if spread is not None else "")


def run_benchmark(
    stack: str,
    layers: Sequence[Layer],
    settings: Settings,
    *,
    host_address: str = "127.0.0.1",
    build: Builder = build_program,
    progress: Progress = print,
) -> Report:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    host_program = build(host_platform())  # also the HTTP client at every layer
    measurements: list[Measurement] = []
    for layer in layers:
        if layer.shell is None:
            progress(f"[{layer.name}] not up: {layer.not_up_reason}")
            continue
        shell = layer.shell
        progress(f"[{layer.name}] accelerator {layer.accelerator}; copying the program in ({layer.platform})")
        program = shell.install(build(layer.platform))
        batched = [workload for workload in WORKLOADS if workload.name != "http"]
        try:
            with contextlib.closing(run_batch(layer, shell, program, batched, settings)) as results:
                started = time.monotonic()
                for index, workload in enumerate(WORKLOADS, start=1):
                    if workload.name == "http":
                        address = "127.0.0.1" if layer.name == "host" else host_address
                        measurement = measure_http(layer, shell, program, host_program, address, settings)
                    else:
                        measurement = next(results)
                    measurements.append(measurement)
                    progress(
                        f"[{layer.name} {index}/{len(WORKLOADS)}] {workload.title}: "
                        f"{describe(measurement, workload.unit)} ({time.monotonic() - started:.1f} s)"
                    )
                    started = time.monotonic()
        finally:
            if layer.name != "host":
                # Best effort: a layer without rm keeps one small file in its temp directory.
                with contextlib.suppress(BenchError):
                    run_in(layer.name, shell.command(["rm", "-f", program]), timeout=60)
    return Report(stack, created, settings, tuple(status_of(layer) for layer in layers), tuple(measurements))

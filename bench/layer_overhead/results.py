"""What the benchmark measures and what one measurement means: no I/O, no Pulumi.

The workload program prints one JSON line per (layer, workload):
    {"workload": "cpu-single", "unit": "Mops/s", "values": [12.1, 12.4, 12.2], "note": "..."}
`parse_measurement` checks it against `WORKLOADS`, the one list of workloads.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from .errors import BenchError


@dataclass(frozen=True)
class Workload:
    name: str  # what the program calls it
    title: str  # what the table calls it
    unit: str
    higher_is_better: bool = True


WORKLOADS: tuple[Workload, ...] = (
    Workload("cpu-single", "CPU, one thread", "Mops/s"),
    Workload("cpu-all", "CPU, all vCPUs", "Mops/s"),
    Workload("memory", "memory bandwidth", "MiB/s"),
    Workload("disk-write", "seq. write + fsync", "MiB/s"),
    Workload("disk-randread", "random 4k reads", "IOPS"),
    Workload("spawn", "process start (fork/exec)", "spawns/s"),
    # Measured from the host into the layer through its forwarded port.
    Workload("http", "HTTP latency from host", "ms", higher_is_better=False),
)
WORKLOAD_BY_NAME = {workload.name: workload for workload in WORKLOADS}

# Outermost first; the host is the baseline every other column is a percentage of.
LAYER_NAMES: tuple[str, ...] = ("host", "vm", "container", "inner-vm")
BASELINE = "host"

# The seed's "Architecture Layers" table, so the report can sit next to what it claims.
SEED_CLAIMS: dict[str, str] = {"vm": "70-80 %", "container": "60-70 %", "inner-vm": "40-50 %"}
SEED_CLAIMS_TEXT = (
    "seed's claims (% of native): hypervisor ~85-90, VM with Docker ~70-80, container ~60-70, inner VM ~40-50"
)


@dataclass(frozen=True)
class Settings:
    seconds: float  # per measurement
    repeats: int
    file_mib: int  # random-read file size; the sequential write stops at 8x this

    @classmethod
    def default(cls, *, quick: bool = False, repeats: int | None = None) -> Settings:
        base = cls(seconds=0.5, repeats=1, file_mib=8) if quick else cls(seconds=1.5, repeats=3, file_mib=32)
        if repeats is None:
            return base
        if repeats < 1:
            raise BenchError(f"--repeats: got {repeats}; allowed: 1 or more")
        return cls(seconds=base.seconds, repeats=repeats, file_mib=base.file_mib)

    def timeout(self) -> float:
        """The bound on one (layer, workload) run: the measurements plus generous setup time."""
        return self.repeats * (self.seconds + 30) + 60


@dataclass(frozen=True)
class Measurement:
    """One cell of the table: a workload at a layer, with every repeat's figure or an error."""

    workload: str
    layer: str
    values: tuple[float, ...] = ()
    note: str = ""
    error: str = ""  # the workload failed at this layer
    skipped: str = ""  # the workload does not apply here (e.g. no forwarded port)

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.values)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def spread_percent(self) -> float | None:
        """(max - min) / median over the repeats; None with a single repeat."""
        if len(self.values) < 2 or self.median == 0:
            return None
        return (max(self.values) - min(self.values)) / self.median * 100


def parse_measurement(layer: str, workload: str, stdout: str) -> Measurement:
    """The program's JSON line, checked: the right workload, the unit we expect, numbers."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise BenchError(f"layer {layer}: {workload} printed nothing")
    return parse_result_line(layer, workload, lines[-1])


def parse_result_line(layer: str, workload: str, line: str) -> Measurement:
    """One result line of `run` or `batch`; a workload that failed there becomes its cell's error."""
    expected = WORKLOAD_BY_NAME[workload]
    try:
        document = json.loads(line)
    except json.JSONDecodeError as error:
        raise BenchError(f"layer {layer}: {workload} printed no JSON", output=line) from error
    if not isinstance(document, dict):
        document = {}
    if document.get("workload") == workload and document.get("error"):
        return Measurement(workload, layer, error=str(document["error"]))
    values = document.get("values")
    if (
        document.get("workload") != workload
        or document.get("unit") != expected.unit
        or not isinstance(values, list)
        or not values
        or not all(isinstance(value, int | float) and value >= 0 for value in values)
    ):
        raise BenchError(
            f"layer {layer}: {workload} printed an unexpected result "
            f"(want workload {workload!r}, unit {expected.unit!r}, non-negative values)",
            output=line,
        )
    return Measurement(workload, layer, tuple(float(v) for v in values), str(document.get("note", "")))


def percent_of_host(workload: str, value: float, host_value: float) -> float | None:
    """100 = as good as the host; for latency (lower is better) the ratio is inverted."""
    if value <= 0 or host_value <= 0:
        return None
    if WORKLOAD_BY_NAME[workload].higher_is_better:
        return value / host_value * 100
    return host_value / value * 100


@dataclass(frozen=True)
class LayerStatus:
    name: str
    accelerator: str  # kvm, hvf, whpx, tcg; "native" for the host
    up: bool
    reason: str = ""  # why a layer is not up
    platform: str = ""  # the program build that ran there, e.g. linux/amd64


@dataclass(frozen=True)
class Report:
    stack: str
    created: str  # ISO 8601, UTC
    settings: Settings
    layers: tuple[LayerStatus, ...]
    measurements: tuple[Measurement, ...] = field(default=())

    def cell(self, workload: str, layer: str) -> Measurement | None:
        return next(
            (m for m in self.measurements if m.workload == workload and m.layer == layer),
            None,
        )

    def percent(self, measurement: Measurement) -> float | None:
        host = self.cell(measurement.workload, BASELINE)
        if not measurement.ok or host is None or not host.ok:
            return None
        return percent_of_host(measurement.workload, measurement.median, host.median)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "created": self.created,
            "settings": {
                "secondsPerMeasurement": self.settings.seconds,
                "repeats": self.settings.repeats,
                "fileMiB": self.settings.file_mib,
            },
            "layers": [
                {
                    "name": layer.name,
                    "accelerator": layer.accelerator,
                    "up": layer.up,
                    "reason": layer.reason,
                    "platform": layer.platform,
                }
                for layer in self.layers
            ],
            "workloads": [
                {"name": w.name, "title": w.title, "unit": w.unit, "higherIsBetter": w.higher_is_better}
                for w in WORKLOADS
            ],
            "results": [
                {
                    "workload": m.workload,
                    "layer": m.layer,
                    "values": list(m.values),
                    "median": m.median if m.ok else None,
                    "spreadPercent": m.spread_percent if m.ok else None,
                    "percentOfHost": self.percent(m),
                    "note": m.note,
                    "error": m.error,
                    "skipped": m.skipped,
                }
                for m in self.measurements
            ],
            "seedClaims": SEED_CLAIMS,
        }

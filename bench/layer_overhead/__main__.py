"""scripts/bench-layers [stack] [--quick] [--repeats N]: the layer-overhead benchmark."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from nexus_components.core.errors import NexusError
from nexus_components.host.paths import VmPaths

from .lab import read_lab
from .layers import find_layers, shared_connection
from .render import render_svg, render_table
from .results import Settings
from .run import run_benchmark

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench-layers",
        description="Run the same workloads on the host and in every layer of a running lab "
        "(VM, container, inner VM) and print each layer's figures as a percentage of the host.",
    )
    parser.add_argument("stack", nargs="?", help="the stack (default: the selected one)")
    parser.add_argument(
        "--quick", action="store_true", help="one short measurement per workload (a smoke check)"
    )
    parser.add_argument(
        "--repeats", type=int, help="measurements per workload and layer (default 3; --quick 1)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Another Pulumi command line (a test's own project and backend), e.g. "pulumi -C /tmp/project".
    pulumi = shlex.split(os.environ.get("NEXUS_BENCH_PULUMI", "")) or [str(REPO / "scripts" / "pulumi")]
    try:
        settings = Settings.default(quick=args.quick, repeats=args.repeats)
        lab = read_lab(args.stack, pulumi)
        print(
            f"bench-layers: stack {lab.stack}, {settings.repeats} x {settings.seconds:g} s per workload",
            flush=True,
        )
        with shared_connection(lab.ssh) as control_path:
            layers = find_layers(lab, control_path)
            report = run_benchmark(
                lab.stack,
                layers,
                settings,
                host_address=lab.ssh.host,
                progress=lambda line: print(line, flush=True),
            )
    except NexusError as error:
        print(f"bench-layers: {error}", file=sys.stderr)
        return 1
    paths = VmPaths(lab.state_dir)
    paths.bench_results.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    paths.bench_chart.write_text(render_svg(report))
    print()
    print(render_table(report), end="")
    print(f"results: {paths.bench_results}\nchart:   {paths.bench_chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs the real scripts/fleet, as a user's terminal would, and reads its summary table."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.pulumi_cli import REPO, PulumiCli

FLEET = REPO / "scripts" / "fleet"


def write_description(path: Path, description: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(description, sort_keys=False))
    return path


def fleet_argv(description: Path, operation: str, *extra: str) -> list[str]:
    """The command line, run in the description's folder (the way a user names it)."""
    return [str(FLEET), operation, description.name, *extra]


def run_fleet(
    cli: PulumiCli, description: Path, operation: str, *extra: str, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """scripts/fleet with the test's backend, passphrase and Pulumi home (from `cli`)."""
    return subprocess.run(
        fleet_argv(description, operation, *extra),
        cwd=description.parent,
        env=cli.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def summary(output: str) -> dict[str, dict[str, str]]:
    """The summary table's rows by lab: {"alice": {"STACK": ..., "RESULT": ..., ...}}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LAB  "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=len(header) - 1)
        rows[cells[0]] = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
    return rows

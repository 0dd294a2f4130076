"""The committed stack files, read the way Pulumi hands them to the program."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

STACKS = Path(__file__).resolve().parents[2] / "stacks"


def stack_settings(name: str) -> dict[str, Any]:
    """The `nexus:` namespace of stacks/Pulumi.<name>.yaml, keyed without the prefix."""
    document = yaml.safe_load((STACKS / f"Pulumi.{name}.yaml").read_text())
    return {key.removeprefix("nexus:"): value for key, value in document["config"].items()}

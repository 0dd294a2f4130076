"""What scripts/up drops from a stack's state after an `up` killed mid-create (Ctrl-C twice)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from nexus_components.pending_creates import CONTAINER, PRESENCE, drop_pending_creates

REPO = Path(__file__).resolve().parents[2]
PLAYGROUND = "urn:pulumi:s::p::nexus:guest:GuestLayers$nexus:guest:Playground::nexus-guest-playground"


def resource(kind: str, name: str, parent: str = PLAYGROUND) -> dict[str, Any]:
    return {"urn": f"{parent}${kind}::{name}", "type": kind, "parent": parent}


def killed_mid_create(pending: dict[str, Any]) -> dict[str, Any]:
    return {
        "deployment": {
            "resources": [
                resource("pulumi:pulumi:Stack", "p-s", parent=""),
                resource(PRESENCE, "nexus-guest-playground-presence"),
                resource(PRESENCE, "elsewhere-presence", parent="urn:other"),
            ],
            "pending_operations": [
                {"resource": pending, "type": "creating"},
                {"resource": resource("nexus:host:QemuVm", "vm", parent=""), "type": "deleting"},
            ],
        }
    }


def test_a_pending_container_takes_its_presence_with_it_so_up_clears_the_leftover_first() -> None:
    state = killed_mid_create(resource(CONTAINER, "nexus-guest-playground-container"))
    assert drop_pending_creates(state) == 1
    deployment = state["deployment"]
    assert [op["type"] for op in deployment["pending_operations"]] == ["deleting"]
    assert [r["urn"].rsplit("::", 1)[-1] for r in deployment["resources"]] == ["p-s", "elsewhere-presence"]


def test_any_other_pending_create_only_goes_itself(tmp_path: Path) -> None:
    state = killed_mid_create(resource("nexus:host:QemuVm", "nexus-vm", parent=""))
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    printed = subprocess.run(
        [sys.executable, "-m", "nexus_components.pending_creates", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == "1"
    resources = json.loads(path.read_text())["deployment"]["resources"]
    assert len(resources) == 3
    assert drop_pending_creates(json.loads(path.read_text())) == 0

"""Drops the "pending CREATE" records an `up` killed mid-create (Ctrl-C twice) leaves in a
stack's exported state, so the next `up` does those creates again (`scripts/up` runs this).

Every create of the lab picks up what a killed run left (a QEMU still booting the same VM
is waited for, any other is stopped), except pulumi-docker's container: docker refuses a
second container of the same name. So with a pending create of a container, its presence
check (nexus:guest:ContainerPresence, its sibling) goes from the state too: `up` creates it
again just before the container, and its create removes the leftover (only one this
product made; one of the user's own stops `up` with an error naming it).

Usage: python -m nexus_components.pending_creates <exported state file>; prints how many
creates were dropped, and rewrites the file if any were.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CONTAINER = "docker:index/container:Container"
PRESENCE = "nexus:guest:ContainerPresence"


def drop_pending_creates(state: dict[str, Any]) -> int:
    """Drops the pending creates (and a pending container's presence) from an exported state."""
    deployment = state.get("deployment", {})
    operations = deployment.get("pending_operations") or []
    creates = [operation for operation in operations if operation.get("type") == "creating"]
    if not creates:
        return 0
    deployment["pending_operations"] = [operation for operation in operations if operation not in creates]
    beside_containers = {
        operation.get("resource", {}).get("parent")
        for operation in creates
        if operation.get("resource", {}).get("type") == CONTAINER
    }
    deployment["resources"] = [
        resource
        for resource in deployment.get("resources") or []
        if not (resource.get("type") == PRESENCE and resource.get("parent") in beside_containers)
    ]
    return len(creates)


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    state = json.loads(path.read_text())
    dropped = drop_pending_creates(state)
    if dropped:
        path.write_text(json.dumps(state))
    print(dropped)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""One-time upgrade of a stack made by the dynamic-provider version, and the pending creates
an interrupted `up` left: both are edits of the stack's exported state.

A lab made by the earlier version is recorded in its stack's state as dynamic resources
(`pulumi-python:dynamic:Resource` under the `nexus:lab:*` components, each with a pickled
`__provider` naming a Python class by its module path). The upgrade drops those records
from the state (`pulumi stack export`, then `pulumi stack import` without them), so their
pickled delete never runs, and leaves the lab on the machine as it is. The next `up`
declares the nexus package's resources, whose creates take the lab over: the stack's key
pair, its disk (kept through `disk.json`, written here from the old disk's record: same id,
same base image), the seed (its instance id follows from its content) and the running QEMU
(waited for when it runs the same command line, else restarted on the same disk).

Only then is the state directory's marker raised to the current format, which is what the
program checks before it changes anything: a stack not upgraded yet is refused with the
command to run, never half taken over.

Usage (scripts/upgrade-stack and scripts/up run it):
    python -m nexus_components.state_upgrade --stack S --pulumi scripts/pulumi [--clear-pending-creates]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_components.host.paths import STATE_FORMAT, DiskRecord, StateDirMarker, VmPaths

OLD_HOST_TYPE_PREFIX = "nexus:lab:"
# The earlier version's guest layers: components at the stack's top (the Lab's own guest
# layers sit under `nexus:index:Lab`), with dynamic resources and pulumi-docker/-command
# children whose records go with them; the Lab's guest layers take over what runs.
OLD_GUEST_TYPE_PREFIX = "nexus:guest:"
DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"
STACK_TYPE = "pulumi:pulumi:Stack"
CONTAINER_TYPE = "docker:index/container:Container"
PRESENCE_TYPE = "nexus:guest:ContainerPresence"
Resource = dict[str, Any]


def urn_type(urn: str) -> str:
    """The URN's type chain: `nexus:lab:NexusVm$nexus:lab:QemuVm$pulumi-python:dynamic:Resource`."""
    parts = urn.split("::")
    return parts[2] if len(parts) > 3 else ""


def is_old_record(urn: str) -> bool:
    """A record of the earlier version's layers: a top-level `nexus:lab:*` or `nexus:guest:*`
    component, or anything under one."""
    return urn_type(urn).startswith((OLD_HOST_TYPE_PREFIX, OLD_GUEST_TYPE_PREFIX))


@dataclasses.dataclass(frozen=True)
class LabOnDisk:
    """What the upgrade hands on to the machine: where the lab lives and which disk it has."""

    state_dir: Path
    created_dirs: tuple[Path, ...] | None = None
    disk: DiskRecord | None = None


@dataclasses.dataclass(frozen=True)
class Upgrade:
    deployment: dict[str, Any]
    dropped: tuple[str, ...]
    labs: tuple[LabOnDisk, ...]


def _old_record(resource: Resource, kind: str) -> bool:
    return urn_type(resource["urn"]).endswith(f"{OLD_HOST_TYPE_PREFIX}{kind}${DYNAMIC_TYPE}")


def _labs(resources: Sequence[Resource], dropped: set[str]) -> tuple[LabOnDisk, ...]:
    labs: dict[str, LabOnDisk] = {}
    for resource in resources:
        outputs = resource.get("outputs") or {}
        state_dir = outputs.get("state_dir")
        if resource["urn"] in dropped and isinstance(state_dir, str):
            lab = labs.get(state_dir, LabOnDisk(Path(state_dir)))
            if _old_record(resource, "StateDir") and isinstance(outputs.get("created_dirs"), list):
                lab = dataclasses.replace(lab, created_dirs=tuple(Path(d) for d in outputs["created_dirs"]))
            if _old_record(resource, "OverlayDisk") and resource.get("id"):
                digest, base = str(outputs["base_digest"]), str(outputs["base_path"])
                lab = dataclasses.replace(lab, disk=DiskRecord(str(resource["id"]), digest, base))
            labs[state_dir] = lab
    # The stack's own output names its directory too: found even when nothing is left to drop
    # (an upgrade whose import went through but whose marker was not written yet).
    for resource in resources:
        state_dir = (resource.get("outputs") or {}).get("stateDir")
        if resource.get("type") == STACK_TYPE and isinstance(state_dir, str) and state_dir not in labs:
            labs[state_dir] = LabOnDisk(Path(state_dir))
    return tuple(labs.values())


def _without(resource: Resource, dropped: set[str], root: str | None) -> Resource:
    """The record with no reference left to a dropped one (the next `up` records the new ones)."""
    kept = dict(resource)
    if "dependencies" in kept:
        kept["dependencies"] = [urn for urn in kept["dependencies"] or [] if urn not in dropped]
    if "propertyDependencies" in kept:
        kept["propertyDependencies"] = {
            key: [urn for urn in urns or [] if urn not in dropped]
            for key, urns in (kept["propertyDependencies"] or {}).items()
        }
    if kept.get("deletedWith") in dropped:
        del kept["deletedWith"]
    if kept.get("parent") in dropped and root is not None:
        kept["parent"] = root
    return kept


def plan_upgrade(deployment: Mapping[str, Any]) -> Upgrade:
    """The deployment without the earlier version's host-layer records, and what is on the machine."""
    resources: list[Resource] = list(deployment.get("resources") or [])
    dropped = {resource["urn"] for resource in resources if is_old_record(resource["urn"])}
    root = next((r["urn"] for r in resources if r.get("type") == STACK_TYPE), None)
    kept = [_without(r, dropped, root) for r in resources if r["urn"] not in dropped]
    # The dynamic-provider plugin's provider record goes too once nothing uses it.
    used = {str(r.get("provider", "")).rsplit("::", 1)[0] for r in kept}
    kept = [r for r in kept if not (r["type"] == "pulumi:providers:pulumi-python" and r["urn"] not in used)]
    dropped |= {r["urn"] for r in resources} - {r["urn"] for r in kept}
    pending = [
        operation
        for operation in deployment.get("pending_operations") or []
        if (operation.get("resource") or {}).get("urn") not in dropped
    ]
    upgraded = {**deployment, "resources": kept}
    if "pending_operations" in deployment:
        upgraded["pending_operations"] = pending
    ordered = tuple(r["urn"] for r in resources if r["urn"] in dropped)
    return Upgrade(upgraded, ordered, _labs(resources, dropped))


def drop_pending_creates(deployment: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The deployment without the "creating" operations a killed `up` left, and how many there were.

    Every create of the lab takes over what the killed run left, so the records can go and
    the next `up` does those creates again (no VM access needed, unlike `refresh`). Except
    pulumi-docker's container: docker refuses a second container of the same name. So with a
    pending create of a container, its presence check (nexus:guest:ContainerPresence, its
    sibling) goes too: `up` creates it again just before the container, and its create
    removes the leftover (only one this product made; one of the user's own stops `up` with
    an error naming it)."""
    operations = list(deployment.get("pending_operations") or [])
    creates = [operation for operation in operations if operation.get("type") == "creating"]
    if not creates:
        return dict(deployment), 0
    beside_containers = {
        (operation.get("resource") or {}).get("parent")
        for operation in creates
        if (operation.get("resource") or {}).get("type") == CONTAINER_TYPE
    }
    resources = [
        resource
        for resource in deployment.get("resources") or []
        if not (resource.get("type") == PRESENCE_TYPE and resource.get("parent") in beside_containers)
    ]
    kept = [operation for operation in operations if operation not in creates]
    return {**deployment, "resources": resources, "pending_operations": kept}, len(creates)


def hand_over_disks(labs: Sequence[LabOnDisk]) -> None:
    """Before the import: each disk's record, so the new OverlayDisk keeps it (and its id)."""
    for lab in labs:
        paths = VmPaths(lab.state_dir)
        if lab.disk is not None and paths.overlay_disk.is_file() and DiskRecord.read(paths) is None:
            lab.disk.write(paths)


def mark_upgraded(labs: Sequence[LabOnDisk], stack: str) -> list[Path]:
    """After the import: the state directories' markers at the current format; returns them."""
    marked = []
    for lab in labs:
        paths = VmPaths(lab.state_dir)
        if not paths.state_dir.is_dir():
            continue
        marker = StateDirMarker.read(paths)
        if marker is not None and marker.format >= STATE_FORMAT:
            continue
        if marker is None:
            # A lab from before markers existed: its directories as the state recorded them.
            marker = StateDirMarker(stack, lab.created_dirs or (lab.state_dir,))
        dataclasses.replace(marker, format=STATE_FORMAT).write(paths)
        marked.append(lab.state_dir)
    return marked


# --------------------------------------------------------------------------- the command


def _pulumi(pulumi: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([pulumi, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"pulumi {' '.join(args)} failed; the stack's state was not changed:\n"
            f"{(result.stderr or result.stdout).strip()}\n"
            "next step: fix what Pulumi says above and run the command again (safe to repeat)"
        )
    return result


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(stack: str, pulumi: str, *, clear_pending_creates: bool, who: str) -> None:
    exported = json.loads(_pulumi(pulumi, "stack", "export", "--stack", stack).stdout)
    deployment = exported.get("deployment") or {}
    cleared = 0
    if clear_pending_creates:
        deployment, cleared = drop_pending_creates(deployment)
        if cleared:
            _say(
                f"{who}: the last up was interrupted; clearing its {cleared} unfinished create(s), "
                "which this up does again"
            )
    upgrade = plan_upgrade(deployment)
    if upgrade.dropped:
        _say(
            f"{who}: stack {stack} was made by an earlier version of nexus-nested-vm (dynamic providers); "
            f"upgrading its state once: {len(upgrade.dropped)} records of the old resources are dropped "
            "(their code is not run), and the next up takes the lab over without recreating its disk"
        )
        hand_over_disks(upgrade.labs)
    if upgrade.dropped or cleared:
        with tempfile.TemporaryDirectory() as scratch:
            state = Path(scratch) / "state.json"
            state.write_text(json.dumps({**exported, "deployment": upgrade.deployment}))
            _pulumi(pulumi, "stack", "import", "--stack", stack, "--file", str(state))
    marked = mark_upgraded(upgrade.labs, stack)
    if upgrade.dropped or marked:
        _say(f"{who}: stack {stack} now uses the nexus package's resources; run `pulumi up` (or scripts/up)")
    elif not clear_pending_creates:
        _say(f"{who}: stack {stack} already uses the nexus package's resources; nothing to upgrade")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--pulumi", required=True, help="the pulumi command (scripts/pulumi)")
    parser.add_argument("--clear-pending-creates", action="store_true")
    parser.add_argument("--who", default="scripts/upgrade-stack", help="the name messages start with")
    args = parser.parse_args(argv)
    run(args.stack, args.pulumi, clear_pending_creates=args.clear_pending_creates, who=args.who)


if __name__ == "__main__":
    main()

"""The one-time upgrade of a dynamic-provider stack, as an edit of its exported state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_components.host.paths import STATE_FORMAT, DiskRecord, StateDirMarker, VmPaths
from nexus_components.state_upgrade import (
    drop_pending_creates,
    hand_over_disks,
    mark_upgraded,
    plan_upgrade,
)

PREFIX = "urn:pulumi:lab::nexus-nested-vm::"
STACK = f"{PREFIX}pulumi:pulumi:Stack::nexus-nested-vm-lab"
DYNAMIC_PROVIDER = f"{PREFIX}pulumi:providers:pulumi-python::default"
COMMAND_PROVIDER = f"{PREFIX}pulumi:providers:command::default_1_2_1"
VM = f"{PREFIX}nexus:lab:NexusVm::nexus"
DISK = f"{PREFIX}nexus:lab:NexusVm$nexus:lab:OverlayDisk$pulumi-python:dynamic:Resource::nexus-disk-qcow2"
STATE = f"{PREFIX}nexus:lab:NexusVm$nexus:lab:StateDir$pulumi-python:dynamic:Resource::nexus-state-dir"
QEMU = f"{PREFIX}nexus:lab:NexusVm$nexus:lab:QemuVm$pulumi-python:dynamic:Resource::nexus-vm-qemu"
GUEST = "nexus:guest:GuestLayers$nexus:guest:RootFsGrowth"
RESIZE = f"{PREFIX}{GUEST}$command:remote:Command::nexus-guest-rootfs-resize"


def old_deployment(state_dir: Path) -> dict[str, Any]:
    dynamic = {"type": "pulumi-python:dynamic:Resource", "provider": f"{DYNAMIC_PROVIDER}::0001"}
    return {
        "manifest": {},
        "resources": [
            {"urn": STACK, "type": "pulumi:pulumi:Stack", "outputs": {"stateDir": str(state_dir)}},
            {"urn": DYNAMIC_PROVIDER, "type": "pulumi:providers:pulumi-python", "id": "0001"},
            {"urn": COMMAND_PROVIDER, "type": "pulumi:providers:command", "id": "0002"},
            {"urn": VM, "type": "nexus:lab:NexusVm", "parent": STACK},
            {
                **dynamic,
                "urn": STATE,
                "id": str(state_dir),
                "parent": VM,
                "outputs": {"state_dir": str(state_dir), "created_dirs": [str(state_dir)], "__provider": "x"},
            },
            {
                **dynamic,
                "urn": DISK,
                "id": f"{state_dir}/disk.qcow2@0123456789ab",
                "parent": VM,
                "dependencies": [STATE],
                "outputs": {"state_dir": str(state_dir), "base_digest": "d" * 64, "base_path": "/c/i.qcow2"},
            },
            {**dynamic, "urn": QEMU, "parent": VM, "dependencies": [STATE, DISK], "outputs": {}},
            {
                "urn": RESIZE,
                "type": "command:remote:Command",
                "provider": f"{COMMAND_PROVIDER}::0002",
                "dependencies": [QEMU, DISK],
                "propertyDependencies": {"triggers": [DISK]},
                "deletedWith": DISK,
            },
        ],
        "pending_operations": [{"type": "creating", "resource": {"urn": QEMU}}],
    }


def test_the_old_host_and_guest_records_go_and_nothing_left_refers_to_them(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    old = old_deployment(state_dir)
    # A record of this version's own, depending on old ones: it stays, without the references.
    lab_child = {"urn": f"{PREFIX}nexus:index:Lab$nexus:host:QemuVm::nexus-vm", "type": "nexus:host:QemuVm"}
    old["resources"].append({**lab_child, "parent": VM, "dependencies": [QEMU, STACK], "deletedWith": DISK})
    upgrade = plan_upgrade(old)
    kept = {r["urn"]: r for r in upgrade.deployment["resources"]}
    assert list(kept) == [STACK, COMMAND_PROVIDER, lab_child["urn"]]
    assert set(upgrade.dropped) == {DYNAMIC_PROVIDER, VM, STATE, DISK, QEMU, RESIZE}
    survivor = kept[lab_child["urn"]]
    assert survivor["dependencies"] == [STACK] and survivor["parent"] == STACK
    assert "deletedWith" not in survivor
    assert upgrade.deployment["pending_operations"] == []
    assert "__provider" not in json.dumps(upgrade.deployment)
    (lab,) = upgrade.labs
    assert lab.state_dir == state_dir and lab.created_dirs == (state_dir,)
    assert lab.disk == DiskRecord(f"{state_dir}/disk.qcow2@0123456789ab", "d" * 64, "/c/i.qcow2")


def test_a_stack_of_the_package_is_left_as_it_is(tmp_path: Path) -> None:
    deployment = {
        "resources": [
            {"urn": STACK, "type": "pulumi:pulumi:Stack", "outputs": {"stateDir": str(tmp_path)}},
            {"urn": f"{PREFIX}nexus:index:Lab::nexus", "type": "nexus:index:Lab"},
        ]
    }
    upgrade = plan_upgrade(deployment)
    assert upgrade.dropped == () and upgrade.deployment == deployment


def test_the_disk_is_handed_over_before_the_import_and_the_marker_raised_after(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    paths = VmPaths(state_dir)
    state_dir.mkdir()
    paths.overlay_disk.write_bytes(b"the guest's disk")
    StateDirMarker("lab", (state_dir,), format=1).write(paths)
    upgrade = plan_upgrade(old_deployment(state_dir))

    hand_over_disks(upgrade.labs)
    assert DiskRecord.read(paths) == upgrade.labs[0].disk
    assert mark_upgraded(upgrade.labs, "lab") == [state_dir]
    assert StateDirMarker.read(paths) == StateDirMarker("lab", (state_dir,), STATE_FORMAT)
    assert mark_upgraded(upgrade.labs, "lab") == [], "a second run has nothing to do"
    assert paths.overlay_disk.read_bytes() == b"the guest's disk"


def test_a_lab_from_before_markers_gets_one_with_the_directories_the_state_recorded(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    upgrade = plan_upgrade(old_deployment(state_dir))
    mark_upgraded(upgrade.labs, "lab")
    assert StateDirMarker.read(VmPaths(state_dir)) == StateDirMarker("lab", (state_dir,), STATE_FORMAT)


def test_pending_creates_are_dropped_and_counted() -> None:
    deployment = {"pending_operations": [{"type": "creating"}, {"type": "updating"}, {"type": "creating"}]}
    cleared, count = drop_pending_creates(deployment)
    assert count == 2 and cleared["pending_operations"] == [{"type": "updating"}]
    assert drop_pending_creates(cleared)[1] == 0


def test_a_pending_container_takes_its_presence_with_it_so_up_clears_the_leftover_first() -> None:
    playground = (
        f"{PREFIX}nexus:index:Lab$nexus:guest:GuestLayers$nexus:guest:Playground::nexus-guest-playground"
    )

    def record(kind: str, name: str, parent: str = playground) -> dict[str, Any]:
        return {"urn": f"{parent}${kind}::{name}", "type": kind, "parent": parent}

    presence = "nexus:guest:ContainerPresence"
    deployment = {
        "resources": [
            record(presence, "nexus-guest-playground-presence"),
            record(presence, "elsewhere-presence", parent="urn:other"),
        ],
        "pending_operations": [
            {"resource": record("docker:index/container:Container", "nexus-playground"), "type": "creating"},
            {"resource": record("nexus:host:QemuVm", "vm", parent=STACK), "type": "deleting"},
        ],
    }
    cleared, count = drop_pending_creates(deployment)
    assert count == 1
    assert [op["type"] for op in cleared["pending_operations"]] == ["deleting"]
    assert [r["urn"].rsplit("::", 1)[-1] for r in cleared["resources"]] == ["elsewhere-presence"]

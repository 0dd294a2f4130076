"""scripts/fleet's bound on labs booting at once: each lab's memory, each machine's budget, and
the gate real threads go through (nexus_components/fleet_memory.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from nexus_components.config import VM_DEFAULT_MEMORY_MIB
from nexus_components.fleet_memory import (
    LOCAL,
    MACHINE_RESERVE_MIB,
    QEMU_OVERHEAD_MIB,
    LabMemory,
    MemoryGate,
    budget_from_available,
    lab_memory,
    machine_of,
)
from nexus_components.host.hostfacts import available_memory_mib


def test_a_lab_needs_its_vms_memory_and_qemus_own_on_its_machine() -> None:
    remote = {"nexus:host": {"ssh": "lab@build-1"}, "nexus:vm": {"memoryMiB": 2048}}
    assert lab_memory(remote) == LabMemory("lab@build-1:22", 2048 + QEMU_OVERHEAD_MIB)
    assert lab_memory({}) == LabMemory(LOCAL, VM_DEFAULT_MEMORY_MIB + QEMU_OVERHEAD_MIB)
    # A value the program refuses counts as the default: that lab fails at its own preview.
    assert lab_memory({"nexus:vm": {"memoryMiB": "lots"}}).mib == VM_DEFAULT_MEMORY_MIB + QEMU_OVERHEAD_MIB


@pytest.mark.parametrize(
    ("host", "machine"),
    [
        ("local", LOCAL),
        (None, LOCAL),
        ({"ssh": "lab@srv"}, "lab@srv:22"),
        ({"ssh": "lab@srv:22"}, "lab@srv:22"),
        ({"ssh": "lab@srv:2200"}, "lab@srv:2200"),
        ({"ssh": "lab@[::1]"}, "lab@[::1]:22"),
        ({"ssh": "lab@[::1]:2200"}, "lab@[::1]:2200"),
    ],
)
def test_one_server_written_two_ways_is_one_machine(host: object, machine: str) -> None:
    assert machine_of(host) == machine


def test_a_machine_keeps_some_memory_for_itself() -> None:
    assert budget_from_available(8192) == 8192 - MACHINE_RESERVE_MIB
    assert budget_from_available(100) == 0
    assert budget_from_available(None) is None


def test_available_memory_is_read_from_the_kernel(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20971520 kB\n")
    assert available_memory_mib(meminfo) == 20480
    meminfo.write_text("MemTotal:       24000000 kB\n")  # a kernel older than 3.14
    assert available_memory_mib(meminfo) is None
    assert available_memory_mib(tmp_path / "none") is None
    here = available_memory_mib()  # this machine's own, as `up` of a local fleet reads it
    assert here is not None and here > 0


class Fleet:
    """Labs as threads through one gate, each holding its place for `hold` seconds."""

    def __init__(self, gate: MemoryGate, needs: list[LabMemory], hold: float = 0.2) -> None:
        self.gate, self.needs, self.hold = gate, needs, hold
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.count = 0
        self.peak_count = 0
        self.order: list[int] = []
        self.said: dict[int, list[str]] = {place: [] for place in range(len(needs))}
        self.admitted: dict[int, bool] = {}
        self.arrived = [threading.Event() for _ in needs]

    def lab(self, place: int) -> None:
        need = self.needs[place]
        self.arrived[place].set()
        admitted, warning = self.gate.enter(place, need, self.said[place].append)
        self.admitted[place] = admitted
        if not admitted:
            return
        if warning:
            self.said[place].append(warning)
        with self.lock:
            self.order.append(place)
            self.running[need.machine] = self.running.get(need.machine, 0) + need.mib
            self.peaks[need.machine] = max(self.peaks.get(need.machine, 0), self.running[need.machine])
            self.count += 1
            self.peak_count = max(self.peak_count, self.count)
        time.sleep(self.hold)
        with self.lock:
            self.running[need.machine] -= need.mib
            self.count -= 1
        self.gate.leave(need)

    def run(self) -> None:
        threads = [threading.Thread(target=self.lab, args=(place,)) for place in range(len(self.needs))]
        for place, thread in enumerate(threads):
            thread.start()
            # Each reaches the gate in the description's order, as the fleet's threads do.
            assert self.arrived[place].wait(10)
            time.sleep(0.02)
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "a lab never got through the gate"


def test_labs_on_a_machine_never_take_more_than_its_budget_and_the_waiting_one_says_why() -> None:
    needs = [LabMemory("srv", 1280)] * 3
    fleet = Fleet(MemoryGate(parallel=4, budgets={"srv": 2600}), needs)
    fleet.run()
    assert fleet.peaks["srv"] == 2560  # two at once, never three
    assert fleet.order == [0, 1, 2]
    assert fleet.said[0] == fleet.said[1] == []
    (waited,) = fleet.said[2]
    assert waited.startswith("waits for memory on srv: it needs 1280 MiB")
    assert "take 2560 of the 2600 MiB" in waited


def test_parallel_bounds_the_labs_when_memory_does_not() -> None:
    fleet = Fleet(MemoryGate(parallel=2), [LabMemory(LOCAL, 100)] * 5)
    fleet.run()
    assert fleet.peak_count == 2 and fleet.order == [0, 1, 2, 3, 4]
    assert all(said == [] for said in fleet.said.values())  # memory was never the reason


def test_a_big_lab_is_not_passed_over_by_small_ones_after_it() -> None:
    needs = [LabMemory("srv", 1000), LabMemory("srv", 3000), LabMemory("srv", 500), LabMemory("srv", 500)]
    fleet = Fleet(MemoryGate(parallel=4, budgets={"srv": 3500}), needs)
    fleet.run()
    # 500s fit beside the first lab, but the 3000 before them waits for it and goes next.
    assert fleet.order == [0, 1, 2, 3]
    assert fleet.peaks["srv"] <= 3500


def test_a_lab_on_another_machine_does_not_wait_for_this_ones_memory() -> None:
    needs = [LabMemory("a", 2000), LabMemory("a", 2000), LabMemory("b", 2000)]
    fleet = Fleet(MemoryGate(parallel=3, budgets={"a": 2500, "b": 2500}), needs, hold=0.4)
    fleet.run()
    assert fleet.order == [0, 2, 1]  # lab 2 on machine b starts while lab 1 waits for a
    assert fleet.said[1] and fleet.said[2] == []


def test_a_lab_bigger_than_its_machines_budget_runs_alone_with_a_warning() -> None:
    needs = [LabMemory("srv", 1000), LabMemory("srv", 9000), LabMemory("srv", 1000)]
    fleet = Fleet(MemoryGate(parallel=3, budgets={"srv": 4000}), needs)
    fleet.run()
    assert fleet.order == [0, 1, 2] and fleet.peaks["srv"] == 9000  # alone: nothing beside it
    assert any("runs alone there" in line and "9000 MiB" in line for line in fleet.said[1])
    assert all(fleet.admitted.values())


def test_labs_waiting_when_the_fleet_is_cancelled_do_not_start() -> None:
    gate = MemoryGate(parallel=1)
    fleet = Fleet(gate, [LabMemory(LOCAL, 100)] * 3, hold=0.5)
    canceller = threading.Timer(0.2, gate.cancel)
    canceller.start()
    fleet.run()
    assert fleet.order == [0] and fleet.admitted == {0: True, 1: False, 2: False}

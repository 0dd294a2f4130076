"""How many of a fleet's labs boot at once: `--parallel`, and the memory of each machine.

Pure: no Pulumi import; scripts/fleet (nexus_components/cli/fleet.py) measures each machine's
available memory and runs every lab's `up` through one MemoryGate. A lab takes its VM's
memory plus QEMU's own while its `up` runs; once the `up` has ended, the machine's memory
holds what the VM really uses, which the next fleet run measures.

The gate lets a lab start when fewer than `parallel` run, its machine has room for it, and no
lab before it (in the description's order) waits for that machine: a big lab is not passed
over for ever by small ones. A lab that does not fit even alone runs alone there, with a
warning, so that a re-run of a fleet whose labs already hold the memory still converges.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nexus_components.config import VM_DEFAULT_MEMORY_MIB

LOCAL = "local"
# QEMU's own memory beside the guest's RAM: devices, TCG's translation cache, I/O buffers.
QEMU_OVERHEAD_MIB = 256
# What a machine keeps for itself and its other programs.
MACHINE_RESERVE_MIB = 512


@dataclass(frozen=True)
class LabMemory:
    machine: str  # "local" or the server's user@server:port
    mib: int


def lab_memory(config: Mapping[str, Any]) -> LabMemory:
    """Where a lab's VM runs and what it takes there, from its `nexus:` settings. A value the
    program will refuse counts as the default: that lab fails at its preview anyway."""
    vm = config.get("nexus:vm")
    memory = vm.get("memoryMiB") if isinstance(vm, Mapping) else None
    if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
        memory = VM_DEFAULT_MEMORY_MIB
    return LabMemory(machine_of(config.get("nexus:host")), memory + QEMU_OVERHEAD_MIB)


def machine_of(host: Any) -> str:
    """`nexus:host` as the name of a machine: `local`, or the server's address as written,
    with SSH's default port, so `lab@server` and `lab@server:22` are one machine."""
    if not isinstance(host, Mapping) or not isinstance(host.get("ssh"), str):
        return LOCAL
    address: str = host["ssh"]
    has_port = address.rsplit("]", 1)[-1].count(":") == 1
    return address if has_port else f"{address}:22"


def budget_from_available(available_mib: int | None) -> int | None:
    """What the fleet's labs may take of a machine's available memory; None: not measured."""
    if available_mib is None:
        return None
    return max(available_mib - MACHINE_RESERVE_MIB, 0)


@dataclass
class MemoryGate:
    """Admits the fleet's labs, each by its place in the description, as `parallel` and each
    machine's budget (MiB the labs may take there; None: not bounded by memory) allow."""

    parallel: int
    budgets: Mapping[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._used: dict[str, int] = {}
        self._waiting: dict[int, LabMemory] = {}
        self._cancelled = False

    def enter(
        self, place: int, need: LabMemory, on_wait: Callable[[str], None] = lambda message: None
    ) -> tuple[bool, str]:
        """Blocks until the lab at `place` may start. Returns whether it may (False once the
        gate is cancelled) and a warning to show when it starts over its machine's budget."""
        told = False
        with self._changed:
            self._waiting[place] = need
            try:
                while not self._cancelled and not self._admissible(place):
                    if not told and self._running < self.parallel and not self._fits(need):
                        on_wait(self._wait_message(need))
                        told = True
                    self._changed.wait()
                if self._cancelled:
                    return False, ""
                self._running += 1
                self._used[need.machine] = self._used.get(need.machine, 0) + need.mib
                return True, self._over_budget(need)
            finally:
                del self._waiting[place]
                self._changed.notify_all()

    def leave(self, need: LabMemory) -> None:
        with self._changed:
            self._running -= 1
            self._used[need.machine] -= need.mib
            self._changed.notify_all()

    def cancel(self) -> None:
        """Labs still waiting do not start (Ctrl-C)."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    def _fits(self, need: LabMemory) -> bool:
        budget = self.budgets.get(need.machine)
        used = self._used.get(need.machine, 0)
        return budget is None or used == 0 or used + need.mib <= budget

    def _could_start(self, place: int) -> bool:
        """Its machine has room for it, and no lab before it waits for that machine."""
        need = self._waiting[place]
        return self._fits(need) and not any(
            earlier < place and other.machine == need.machine for earlier, other in self._waiting.items()
        )

    def _admissible(self, place: int) -> bool:
        """It could start, a lab may start, and no lab before it could start instead."""
        return (
            self._running < self.parallel
            and self._could_start(place)
            and not any(earlier < place and self._could_start(earlier) for earlier in self._waiting)
        )

    def _wait_message(self, need: LabMemory) -> str:
        budget = self.budgets.get(need.machine)
        taken = self._used.get(need.machine, 0)
        return (
            f"waits for memory on {need.machine}: it needs {need.mib} MiB (nexus:vm.memoryMiB and "
            f"QEMU's own {QEMU_OVERHEAD_MIB}); the labs under way take {taken} of the {budget} MiB "
            "the fleet may use there"
        )

    def _over_budget(self, need: LabMemory) -> str:
        budget = self.budgets.get(need.machine)
        if budget is None or need.mib <= budget:
            return ""
        return (
            f"warning: it needs {need.mib} MiB and the fleet may use {budget} MiB on {need.machine}: "
            "it runs alone there, and its VM may run short of memory (lower nexus:vm.memoryMiB, "
            "or free memory on that machine)"
        )

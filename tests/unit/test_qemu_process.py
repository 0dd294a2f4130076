"""The shutdown ladder of qemu_process, written once for both QEMUs of the lab.

First against `FakeProcessControl`, a scripted process that says which step ends it;
then against a real QEMU through both real controls: `vm_process.LocalQemu` (the VM's)
and `ContainerQemu` (the inner VM's), the latter through a runner that plays the
container on this machine. The real guest is a boot sector that powers the machine off
when ACPI's power button is pressed, so every rung of the ladder can end it: powerdown
(it runs), quit (paused), SIGTERM (its QMP socket gone), SIGKILL (frozen by SIGSTOP).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from nexus_components.core.errors import VmError
from nexus_components.core.qemu_process import (
    QemuControl,
    qmp_conversation,
    qmp_reply,
    qmp_status,
    runtime_files,
    shut_down,
)
from nexus_components.core.runner import CommandResult, LocalRunner
from nexus_components.guest.inner_vm import InnerVmPaths
from nexus_components.guest.inner_vm_machine import ContainerQemu, InnerVmMachine
from nexus_components.guest.settings import InnerVmConfig
from nexus_components.host import vm_process
from nexus_components.host.paths import VmPaths
from nexus_components.host.vm_process import LocalQemu
from tests.support.processes import running

# --------------------------------------------------------------------------- the fake

STEPS = ("system_powerdown", "quit", "SIGTERM", "SIGKILL")


@dataclass
class FakeProcessControl:
    """One pretend QEMU: `ends_on` is the first step that ends it (None: nothing does);
    `answers_qmp` False is a QEMU whose monitor is silent. Records every step."""

    ends_on: str | None = "system_powerdown"
    answers_qmp: bool = True
    has_monitor: bool = True
    pid_list: list[int] = field(default_factory=lambda: [4242])
    fail_on: str | None = None  # a step that raises, as a signal to another user's process does
    subject: str = "VM"
    poll_seconds: float = 0.0
    steps: list[str] = field(default_factory=list)
    gone: set[int] = field(default_factory=set)
    runtime_files_removed: bool = False

    def _step(self, pid: int, name: str) -> None:
        self.steps.append(name)
        if name == self.fail_on:
            raise VmError(f"{name} failed")
        if self.ends_on is not None and STEPS.index(name) >= STEPS.index(self.ends_on):
            self.gone.add(pid)

    def pids(self) -> list[int]:
        return [pid for pid in self.pid_list if pid not in self.gone]

    def where(self, pid: int) -> str:
        return f"pid {pid}"

    def monitored(self, pid: int) -> bool:
        return self.has_monitor

    def qmp(self, command: str) -> bool:
        if not self.answers_qmp:
            self.steps.append(f"{command} (no answer)")
            return False
        for pid in self.pids():
            self._step(pid, command)
        return True

    def alive(self, pid: int) -> bool:
        return pid not in self.gone

    def terminate(self, pid: int) -> None:
        self._step(pid, "SIGTERM")

    def kill(self, pid: int) -> None:
        self._step(pid, "SIGKILL")

    def remove_runtime_files(self) -> None:
        self.runtime_files_removed = True

    def survived(self, pid: int) -> Exception:
        return VmError(f"QEMU (pid {pid}) survived SIGKILL")


def ladder(control: QemuControl, powerdown_timeout: float = 0.05, grace_seconds: float = 0.05) -> list[str]:
    """Run the ladder; return its log lines."""
    lines: list[str] = []
    shut_down(control, powerdown_timeout=powerdown_timeout, log=lines.append, grace_seconds=grace_seconds)
    return lines


def test_a_guest_that_powers_off_gets_only_the_powerdown() -> None:
    control = FakeProcessControl(ends_on="system_powerdown")
    assert ladder(control) == ["VM powered off (pid 4242)"]
    assert control.steps == ["system_powerdown"]
    assert control.runtime_files_removed


@pytest.mark.parametrize("ends_on", ["quit", "SIGTERM", "SIGKILL"])
def test_each_rung_is_tried_until_one_ends_the_process(ends_on: str) -> None:
    control = FakeProcessControl(ends_on=ends_on)
    lines = ladder(control)
    assert control.steps == list(STEPS[: STEPS.index(ends_on) + 1])
    assert lines == ["VM did not power off within 0 s; stopping QEMU"]
    assert not control.pids() and control.runtime_files_removed


def test_a_silent_monitor_is_not_waited_for_and_gets_signals() -> None:
    control = FakeProcessControl(ends_on="SIGTERM", answers_qmp=False)
    started = time.monotonic()
    lines = ladder(control, powerdown_timeout=60)
    assert time.monotonic() - started < 5, "the powerdown timeout was waited out"
    assert control.steps == ["system_powerdown (no answer)", "SIGTERM"]
    assert lines == ["QEMU (pid 4242) does not answer on its control socket (QMP); stopping it"]


def test_a_qemu_the_socket_does_not_reach_gets_signals_only() -> None:
    control = FakeProcessControl(ends_on="SIGTERM", has_monitor=False)
    assert ladder(control) == ["stopping QEMU (pid 4242), whose control socket is gone"]
    assert control.steps == ["SIGTERM"]


def test_a_qemu_that_survives_sigkill_is_an_error_and_its_files_still_go() -> None:
    control = FakeProcessControl(ends_on=None)
    with pytest.raises(VmError, match=r"QEMU \(pid 4242\) survived SIGKILL"):
        ladder(control)
    assert control.steps == list(STEPS)
    assert control.runtime_files_removed


def test_a_failing_step_still_removes_the_runtime_files() -> None:
    control = FakeProcessControl(ends_on=None, fail_on="SIGTERM")
    with pytest.raises(VmError, match="SIGTERM failed"):
        ladder(control)
    assert control.runtime_files_removed


def test_every_qemu_of_the_vm_is_stopped_and_none_means_only_cleanup() -> None:
    control = FakeProcessControl(ends_on="SIGTERM", has_monitor=False, pid_list=[11, 12])
    assert ladder(control) == [
        "stopping QEMU (pid 11), whose control socket is gone",
        "stopping QEMU (pid 12), whose control socket is gone",
    ]
    assert control.gone == {11, 12}
    nothing = FakeProcessControl(pid_list=[])
    assert ladder(nothing) == [] and nothing.steps == [] and nothing.runtime_files_removed


def test_a_log_prefix_can_name_the_guest() -> None:
    control = FakeProcessControl(ends_on="quit", subject="")
    assert ladder(control) == ["did not power off within 0 s; stopping QEMU"]


# --------------------------------------------------------------------------- names and messages


def test_both_qemus_name_their_runtime_files_alike() -> None:
    host = VmPaths(Path("/state"))
    inner = InnerVmPaths("inner")
    assert host.runtime_files() == runtime_files(Path("/state")) == (host.qmp_socket, host.pid_file)
    assert inner.runtime_files() == (inner.qmp_socket, inner.pid_file)
    assert [p.name for p in host.runtime_files()] == [p.name for p in inner.runtime_files()]
    assert isinstance(inner.pid_file, PurePosixPath)


def test_qmp_messages_and_replies() -> None:
    sent = qmp_conversation("block_resize", device="disk0", size=1)
    assert sent.decode().splitlines() == [
        '{"execute": "qmp_capabilities"}',
        '{"execute": "block_resize", "arguments": {"device": "disk0", "size": 1}}',
    ]
    greeting = '{"QMP": {"version": {}, "capabilities": ["oob"]}}\n{"return": {}}\n'
    event = '{"timestamp": {"seconds": 1}, "event": "POWERDOWN"}\n'
    assert qmp_reply(greeting + event + '{"return": {}}\n') == {"return": {}}
    refused = {"error": {"class": "GenericError", "desc": "x"}}
    assert qmp_reply(greeting + '{"error": {"class": "GenericError", "desc": "x"}}\n') == refused
    assert qmp_reply(greeting) is None and qmp_reply("") is None
    assert qmp_status(greeting + '{"return": {"status": "paused", "running": false}}\n') == "paused"
    assert qmp_status("") == "unknown"


# --------------------------------------------------------------------------- a real QEMU

# A boot sector that waits for ACPI's power button and then powers the machine off (soft
# off, S5), as a guest OS does. Assembled from (GNU as, .code16):
#   mov $0x80000b40,%eax; mov $0xcf8,%dx; out %eax,%dx    # PCI 00:01.3 (PIIX4 PM), reg 0x40
#   mov $0xcfc,%dx; in %dx,%eax; and $0xffc0,%ax; mov %ax,%bx   # PM I/O base set by SeaBIOS
#   mov %bx,%dx; add $2,%dx; mov $0x100,%ax; out %ax,%dx         # PM1_EN: power button
#   mov $0x52,%al; out %al,$0xe9                                  # "R" to the debug console
# poll: pause; mov %bx,%dx; in %dx,%ax; test $0x100,%ax; jz poll  # PM1_STS: pressed?
#   mov %bx,%dx; add $4,%dx; mov $0x2000,%ax; out %ax,%dx         # PM1_CNT: SLP_EN, type 0
# halt: hlt; jmp halt
POWER_BUTTON_GUEST = bytes.fromhex(
    "66b8400b0080baf80c66efbafc0c66ed83e0c089c389da83c202b80001ef"
    "b052e6e9f39089daeda9000174f689da83c204b80020eff4ebfd"
)


@pytest.fixture(autouse=True)
def no_qemu_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """A failed assertion must not leave a QEMU this test started (their argv name tmp_path)."""
    yield
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if argv[0].endswith(b"qemu-system-x86_64") and any(str(tmp_path).encode() in a for a in argv):
                os.kill(int(entry.name), signal.SIGKILL)
                if state == "T":
                    os.kill(int(entry.name), signal.SIGCONT)


def start_guest(directory: Path, *, paused: bool = False) -> int:
    """The power-button guest under TCG, daemonized, with its pid file and QMP socket in
    `directory` (named as both QEMUs of the lab name them); returns its pid once the
    guest listens for the power button (a press before that is lost, as on hardware)."""
    directory.mkdir(parents=True, exist_ok=True)
    disk = directory / "boot.img"
    disk.write_bytes(POWER_BUTTON_GUEST.ljust(510, b"\0") + b"\x55\xaa")
    qmp_socket, pid_file = runtime_files(directory)
    ready = directory / "debugcon.log"
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "pc,accel=tcg",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "32M",
        "-drive",
        f"file={disk},format=raw,if=ide",
        "-debugcon",
        f"file:{ready}",
        "-pidfile",
        str(pid_file),
        "-qmp",
        f"unix:{qmp_socket},server=on,wait=off",
        "-daemonize",
        *(["-S"] if paused else []),
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 60
    while not paused and b"R" not in ready.read_bytes():
        assert time.monotonic() < deadline, "the guest did not start within 60 s"
        time.sleep(0.1)
    return int(pid_file.read_text())


# What `docker exec` runs in the container but this machine lacks: a stand-in for
# `socat -t1 - UNIX-CONNECT:<socket>` (stdin to the socket, replies until a second of quiet).
_SOCAT_STAND_IN = """
import socket, sys
relay = socket.socket(socket.AF_UNIX)
relay.connect(sys.argv[1])
relay.sendall(sys.stdin.buffer.read())
relay.settimeout(1)
try:
    while chunk := relay.recv(65536):
        sys.stdout.buffer.write(chunk)
except TimeoutError:
    pass
"""


@dataclass(frozen=True)
class ContainerOnThisMachine:
    """A CommandRunner that runs what the inner VM sends into its container here:
    `docker exec [-i] <container>` dropped, socat played by Python, the rest (the pid
    script, kill, rm) run as they are."""

    where: str = "this machine"

    def run(
        self,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        input_file: Path | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        words = list(argv)
        assert words[:2] == ["docker", "exec"], words
        words = words[3:] if words[2] != "-i" else words[4:]
        if words[0] == "socat":
            words = [sys.executable, "-c", _SOCAT_STAND_IN, words[-1].removeprefix("UNIX-CONNECT:")]
        return LocalRunner().run(words, input_bytes=input_bytes, input_file=input_file, timeout=timeout)

    def reachable(self) -> bool:
        return True


@dataclass(frozen=True)
class InnerVmPathsUnder(InnerVmPaths):
    """The inner VM's files under a test's directory instead of the container's volume."""

    root: PurePosixPath

    @property
    def dir(self) -> PurePosixPath:
        return self.root / self.name


def local_control(directory: Path) -> LocalQemu:
    return LocalQemu(VmPaths(directory))


def container_control(directory: Path) -> ContainerQemu:
    machine = InnerVmMachine(ContainerOnThisMachine(), "nexus-playground", InnerVmConfig(enabled=True))
    machine.paths = InnerVmPathsUnder(machine.config.name, root=PurePosixPath(directory.parent))
    return ContainerQemu(machine)


CONTROLS: dict[str, Callable[[Path], QemuControl]] = {"vm": local_control, "inner-vm": container_control}


@pytest.fixture(params=list(CONTROLS))
def real(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[QemuControl, Path]:
    """A real control of each kind and the directory of its QEMU's files."""
    directory = tmp_path / InnerVmConfig(enabled=True).name
    return CONTROLS[request.param](directory), directory


def silent_after(control: QemuControl, pid: int, powerdown_timeout: float) -> str:
    """What the ladder says of a QEMU that takes QMP commands but never answers them.
    The VM's client waits its bound and calls it silent; the inner VM's relay gives
    QEMU one second, too little to tell a silent QEMU from one slowed down by nested TCG,
    so there the powerdown is waited for."""
    if isinstance(control, LocalQemu):
        return f"QEMU ({control.where(pid)}) does not answer on its control socket (QMP); stopping it"
    return f"did not power off within {powerdown_timeout:.0f} s; stopping QEMU"


# How long a real QEMU gets to end after quit, SIGTERM or SIGKILL before the ladder moves on
# (or calls it a survivor): generous, as a busy machine reaps slowly, and the ladder moves on
# as soon as the process is gone.
REAL_GRACE_SECONDS = 10.0


def assert_nothing_left(pid: int, directory: Path) -> None:
    assert not running(pid)
    assert [path for path in runtime_files(directory) if path.exists()] == []


def test_a_real_guest_powers_off_on_the_powerdown(real: tuple[QemuControl, Path]) -> None:
    control, directory = real
    pid = start_guest(directory)
    assert control.pids() == [pid]
    lines = ladder(control, powerdown_timeout=30, grace_seconds=REAL_GRACE_SECONDS)
    assert lines == [" ".join(filter(None, [control.subject, f"powered off ({control.where(pid)})"]))]
    assert_nothing_left(pid, directory)


def test_a_real_paused_guest_is_ended_by_quit(real: tuple[QemuControl, Path]) -> None:
    control, directory = real
    pid = start_guest(directory, paused=True)  # a paused CPU cannot answer the power button
    lines = ladder(control, powerdown_timeout=1, grace_seconds=REAL_GRACE_SECONDS)
    assert lines[-1].endswith("did not power off within 1 s; stopping QEMU"), lines
    assert_nothing_left(pid, directory)


def test_a_real_qemu_without_its_socket_is_ended_by_sigterm(real: tuple[QemuControl, Path]) -> None:
    control, directory = real
    pid = start_guest(directory, paused=True)
    runtime_files(directory)[0].unlink()  # QMP can no longer reach it
    started = time.monotonic()
    lines = ladder(control, powerdown_timeout=60, grace_seconds=REAL_GRACE_SECONDS)
    assert time.monotonic() - started < 30
    assert lines == [f"QEMU ({control.where(pid)}) does not answer on its control socket (QMP); stopping it"]
    assert_nothing_left(pid, directory)


def test_a_real_frozen_qemu_is_ended_by_sigkill(
    real: tuple[QemuControl, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP freezes QEMU's monitor (it accepts, never answers) and holds SIGTERM back."""
    control, directory = real
    monkeypatch.setattr(vm_process, "QMP_TIMEOUT_SECONDS", 1.0)
    pid = start_guest(directory, paused=True)
    os.kill(pid, signal.SIGSTOP)
    lines: list[str] = []
    shut_down(control, powerdown_timeout=2, log=lines.append, grace_seconds=3)
    assert lines == [silent_after(control, pid, 2)]
    assert_nothing_left(pid, directory)

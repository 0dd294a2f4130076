"""The QEMU process layer against a real QEMU: launch, liveness, the stop ladder, errors.

The VMs here are paused (`-S`) with blank disks: starting and stopping QEMU is what is
under test, not booting a guest (tests/e2e does that).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_components.config import load_config
from nexus_components.core.errors import VmError
from nexus_components.core.seed_iso import write_seed_iso
from nexus_components.core.ssh import SshTarget
from nexus_components.host import vm_process
from nexus_components.host.lifecycles import QemuVm
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import HostFacts, VmFiles, build_qemu_argv
from nexus_components.host.settings import NetworkConfig, PortForward
from nexus_components.host.vm_process import (
    SerialWatcher,
    check_ports_free,
    clean_console_text,
    guest_hangs,
    launch,
    process_alive,
    process_command_line,
    qmp_execute,
    qmp_session,
    running_pid,
    stop,
    wait_until_ready,
)
from tests.support.processes import process_state, running
from tests.support.sshd import running_sshd


@pytest.fixture(autouse=True)
def no_qemu_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """A failed assertion must not leave a QEMU this test started (their argv name tmp_path)."""
    yield
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"qemu-system-x86_64") and any(str(tmp_path).encode() in a for a in argv):
                os.kill(int(entry.name), signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def paused_vm_argv(paths: VmPaths, *, daemonize: bool) -> list[str]:
    config = load_config(
        {
            "vm": {"accelerator": "tcg", "memoryMiB": 512},
            "network": {"sshPort": free_port(), "forwards": []},
            "paths": {"stateDir": str(paths.state_dir)},
        },
        stack="unit",
        home=paths.state_dir.parent / "home",
    )
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(paths.overlay_disk), "1G"], check=True)
    write_seed_iso(paths.seed_iso, {"user-data": b"#cloud-config\n", "meta-data": b"instance-id: unit\n"})
    host = HostFacts(
        os="linux" if daemonize else "windows", accelerator="tcg", qemu_binary="qemu-system-x86_64"
    )
    return [*build_qemu_argv(config, host, VmFiles.of(paths)), "-S"]


def gone(pid: int) -> bool:
    """Exited with every thread: a zombie whose threads still run holds its ports."""
    return not running(pid)


@pytest.mark.parametrize("daemonize", [True, False], ids=["posix-daemonize", "detached-spawn-as-on-windows"])
def test_launch_then_stop_leaves_nothing_running(tmp_path: Path, daemonize: bool) -> None:
    paths = VmPaths(tmp_path)
    argv = paused_vm_argv(paths, daemonize=daemonize)
    assert ("-daemonize" in argv) is daemonize

    pid = launch(argv, paths)
    assert running_pid(paths) == pid
    assert paths.qmp_socket.exists()

    # A paused guest cannot act on ACPI powerdown: the ladder must go on to quit.
    stop(paths, powerdown_timeout=1)
    assert gone(pid)
    assert running_pid(paths) is None
    assert not paths.pid_file.exists() and not paths.qmp_socket.exists()


def test_a_frozen_qemu_is_stopped_without_hanging_on_its_silent_monitor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP freezes QEMU's monitor too: its socket accepts but never greets. The ladder
    must give up on QMP within its bound and go on to signals (SIGKILL ends a stopped process)."""
    monkeypatch.setattr(vm_process, "QMP_TIMEOUT_SECONDS", 2.0)  # the bound, shorter
    paths = VmPaths(tmp_path)
    pid = launch(paused_vm_argv(paths, daemonize=True), paths)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(VmError, match="did not answer within"):
            qmp_execute(paths, "query-status")
        started = time.monotonic()
        stop(paths, powerdown_timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    # A powerdown QEMU never received is not waited for.
    assert elapsed < 60, elapsed
    assert not paths.pid_file.exists() and not paths.qmp_socket.exists()


def test_a_guest_that_sends_no_ssh_banner_hangs_one_that_refuses_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused guest: QEMU's user network accepts the forwarded connection, nothing answers."""
    # The drift check's own wait for a banner, shorter (20 s in use).
    monkeypatch.setattr(vm_process, "guest_hangs", functools.partial(guest_hangs, banner_timeout=3))
    paths = VmPaths(tmp_path)
    argv = paused_vm_argv(paths, daemonize=True)
    ssh_port = int(re.search(r"hostfwd=tcp:[0-9.]*:(\d+)-:22", " ".join(argv)).group(1))  # type: ignore[union-attr]
    target = SshTarget("127.0.0.1", ssh_port, "nexus", tmp_path / "no-key")
    pid = launch(argv, paths)
    try:
        assert guest_hangs(target, banner_timeout=3)
        # `up` power-cycles such a VM: its diff reports a change although QEMU runs.
        props = {
            **vm_props(paths, pid),
            **{"ssh_host": "127.0.0.1", "ssh_port": float(ssh_port), "username": "nexus"},
            "private_key": str(target.private_key),
        }
        assert QemuVm().diff(props, props).changes
    finally:
        stop(paths, powerdown_timeout=1)
    assert gone(pid)
    # Nothing listens any more: refused, which is not a hang.
    assert not guest_hangs(target, banner_timeout=3)
    with running_sshd(tmp_path / "sshd") as sshd:
        assert not guest_hangs(SshTarget(sshd.host, sshd.port, sshd.user, sshd.private_key), banner_timeout=3)
        # A login that fails (another key) answers too: not a hang.
        assert not guest_hangs(
            SshTarget(sshd.host, sshd.port, sshd.user, tmp_path / "no-key"), banner_timeout=3
        )


def test_a_guest_that_greets_but_runs_no_command_hangs(tmp_path: Path) -> None:
    """sshd on a CPU that still runs greets; a CPU stuck in the guest's kernel keeps the
    login from finishing. Here: a server that sends a banner, then nothing."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        connections: list[socket.socket] = []

        def greet_then_stay_silent() -> None:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                connections.append(connection)

        threading.Thread(target=greet_then_stay_silent, daemon=True).start()
        target = SshTarget("127.0.0.1", port, "nexus", tmp_path / "no-key")
        started = time.monotonic()
        assert guest_hangs(target, banner_timeout=3, command_timeout=5)
        assert time.monotonic() - started < 30
        # A preview reads the banner only: no login, so the silence after it goes unseen
        # there, and `up`, which logs in, finds it.
        started = time.monotonic()
        assert not guest_hangs(target, banner_timeout=3, command_timeout=5, login=False)
        assert time.monotonic() - started < 3
        for connection in connections:
            connection.close()


def test_failed_launch_names_the_command_and_output_and_leaves_nothing(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    argv = paused_vm_argv(paths, daemonize=True)
    argv[argv.index("-machine") + 1] = "no-such-machine,accel=tcg"
    with pytest.raises(VmError) as raised:
        launch(argv, paths)
    message = str(raised.value)
    assert "QEMU exited with status" in message
    assert "command: qemu-system-x86_64" in message
    assert "no-such-machine" in message
    assert "next step:" in message
    assert not paths.pid_file.exists()


def test_stale_pid_file_of_another_process_is_not_our_vm(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    paths.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a QEMU with this pid file
    assert running_pid(paths) is None
    stop(paths, powerdown_timeout=1)  # must not kill the test process
    assert not paths.pid_file.exists()


def test_busy_forward_port_is_reported_with_its_key(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        network = NetworkConfig(
            "127.0.0.1", free_port(), (PortForward(free_port(), 80), PortForward(busy, 443))
        )
        with pytest.raises(VmError, match=rf"nexus:network.forwards\[1\].host: host port {busy} .* in use"):
            check_ports_free(network)
        with pytest.raises(VmError, match=rf"nexus:network.qmpPort: host port {busy}"):
            check_ports_free(NetworkConfig("127.0.0.1", free_port(), ()), qmp_tcp_port=busy)


def test_connections_a_dead_vm_left_in_time_wait_do_not_make_its_port_busy() -> None:
    """The VM's side closes first when QEMU dies: its port keeps TIME_WAIT entries for a
    minute, and `up` must still start the VM again on it (QEMU itself binds with reuse)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU's forward does
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the listening side closes first: its end goes to TIME_WAIT
    listener.close()
    client.recv(1)
    client.close()
    network = NetworkConfig(bind_address="127.0.0.1", ssh_port=port, forwards=())
    check_ports_free(network)  # no error
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(VmError, match=f"nexus:network.sshPort: host port {port}"):
            check_ports_free(network)


# The main thread ends itself while another thread keeps the process and its port: what
# a killed QEMU looks like for a moment, while its vCPU threads still tear down guest RAM.
_MAIN_THREAD_EXITS_FIRST = """
import ctypes, socket, threading, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
threading.Thread(target=lambda: time.sleep(3600)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_a_process_whose_main_thread_is_a_zombie_still_holds_its_port() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _MAIN_THREAD_EXITS_FIRST], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        deadline = time.monotonic() + 10
        while process_state(holder.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.05)
        # Taken for gone, the stop ladder would return while the port is still held.
        assert process_alive(holder.pid)
        with pytest.raises(VmError, match=f"host port {port}"):
            check_ports_free(NetworkConfig(bind_address="127.0.0.1", ssh_port=port, forwards=()))
    finally:
        holder.kill()
        holder.wait()
    assert not process_alive(holder.pid)


def test_command_line_comes_from_proc_or_from_ps_where_there_is_no_proc(tmp_path: Path) -> None:
    from_proc = process_command_line(os.getpid())
    # macOS has no /proc: point the lookup at an empty directory to take the ps(1) path.
    from_ps = process_command_line(os.getpid(), proc=tmp_path)
    assert from_proc is not None and from_ps is not None
    # This process: Python running pytest, or a pytest-xdist worker (`python -u -c ...`).
    assert "python" in from_proc and from_proc.split()[:2] == from_ps.split()[:2]


def vm_props(paths: VmPaths, pid: int) -> dict[str, Any]:
    """What the stack's state holds for the VM: the recorded pid among it."""
    return {"name": "nexus-unit", "state_dir": str(paths.state_dir), "qmp_tcp_port": None, "pid": float(pid)}


def test_destroy_stops_the_vm_by_its_recorded_pid_when_the_state_dir_was_deleted(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "state")
    paths.state_dir.mkdir()
    pid = launch(paused_vm_argv(paths, daemonize=True), paths)
    shutil.rmtree(paths.state_dir)  # pid file and QMP socket with it
    assert running_pid(paths) is None, "the pid file alone no longer finds it"

    vm = QemuVm()
    assert not vm.diff(vm_props(paths, pid), vm_props(paths, pid)).changes, "still running"
    vm.delete(vm_props(paths, pid))
    assert gone(pid)


def test_stop_finds_a_vm_nothing_recorded_by_its_command_line(tmp_path: Path) -> None:
    # An up killed between launching QEMU and recording it, then the pid file deleted.
    paths = VmPaths(tmp_path / "state")
    paths.state_dir.mkdir()
    pid = launch(paused_vm_argv(paths, daemonize=True), paths)
    paths.pid_file.unlink()
    stop(paths, powerdown_timeout=1)
    assert gone(pid)


def test_a_recorded_pid_of_another_process_is_left_alone(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    stop(paths, recorded_pid=os.getpid(), powerdown_timeout=1)  # must not kill the test process
    assert running_pid(paths, os.getpid()) is None


def test_console_text_loses_escape_codes_and_runs_of_blank_lines() -> None:
    raw = (
        "\x1b[0m\x1b[1;32m[  OK  ]\x1b[0m Started ssh.service.\r\n\r\n\r\n"
        "\x1b]0;title\x07\x1bcDebian GNU/Linux 12 lab ttyS0\r\n\r\n\r\n\r\nlab login: \x1b[?25h"
    )
    assert clean_console_text(raw) == (
        "[  OK  ] Started ssh.service.\n\nDebian GNU/Linux 12 lab ttyS0\n\nlab login:"
    )


def test_serial_watcher_sees_a_line_split_across_writes(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    watcher = SerialWatcher(log, "nexus lab is ready:")
    assert not watcher.seen(), "no file yet"
    log.write_text("booting\nnexus lab is re")
    assert not watcher.seen()
    with log.open("a") as serial:
        serial.write("ady: cloud-init 22.4 finished\n")
    assert watcher.seen()


def test_boot_timeout_shows_a_clean_serial_tail_and_the_bound(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    pid = launch(paused_vm_argv(paths, daemonize=True), paths)
    try:
        with paths.serial_log.open("a") as serial:
            serial.write("\x1b[1;31mFAILED\x1b[0m to start thing.\r\n\r\n\r\n\r\nlast line\r\n")
        target = SshTarget("127.0.0.1", free_port(), "nexus", tmp_path / "no-key")
        with pytest.raises(VmError) as caught:
            wait_until_ready(target, paths, timeout=2, log=lambda _: None, ready_line="nexus lab is ready:")
    finally:
        stop(paths, powerdown_timeout=1)
    message = str(caught.value)
    assert message.startswith("the VM was not ready within 2 s")
    assert "FAILED to start thing.\n\nlast line" in message
    assert "\x1b" not in message and "\n\n\n" not in message
    assert "raise nexus:vm.bootTimeoutSeconds" in message
    assert gone(pid)


def test_create_waits_for_the_qemu_an_interrupted_up_left_booting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = VmPaths(tmp_path / "state")
    paths.state_dir.mkdir()
    argv = paused_vm_argv(paths, daemonize=True)
    leftover = launch(argv, paths)  # what the killed up started
    ssh_port = int(argv[argv.index("-netdev") + 1].split("hostfwd=tcp:127.0.0.1:")[1].split("-")[0])
    props = {
        **vm_props(paths, 0),
        "argv": argv,
        "bind_address": "127.0.0.1",
        "ssh_host": "127.0.0.1",
        "ssh_port": float(ssh_port),
        "forwards": [],
        "username": "nexus",
        "private_key": str(tmp_path / "no-key"),
        "boot_timeout_seconds": 2.0,
        "cpus": 2.0,
        "memory_mib": 512.0,
        "accelerator": "tcg",
    }
    with pytest.raises(VmError, match="not ready within 2 s"):
        QemuVm().create(props)  # a paused guest never gets ready
    progress = capsys.readouterr().err
    assert f"QEMU (pid {leftover}) already runs this VM with this command line; waiting for it" in progress
    assert "starting QEMU" not in progress, "no second QEMU on the same disk"
    assert gone(leftover), "and it is not left running once the wait failed"


def _fake_qmp_server(socket_path: Path, first_message: dict[str, Any], log: list[str]) -> threading.Thread:
    """A QMP server whose first client reads `first_message` ahead of the greeting (as a
    QEMU event can be); every later client is greeted and answered."""
    import json

    greeting = {
        "QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}
    }
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(socket_path))
    server.listen()

    def serve() -> None:
        decoder = json.JSONDecoder()
        for number in (1, 2):
            connection, _ = server.accept()
            with connection:
                opening = [first_message, greeting] if number == 1 else [greeting]
                connection.sendall(b"".join(json.dumps(message).encode() + b"\r\n" for message in opening))
                pending = ""
                while chunk := connection.recv(4096):
                    pending += chunk.decode()
                    while pending.strip():  # QMP is a stream of JSON objects, no line framing
                        try:
                            request, end = decoder.raw_decode(pending.lstrip())
                        except json.JSONDecodeError:
                            break  # the rest of it is still on its way
                        pending = pending.lstrip()[end:]
                        log.append(f"{number}:{request['execute']}")
                        answer = {"status": "running"} if request["execute"] == "query-status" else {}
                        reply: dict[str, Any] = {"return": answer, "id": request.get("id")}
                        if request["execute"] == "no-such-command":
                            refusal = {"class": "CommandNotFound", "desc": "The command was not found"}
                            reply = {"error": refusal, "id": request.get("id")}
                        connection.sendall(json.dumps(reply).encode() + b"\r\n")
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_event_ahead_of_the_greeting_does_not_fail_the_command(tmp_path: Path) -> None:
    """QEMU can send an event (a job's status change, STOP, RESUME) before it greets a client
    that connects just then: the command still gets through, on a second connection."""
    paths = VmPaths(tmp_path)
    event = {
        "event": "JOB_STATUS_CHANGE",
        "data": {"status": "concluded", "id": "nexus-load"},
        "timestamp": {},
    }
    log: list[str] = []
    server = _fake_qmp_server(paths.qmp_socket, event, log)
    with qmp_session(paths) as qmp:
        assert qmp("query-status") == {"status": "running"}
        with pytest.raises(
            VmError, match=r"^QEMU refused the QMP command 'no-such-command': The command was not found"
        ):
            qmp("no-such-command")
        assert qmp("query-status") == {"status": "running"}
    server.join(timeout=10)
    assert log == ["2:qmp_capabilities", "2:query-status", "2:no-such-command", "2:query-status"]

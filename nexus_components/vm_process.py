"""The QEMU process: launch, readiness, liveness and a graceful shutdown ladder.

Modelled on QEMU's own `QEMUMachine`: a failed launch cleans up and raises one error
carrying the command and its output; shutdown is soft (ACPI powerdown over QMP), then
a bounded wait, then hard, with the runtime files removed in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import NetworkConfig, PortForward
from .errors import VmError
from .paths import VmPaths, remove_quietly
from .ssh import SshTarget

Log = Callable[[str], None]

# `cloud-init status --wait` exit codes: 0 done, 2 done with recoverable errors (newer
# cloud-init), 1 a critical failure.
_CLOUD_INIT_OK = (0, 2)
_SSH_UNREACHABLE = 255


def check_ports_free(network: NetworkConfig, *, qmp_tcp_port: int | None = None) -> None:
    """Report a busy forward port before QEMU starts, naming the config key that sets it."""
    ports = network.keyed_forwards()
    if qmp_tcp_port is not None:
        ports.append(("nexus:network.qmpPort", PortForward(qmp_tcp_port, 0)))
    for key, forward in ports:
        kind = socket.SOCK_STREAM if forward.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((network.bind_address, forward.host))
            except OSError as error:
                raise VmError(
                    f"{key}: host port {forward.host} on {network.bind_address} is already in use "
                    f"({error.strerror})",
                    hint=f"stop what listens there (`lsof -i :{forward.host}`) "
                    f"or choose another port for {key}",
                ) from error


def launch(argv: Sequence[str], paths: VmPaths, *, timeout: float = 120.0) -> int:
    """Start QEMU detached from us and return its pid; on failure nothing keeps running."""
    for stale in paths.runtime_files():
        remove_quietly(stale)
    try:
        if "-daemonize" in argv:
            returncode, output = _run_daemonizing(argv, timeout)
        else:
            returncode, output = _spawn_detached(argv, paths, settle_seconds=3.0)
    except FileNotFoundError as error:
        raise VmError(
            f"QEMU could not be started: {error}", command=argv, hint="check nexus:vm.qemuBinary"
        ) from error
    except subprocess.TimeoutExpired as error:
        _stop_pid_file_process(paths)
        raise VmError(
            f"QEMU did not finish starting within {timeout:.0f} s",
            command=argv,
            hint="see the command above; run it by hand without -daemonize to watch it",
        ) from error
    paths.qemu_log.write_text(output + "\n" if output else "")
    if returncode != 0:
        _stop_pid_file_process(paths)
        for stale in paths.runtime_files():
            remove_quietly(stale)
        raise VmError(
            f"QEMU exited with status {returncode} while starting",
            command=argv,
            output=output,
            hint="fix the cause named in the output; nothing was left running",
        )
    pid = running_pid(paths)
    if pid is None:
        raise VmError("QEMU started but wrote no live pid file", command=argv, output=output)
    return pid


def _run_daemonizing(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    # With -daemonize QEMU reports start-up errors through its exit status, then detaches.
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def _spawn_detached(argv: Sequence[str], paths: VmPaths, *, settle_seconds: float) -> tuple[int, str]:
    """Where QEMU cannot daemonize (Windows): start it in its own process group, and
    treat an exit within the first seconds as a failed start."""
    flags = 0
    if sys.platform == "win32":
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
    with paths.qemu_log.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            creationflags=flags,
            start_new_session=sys.platform != "win32",
        )
    try:
        returncode = process.wait(timeout=settle_seconds)
    except subprocess.TimeoutExpired:
        _wait_for_file(paths.pid_file, timeout=30)
        return 0, paths.qemu_log.read_text(errors="replace").strip()
    return returncode or 1, paths.qemu_log.read_text(errors="replace").strip()


def _wait_for_file(path: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def running_pid(paths: VmPaths) -> int | None:
    """The pid of this stack's QEMU, or None if it is not running (killed, host rebooted)."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    # A reused pid after a reboot must not be mistaken for our VM.
    command_line = process_command_line(pid)
    if command_line is not None and str(paths.pid_file) not in command_line:
        return None
    return pid


def process_command_line(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The process's command line: from /proc on Linux, from ps(1) on macOS; None if unknown."""
    cmdline = proc / str(pid) / "cmdline"
    if cmdline.exists():
        return cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if sys.platform == "win32":
        return None
    try:
        result = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def wait_until_ready(
    target: SshTarget, paths: VmPaths, *, timeout: float, log: Log, poll_seconds: float = 3.0
) -> float:
    """Block until SSH answers and cloud-init is done; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    announced_ssh = False
    last_report = started
    while True:
        if running_pid(paths) is None:
            raise VmError(
                "QEMU exited while the VM was booting",
                output=serial_tail(paths),
                hint=f"the serial console log is {paths.serial_log}",
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VmError(
                f"the VM was not ready within {timeout:.0f} s "
                f"(SSH on {target.host}:{target.port} and cloud-init)",
                output=serial_tail(paths),
                hint="raise nexus:vm.bootTimeoutSeconds if the guest is just slow (TCG is), "
                f"or read {paths.serial_log}",
            )
        probe = target.argv(["cloud-init", "status", "--wait"], connect_timeout=5)
        try:
            result = subprocess.run(probe, capture_output=True, text=True, timeout=remaining, check=False)
        except subprocess.TimeoutExpired:
            continue
        if result.returncode in _CLOUD_INIT_OK:
            return time.monotonic() - started
        if result.returncode != _SSH_UNREACHABLE:
            raise VmError(
                "cloud-init finished with an error inside the VM",
                command=probe,
                output=result.stdout + result.stderr,
                hint="read /var/log/cloud-init-output.log in the VM (ssh in with the sshCommand output)",
            )
        if not announced_ssh or time.monotonic() - last_report > 30:
            log(f"waiting for SSH on {target.host}:{target.port} ({time.monotonic() - started:.0f} s so far)")
            announced_ssh, last_report = True, time.monotonic()
        time.sleep(poll_seconds)


def stop(paths: VmPaths, *, powerdown_timeout: float = 60.0, log: Log = lambda _: None) -> None:
    """ACPI powerdown, bounded wait, QMP quit, then SIGKILL; runtime files go in any case."""
    try:
        pid = running_pid(paths)
        if pid is None:
            return
        if _qmp(paths, "system_powerdown") and _wait_gone(pid, powerdown_timeout):
            log(f"VM powered off (pid {pid})")
            return
        log(f"VM did not power off within {powerdown_timeout:.0f} s; stopping QEMU")
        if _qmp(paths, "quit") and _wait_gone(pid, 10):
            return
        _kill(pid)
        if not _wait_gone(pid, 10):
            raise VmError(f"QEMU (pid {pid}) survived SIGKILL", hint="stop it by hand: kill -9 " + str(pid))
    finally:
        for path in paths.runtime_files():
            remove_quietly(path)


def serial_tail(paths: VmPaths, lines: int = 40) -> str:
    try:
        text = paths.serial_log.read_text(errors="replace")
    except OSError:
        return "(no serial console output)"
    return "last lines of the serial console:\n" + "\n".join(text.splitlines()[-lines:])


def qmp_execute(paths: VmPaths, command: str, **arguments: object) -> object:
    """Run one QMP command over the VM's socket; raises VmError when QEMU refuses."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    monitor = QEMUMonitorProtocol(paths.qmp_address)
    try:
        monitor.connect()
        return monitor.cmd(command, **arguments)
    except Exception as error:
        raise VmError(
            f"QMP command {command!r} failed: {error}", hint=f"is QEMU running (QMP at {paths.qmp_address})?"
        ) from error
    finally:
        with contextlib.suppress(Exception):
            monitor.close()


def block_resize(paths: VmPaths, device: str, size_bytes: int) -> None:
    """Grow a disk of the running VM; the guest sees the new size at once."""
    reply = qmp_execute(paths, "block_resize", device=device, size=size_bytes)
    if isinstance(reply, dict) and "error" in reply:
        raise VmError(f"QEMU refused to resize {device}: {reply['error']}")


def _qmp(paths: VmPaths, command: str) -> bool:
    try:
        qmp_execute(paths, command)
    except VmError:
        return False
    return True


def _stop_pid_file_process(paths: VmPaths) -> None:
    pid = running_pid(paths)
    if pid is not None:
        _kill(pid)
        _wait_gone(pid, 10)


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        # A zombie has exited; only its parent has not collected it yet.
        return stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    return True


def _alive_windows(pid: int) -> bool:
    # os.kill(pid, 0) would send CTRL_C_EVENT on Windows; ask for the exit code instead.
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    process_query_limited_information, still_active = 0x1000, 259
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if sys.platform != "win32" else signal.SIGTERM)

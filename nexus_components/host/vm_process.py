"""The VM's QEMU on this machine: launch, readiness, liveness, QMP and its shutdown.

Modelled on QEMU's own `QEMUMachine`: a failed launch cleans up and raises one error
carrying the command and its output. Shutdown is the ladder of `qemu_process` (shared
with the inner VM): soft (ACPI powerdown over QMP), then a bounded wait, then hard, with
the runtime files removed in `finally`; `LocalQemu` is what it drives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus_components.core.errors import VmError
from nexus_components.core.files import remove_quietly
from nexus_components.core.qemu_process import GRACE_SECONDS, Log, gone_within, shut_down
from nexus_components.core.ssh import SshTarget
from nexus_components.host import ssh_banner
from nexus_components.host.paths import VmPaths
from nexus_components.host.settings import NetworkConfig, PortForward

# `cloud-init status --wait` exit codes: 0 done, 2 done with recoverable errors (newer
# cloud-init), 1 a critical failure.
_CLOUD_INIT_OK = (0, 2)
# Waits for cloud-init, then flushes the guest's page cache: what the first boot wrote (sshd's
# host keys, cloud-init's records) is on the disk when `up` returns, so a VM killed right after
# (kill -9, the host's power) still boots with a working sshd. A fixed script: no values in it.
READY_PROBE = "cloud-init status --wait; status=$?; sync; exit $status"
_SSH_UNREACHABLE = 255


def check_ports_free(network: NetworkConfig, *, qmp_tcp_port: int | None = None) -> None:
    """Report a busy forward port before QEMU starts, naming the config key that sets it."""
    ports = network.keyed_forwards()
    if qmp_tcp_port is not None:
        ports.append(("nexus:network.qmpPort", PortForward(qmp_tcp_port, 0)))
    for key, forward in ports:
        kind = socket.SOCK_STREAM if forward.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as probe:
            if sys.platform != "win32":
                # As QEMU binds its forwards: connections of a VM that just died linger in
                # TIME_WAIT on the port, which must not count as busy (on Windows the option
                # would let two listeners share a port, so there it stays off).
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def running_pid(paths: VmPaths, recorded_pid: int | None = None) -> int | None:
    """The pid of this stack's QEMU, or None if it is not running (killed, host rebooted).

    Looks at the pid file and at the pid the stack's state recorded, so a VM whose pid
    file (or whole state directory) was deleted by hand is still found.
    """
    pids = vm_pids(paths, recorded_pid, scan=False)
    return pids[0] if pids else None


def vm_pids(paths: VmPaths, recorded_pid: int | None = None, *, scan: bool = True) -> list[int]:
    """Every live QEMU of this stack: the pid file's, the recorded one, and (with `scan`)
    any process whose command line names this stack's pid file, such as a QEMU started
    by an `up` that was killed before it could record anything."""
    candidates = []
    from_file = _pid_file_pid(paths)
    if from_file is not None and _is_our_vm(from_file, paths, trust_unknown=True):
        candidates.append(from_file)
    # A reused pid after a reboot must not be mistaken for our VM: it has to name our pid file.
    if recorded_pid and _is_our_vm(recorded_pid, paths, trust_unknown=False):
        candidates.append(recorded_pid)
    if scan:
        identity = _identity(paths)
        candidates += [pid for pid, command in _process_table() if identity in command and process_alive(pid)]
    return list(dict.fromkeys(candidates))


def _pid_file_pid(paths: VmPaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _identity(paths: VmPaths) -> str:
    # QEMU's own -pidfile argument: unique per stack, and on its command line for its lifetime.
    return f"-pidfile {paths.pid_file}"


def _is_our_vm(pid: int, paths: VmPaths, *, trust_unknown: bool) -> bool:
    if pid <= 0 or pid == os.getpid() or not process_alive(pid):
        return False
    command_line = process_command_line(pid)
    if command_line is None:
        return trust_unknown  # no /proc and no ps (Windows): only the pid file is trusted
    return _identity(paths) in command_line


def _process_table(proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command line) of every process we can see; empty where neither /proc nor ps exist."""
    if proc.is_dir():
        table = []
        for cmdline in proc.glob("[0-9]*/cmdline"):
            try:
                table.append((int(cmdline.parent.name), cmdline.read_bytes().replace(b"\0", b" ").decode()))
            except (OSError, ValueError, UnicodeDecodeError):
                continue
        return table
    if sys.platform == "win32":
        return []
    try:
        result = subprocess.run(
            ["ps", "-axww", "-o", "pid=,command="], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    table = []
    for line in result.stdout.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit():
            table.append((int(pid), command))
    return table


def runs_argv(pid: int, argv: Sequence[str], proc: Path = Path("/proc")) -> bool:
    """Whether the process runs exactly this command line (False where that cannot be told)."""
    cmdline = proc / str(pid) / "cmdline"
    if cmdline.exists():
        try:
            return cmdline.read_bytes().decode(errors="replace").split("\0")[:-1] == list(argv)
        except OSError:
            return False
    command_line = process_command_line(pid, proc)
    return command_line is not None and command_line.strip() == " ".join(argv)


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
    target: SshTarget,
    paths: VmPaths,
    *,
    timeout: float,
    log: Log,
    ready_line: str | None = None,
    fallback_poll_seconds: float = 10.0,
    tick_seconds: float = 0.2,
) -> float:
    """Block until SSH answers and cloud-init is done; return the seconds it took.

    The guest announces the end of cloud-init with `ready_line` on its serial console,
    which QEMU writes to a file: the host notices within a tick and checks SSH once.
    SSH is also tried every `fallback_poll_seconds`, for images whose console is not on
    the serial port; each try (`cloud-init status --wait`) itself waits for cloud-init
    once SSH answers.
    """
    started = time.monotonic()
    deadline = started + timeout
    engine = _engine_lineage()
    watcher = SerialWatcher(paths.serial_log, ready_line) if ready_line else None
    probe_argv = target.argv(["sh", "-c", READY_PROBE], connect_timeout=5)
    probe: subprocess.Popen[str] | None = None
    next_probe_at = started + (fallback_poll_seconds if watcher else 0.0)
    signalled = False
    last_report = started - 30.0
    try:
        while True:
            now = time.monotonic()
            if running_pid(paths) is None:
                raise VmError(
                    "QEMU exited while the VM was booting",
                    output=serial_tail(paths),
                    hint=f"the serial console log is {paths.serial_log}",
                )
            if _engine_lineage() != engine:
                # The engine was killed (Ctrl-C twice): nobody waits for this VM any more.
                raise VmError("pulumi stopped while the VM was booting", hint="run `up` again")
            if now >= deadline:
                raise VmError(
                    f"the VM was not ready within {timeout:.0f} s "
                    f"(SSH on {target.host}:{target.port} and cloud-init)",
                    output=serial_tail(paths),
                    hint="raise nexus:vm.bootTimeoutSeconds if the guest is just slow (TCG is), "
                    f"or read {paths.serial_log}",
                )
            if watcher is not None and not signalled and watcher.seen():
                signalled = True
                next_probe_at = now
                log(f"cloud-init finished after {now - started:.0f} s; checking SSH")
            if probe is None and now >= next_probe_at:
                probe = subprocess.Popen(
                    probe_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            if probe is not None and probe.poll() is not None:
                output = probe.communicate()[0]
                returncode, probe = probe.returncode, None
                if returncode in _CLOUD_INIT_OK:
                    return time.monotonic() - started
                if returncode != _SSH_UNREACHABLE:
                    raise VmError(
                        "cloud-init finished with an error inside the VM",
                        command=probe_argv,
                        output=output,
                        hint="read /var/log/cloud-init-output.log in the VM "
                        "(ssh in with the sshCommand output)",
                    )
                next_probe_at = now + (1.0 if signalled else fallback_poll_seconds)
            if now - last_report >= 30:
                log(
                    f"waiting for cloud-init and SSH on {target.host}:{target.port} "
                    f"({now - started:.0f} s so far)"
                )
                last_report = now
            time.sleep(tick_seconds)
    finally:
        if probe is not None:
            probe.kill()
            probe.wait()


BANNER_TIMEOUT_SECONDS = ssh_banner.TIMEOUT_SECONDS
# A guest can still greet (its sshd on a CPU that runs) while a CPU stuck in its kernel
# keeps every login from running a command.
COMMAND_TIMEOUT_SECONDS = 60.0


def guest_hangs(
    target: SshTarget,
    *,
    banner_timeout: float = BANNER_TIMEOUT_SECONDS,
    command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    login: bool = True,
) -> bool:
    """True when the guest's SSH port accepts connections but the guest does not answer:
    no banner in time, or (with `login`) a logged-in `true` does not finish in time.

    A refused or closed connection is not a hang (sshd stopped, the guest rebooting), nor
    is a login that fails: only silence is. The login costs most of a second under TCG;
    the banner alone a fifth.
    """
    host, port = target.host, target.port
    banner = ssh_banner.take(host, port) or ssh_banner.read(host, port, banner_timeout)
    if banner != ssh_banner.GREETS or not login:
        return banner == ssh_banner.SILENT
    argv = target.argv(["true"], connect_timeout=max(1, int(banner_timeout)))
    try:
        subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=command_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return True
    return False


def _engine_lineage(proc: Path = Path("/proc")) -> tuple[int, int | None]:
    """Our parent and its parent. The engine may run the provider through a wrapper script,
    so the engine's death shows as the wrapper being re-parented."""
    parent = os.getppid()
    try:
        stat = (proc / str(parent) / "stat").read_text()
        return parent, int(stat.rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return parent, None


class SerialWatcher:
    """Notices a line in the serial console file as QEMU appends to it."""

    def __init__(self, path: Path, needle: str) -> None:
        self._path = path
        self._needle = needle.encode()
        self._offset = 0
        self._carry = b""  # the end of the last read, for a needle split across two reads

    def seen(self) -> bool:
        try:
            with self._path.open("rb") as serial:
                serial.seek(self._offset)
                chunk = serial.read()
        except OSError:
            return False
        self._offset += len(chunk)
        window = self._carry + chunk
        self._carry = window[-len(self._needle) :]
        return self._needle in window


def stop(
    paths: VmPaths,
    *,
    recorded_pid: int | None = None,
    powerdown_timeout: float = 60.0,
    log: Log = lambda _: None,
) -> None:
    """Stop every QEMU of this stack: ACPI powerdown, bounded wait, QMP quit, SIGTERM,
    then SIGKILL (qemu_process.shut_down). Runtime files go in any case; a QEMU that
    survives is an error."""
    shut_down(LocalQemu(paths, recorded_pid), powerdown_timeout=powerdown_timeout, log=log)


@dataclass(frozen=True)
class LocalQemu:
    """The VM's QEMU on this machine, for the shutdown ladder (qemu_process.QemuControl):
    found by its pid file, the pid the state recorded and its command line; QMP over its
    socket (TCP on Windows); signals through the OS."""

    paths: VmPaths
    recorded_pid: int | None = None
    subject: str = "VM"
    poll_seconds: float = 0.2

    def pids(self) -> list[int]:
        return vm_pids(self.paths, self.recorded_pid)

    def where(self, pid: int) -> str:
        return f"pid {pid}"

    def monitored(self, pid: int) -> bool:
        # QMP reaches only the QEMU that wrote the pid file; any other gets signals.
        return _pid_file_pid(self.paths) == pid

    def qmp(self, command: str) -> bool:
        return _qmp(self.paths, command)

    def alive(self, pid: int) -> bool:
        return process_alive(pid)

    def terminate(self, pid: int) -> None:
        _signal(pid, signal.SIGTERM)

    def kill(self, pid: int) -> None:
        _signal(pid, signal.SIGKILL if sys.platform != "win32" else signal.SIGTERM)

    def remove_runtime_files(self) -> None:
        for path in self.paths.runtime_files():
            remove_quietly(path)

    def survived(self, pid: int) -> Exception:
        return VmError(f"QEMU (pid {pid}) survived SIGKILL", hint=f"stop it by hand: kill -9 {pid}")


# CSI (colours, cursor), OSC (titles), charset selection, and the two-byte escapes (ESC c).
_ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[0-~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_console_text(text: str) -> str:
    """Console output as plain lines: no colour or cursor codes, no runs of blank lines."""
    text = _ANSI_ESCAPE.sub("", text.replace("\r\n", "\n")).replace("\r", "\n")
    lines = [_CONTROL.sub("", line).rstrip() for line in text.split("\n")]
    kept: list[str] = []
    for line in lines:
        if line or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip("\n")


def serial_tail(paths: VmPaths, lines: int = 40) -> str:
    try:
        text = paths.serial_log.read_text(errors="replace")
    except OSError:
        return "(no serial console output)"
    return "last lines of the serial console:\n" + "\n".join(clean_console_text(text).splitlines()[-lines:])


# A QEMU that is stopped (SIGSTOP) or wedged accepts the socket connection but never
# greets: every QMP call is bounded, so a stuck VM cannot hang `destroy`.
QMP_TIMEOUT_SECONDS = 10.0


def qmp_execute(paths: VmPaths, command: str, **arguments: object) -> object:
    """Run one QMP command over the VM's socket, bounded in time.

    Returns QMP's `return` value; raises VmError when QEMU refuses, is gone, or does
    not answer within QMP_TIMEOUT_SECONDS.
    """
    with qmp_session(paths) as qmp:
        return qmp(command, **arguments)


@contextlib.contextmanager
def qmp_session(paths: VmPaths) -> Iterator[Callable[..., object]]:
    """One QMP connection to the VM's QEMU for a run of commands (a snapshot job and its
    polling): `qmp(command, **arguments)` returns QMP's `return` value, each call bounded
    by QMP_TIMEOUT_SECONDS; VmError as for `qmp_execute`.

    One connection, not one per command: QEMU broadcasts events (a job's status changes,
    STOP, RESUME) and one emitted while a client connects can reach it ahead of the
    greeting, which the client then cannot read (kata-containers/govmm#90)."""
    from qemu.qmp import ConnectError, ExecuteError, QMPClient
    from qemu.qmp.qmp_client import GreetingError

    loop = asyncio.new_event_loop()
    client = QMPClient("nexus")

    def run(awaitable: Awaitable[object], what: str) -> object:
        try:
            return loop.run_until_complete(asyncio.wait_for(awaitable, QMP_TIMEOUT_SECONDS))
        except ExecuteError as error:
            raise VmError(f"QEMU refused the QMP {what}: {error}") from error
        except (asyncio.TimeoutError, TimeoutError) as error:
            raise VmError(
                f"QMP {what}: QEMU did not answer within {QMP_TIMEOUT_SECONDS:.0f} s",
                hint=f"QEMU may be stopped or hung (QMP at {paths.qmp_address})",
            ) from error
        except Exception as error:
            raise VmError(
                f"QMP {what} failed: {error}", hint=f"is QEMU running (QMP at {paths.qmp_address})?"
            ) from error

    async def connect() -> None:
        nonlocal client
        try:
            await client.connect(paths.qmp_address)
        except ConnectError as error:
            if not isinstance(error.exc, GreetingError):
                raise
            # An event read ahead of the greeting (see above) is consumed now: once more.
            client = QMPClient("nexus")
            await client.connect(paths.qmp_address)

    try:
        run(connect(), "connection")

        def qmp(command: str, **arguments: object) -> object:
            return run(client.execute(command, dict(arguments) or None), f"command {command!r}")

        yield qmp
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(client.disconnect(), QMP_TIMEOUT_SECONDS))
        loop.close()


def block_resize(paths: VmPaths, device: str, size_bytes: int) -> None:
    """Grow a disk of the running VM; the guest sees the new size at once."""
    qmp_execute(paths, "block_resize", device=device, size=size_bytes)


def _qmp(paths: VmPaths, command: str) -> bool:
    try:
        qmp_execute(paths, command)
    except VmError:
        return False
    return True


def _stop_pid_file_process(paths: VmPaths) -> None:
    pid = running_pid(paths)
    if pid is not None:
        qemu = LocalQemu(paths)
        qemu.kill(pid)
        gone_within(qemu, pid, GRACE_SECONDS)


def process_alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has); Windows asked through its API."""
    if sys.platform == "win32":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[-1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return not sys.platform.startswith("linux")  # no /proc (macOS), or gone just now
    # A zombie has exited; only its parent has not collected it yet. But a killed QEMU's
    # main thread turns zombie before its other threads finish exiting, and those still
    # hold its files and ports: only a zombie with no thread left is gone.
    return state != "Z" or threads > 1


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


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as error:
        raise VmError(
            f"cannot stop QEMU (pid {pid}): {error.strerror}",
            hint=f"it runs as another user: stop it as that user (kill {pid})",
        ) from error

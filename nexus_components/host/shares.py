"""The host's side of nexus:mounts at run time: virtiofsd processes before QEMU starts, and
the guest's mount step over SSH once the VM is ready (the pure parts are in mounts.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from nexus_components.core import ssh
from nexus_components.core.errors import HostToolError, VmError
from nexus_components.core.files import remove_quietly
from nexus_components.host import mounts
from nexus_components.host.mounts import Mount
from nexus_components.host.paths import MAX_MOUNTS, VmPaths

GUEST_MOUNT_TIMEOUT = 120


def find_virtiofsd() -> str | None:
    for candidate in mounts.VIRTIOFSD_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def require_virtiofsd(items: Sequence[Mount]) -> str | None:
    """virtiofsd's path when a mount needs it; a host without it is refused (at preview)."""
    if not any(m.type == "virtiofs" for m in items):
        return None
    found = find_virtiofsd()
    if found is None:
        index = next(i for i, m in enumerate(items) if m.type == "virtiofs")
        raise HostToolError(
            f"{mounts.KEY}[{index}].type: 'virtiofs' needs virtiofsd, which is not installed on this machine "
            f"(looked for {', '.join(mounts.VIRTIOFSD_CANDIDATES)})",
            hint="install it (Debian 12: qemu-system-common ships /usr/lib/qemu/virtiofsd; newer Debian and "
            "Ubuntu: the virtiofsd package; Fedora: virtiofsd), or set the type to 9p or auto",
        )
    return found


def start_virtiofsd(paths: VmPaths, items: Sequence[Mount], binary: str | None) -> None:
    """One virtiofsd per virtiofs mount, listening on its socket before QEMU connects; each exits
    when QEMU goes away. Any left over from an earlier start is stopped first."""
    stop_virtiofsd(paths)
    for index, mount in enumerate(items):
        if mount.type != "virtiofs":
            continue
        if binary is None:
            raise VmError(f"{mounts.KEY}[{index}]: virtiofs needs virtiofsd and none was given")
        socket = paths.virtiofs_socket(index)
        remove_quietly(socket)
        argv = mounts.virtiofsd_argv(
            binary, mounts.virtiofsd_flavour(binary), mount, socket, as_root=os.geteuid() == 0
        )
        with open(paths.virtiofs_log(index), "wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        paths.virtiofs_pid(index).write_text(f"{process.pid}\n")
        deadline = time.monotonic() + 30
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = paths.virtiofs_log(index).read_text(errors="replace")
                stop_virtiofsd(paths)
                raise VmError(
                    f"{mounts.KEY}[{index}]: virtiofsd did not start serving {mount.host}",
                    command=argv,
                    output=output,
                    hint="QEMU's own virtiofsd (Debian 12) needs root; the Rust virtiofsd runs as any user",
                )
            time.sleep(0.1)


def stop_virtiofsd(paths: VmPaths) -> None:
    """Stop the virtiofsd processes this stack's pid files name (only if they are virtiofsd)."""
    for index in range(MAX_MOUNTS):
        pid_file = paths.virtiofs_pid(index)
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        _end([pid], _is_virtiofsd)
        for stale in (pid_file, paths.virtiofs_socket(index)):
            remove_quietly(stale)


def _is_virtiofsd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"virtiofsd" in cmdline.read().split(b"\0")[0]
    except OSError:
        return False


def mount_in_guest(target: ssh.SshTarget, items: Sequence[Mount]) -> None:
    """Write the shares into the guest's fstab and mount them (also with no mounts: then the
    block of an earlier start is removed)."""
    script = mounts.guest_script(items)
    argv = target.argv(["sudo", "sh", "-c", script], connect_timeout=30)
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=GUEST_MOUNT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise VmError(
            f"{mounts.KEY}: the VM did not mount the shares within {GUEST_MOUNT_TIMEOUT} s",
            command=argv,
        ) from error
    if result.returncode != 0:
        raise VmError(
            f"{mounts.KEY}: the VM could not mount the shares",
            command=["ssh", "...", "sudo", "sh", "-c", "<mount script>"],
            output=(result.stderr or result.stdout).strip(),
            hint="the output names the mount; `dmesg` in the VM tells more",
        )


# ---------------------------------------------------------------- reverse-sshfs


def find_sftp_server(os_name: str) -> str | None:
    for candidate in mounts.SFTP_SERVER_CANDIDATES.get(os_name, ()):
        if os.path.exists(candidate):
            return candidate
    return shutil.which("sftp-server")


def require_sftp_server(items: Sequence[Mount], os_name: str) -> str | None:
    """The host's sftp-server when a reverse-sshfs mount needs it; refused at preview without."""
    if not any(m.type == "reverse-sshfs" for m in items):
        return None
    found = find_sftp_server(os_name)
    if found is None:
        index = next(i for i, m in enumerate(items) if m.type == "reverse-sshfs")
        raise HostToolError(
            f"{mounts.KEY}[{index}].type: 'reverse-sshfs' needs OpenSSH's sftp-server on this machine, "
            "which was not found",
            hint="install the OpenSSH server package (Debian/Ubuntu: openssh-sftp-server; Windows: the "
            "OpenSSH optional feature), or choose another type",
        )
    return found


def start_reverse_sshfs(
    paths: VmPaths, target: ssh.SshTarget, items: Sequence[Mount], sftp_server: str | None, os_name: str
) -> None:
    """Per reverse-sshfs mount, two processes joined by two pipes, detached from us (they outlive
    `up`): the host's sftp-server and an ssh whose remote command is the guest's sshfs. Both end
    when the VM goes away (the connection drops) or when stop_reverse_sshfs ends them."""
    stop_reverse_sshfs(paths)
    for index, mount in enumerate(items):
        if mount.type != "reverse-sshfs":
            continue
        if sftp_server is None:
            raise VmError(f"{mounts.KEY}[{index}]: reverse-sshfs needs sftp-server and none was given")
        to_guest_read, to_guest_write = os.pipe()
        to_host_read, to_host_write = os.pipe()
        ssh_argv = [*target.argv(connect_timeout=30), "--", mounts.sshfs_command(mount, os_name, index)]
        with open(paths.sshfs_log(index), "wb") as log:
            guest = subprocess.Popen(
                ssh_argv, stdin=to_guest_read, stdout=to_host_write, stderr=log, start_new_session=True
            )
            server = subprocess.Popen(
                mounts.sftp_server_argv(sftp_server, mount),
                stdin=to_host_read,
                stdout=to_guest_write,
                stderr=log,
                start_new_session=True,
            )
        for fd in (to_guest_read, to_guest_write, to_host_read, to_host_write):
            os.close(fd)
        paths.sshfs_pids(index).write_text(f"{guest.pid} {server.pid}\n")
        if not _mounted(target, mount.vm, guest):
            output = paths.sshfs_log(index).read_text(errors="replace").strip()
            stop_reverse_sshfs(paths)
            if mounts.no_sshfs_message(index) in output:
                raise VmError(
                    f"{mounts.no_sshfs_message(index)} (it would mount {mount.host} at {mount.vm})",
                    hint="the seed installs sshfs with nexus:guest.installPackages true; else "
                    + mounts.SSHFS_INSTALL_STEP
                    + ", then run up again",
                )
            raise VmError(
                f"{mounts.KEY}[{index}]: the VM did not mount {mount.host} at {mount.vm} with sshfs",
                command=ssh_argv,
                output=output,
                hint="the VM needs FUSE in its kernel and sshfs (" + mounts.SSHFS_INSTALL_STEP + ")",
            )


def _mounted(target: ssh.SshTarget, path: str, guest: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if guest.poll() is not None:
            return False
        check = subprocess.run(
            target.argv(["mountpoint", "-q", path], connect_timeout=30),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if check.returncode == 0:
            return True
        time.sleep(1)
    return False


def stop_reverse_sshfs(paths: VmPaths) -> None:
    for index in range(MAX_MOUNTS):
        pid_file = paths.sshfs_pids(index)
        try:
            pids = [int(word) for word in pid_file.read_text().split()]
        except (OSError, ValueError):
            continue
        _end(pids, lambda pid: _cmdline_has(pid, (b"ssh", b"sftp-server")))
        remove_quietly(pid_file)


def _end(pids: Sequence[int], is_ours: Callable[[int], bool]) -> None:
    """SIGTERM those of `pids` that are still the stack's processes (a pid file can outlive
    its process, and the pid be reused), give them 5 s, then SIGKILL what is left."""
    ours = [pid for pid in pids if is_ours(pid)]
    for pid in ours:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for pid in ours:
        while not _exited(pid, is_ours) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _exited(pid, is_ours):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _exited(pid: int, is_ours: Callable[[int], bool]) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True  # our own child, reaped
    return not is_ours(pid)


def _cmdline_has(pid: int, names: tuple[bytes, ...]) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            program = cmdline.read().split(b"\0")[0]
    except OSError:
        return False
    return any(program.endswith(name) or program.endswith(name + b".exe") for name in names)

"""The host's side of nexus:mounts at run time: virtiofsd processes before QEMU starts, and
the guest's mount step over SSH once the VM is ready (the pure parts are in mounts.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

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
        if _is_virtiofsd(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not _gone(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for stale in (pid_file, paths.virtiofs_socket(index)):
            remove_quietly(stale)


def _is_virtiofsd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"virtiofsd" in cmdline.read().split(b"\0")[0]
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True  # our own child, reaped
    except ChildProcessError:
        pass
    return not _is_virtiofsd(pid)


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

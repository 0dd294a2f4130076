"""Host folders shared into the lab (`nexus:mounts`): the settings, their checks, QEMU's part of
the command line, virtiofsd's command line and the guest's mount step.

Pure, but for `load_mounts`, which looks at the host folders (they must exist at preview), and
`virtiofsd_flavour`, which asks a virtiofsd binary what it is.

Types (picked per host OS by `auto`):
- 9p: QEMU's own file server (`-fsdev local` + `virtio-9p-pci`), Linux and macOS hosts. The
  guest mounts it with `trans=virtio,version=9p2000.L`. `security_model=none`: files keep their
  host owner and mode; a file the guest creates is created by QEMU, so owned by the host user
  who runs QEMU (a QEMU run as root keeps the guest's uid, as `passthrough` does).
- virtiofs: a virtiofsd per folder, QEMU's `vhost-user-fs-pci` and the guest's memory in a
  shared memfd backend. Linux hosts with virtiofsd only; the fastest.

A mount with `innerVm` goes on into the inner VM, whatever its type: the inner QEMU, in the
container, serves the container path over 9p (QEMU's own server needs no daemon there), under
the same tag as the VM's (`inner_shares`); a cloud image's seed mounts it (`inner_fstab_script`).
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from nexus_components.core.errors import ConfigError
from nexus_components.guest.settings import InnerShare

TYPES = ("auto", "9p", "virtiofs", "reverse-sshfs")
# Types QEMU serves itself (a device on its command line) and the guest's fstab lists.
DEVICE_TYPES = ("9p", "virtiofs")
KEY = "nexus:mounts"
# Guest paths: absolute, no whitespace (fstab's separator), ':' (Docker's volume separator),
# ',' (the mount options' separator) or control characters.
GUEST_PATH = r"^/[^\x00-\x20:,]*\Z"
GUEST_PATH_RULE = "an absolute path without spaces, ':', ',' or control characters"
HOST_PATH = r"^[^\x00-\x1f,]+\Z"
HOST_PATH_RULE = "a folder on this machine (absolute, ~/..., or relative to the project) without commas"
SCHEMA: dict[str, Any] = {
    "type": "array",
    "maxItems": 16,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["host", "vm"],
        "properties": {
            "host": {"type": "string", "minLength": 1, "pattern": HOST_PATH, "description": HOST_PATH_RULE},
            "vm": {"type": "string", "pattern": GUEST_PATH, "description": GUEST_PATH_RULE},
            "container": {"type": "string", "pattern": GUEST_PATH, "description": GUEST_PATH_RULE},
            "innerVm": {"type": "string", "pattern": GUEST_PATH, "description": GUEST_PATH_RULE},
            "readOnly": {"type": "boolean"},
            "type": {"enum": list(TYPES)},
        },
    },
}

# Guest paths a share must not cover: the kernel's, the boot's and the system's own.
RESERVED_GUEST_PATHS = ("/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib")
TAG_PREFIX = "nexus"
FSTAB_BEGIN = "# nexus:mounts begin (written by nexus-nested-vm at each start; edits are lost)"
FSTAB_END = "# nexus:mounts end"
MSIZE_9P = 256 * 1024  # what Lima's docs advise at least; kernels cap it per transport


@dataclass(frozen=True)
class Mount:
    host: str  # absolute, resolved
    vm: str
    type: str  # never "auto"
    read_only: bool = False
    container: str | None = None
    inner_vm: str | None = None  # where the inner VM sees it (served from `container`)

    def tag(self, index: int) -> str:
        """The name QEMU gives the share and the guest mounts it by (at most 31 bytes for 9p)."""
        return f"{TAG_PREFIX}{index}"


def auto_type(host_os: str) -> str:
    """What `auto` picks: 9p where QEMU has it (Linux, macOS); reverse-sshfs on Windows."""
    return "reverse-sshfs" if host_os == "windows" else "9p"


def load_mounts(
    raw: Sequence[Mapping[str, Any]],
    *,
    home: Path,
    base_dir: Path,
    host_os: str,
    playground_enabled: bool,
    container_paths_in_use: Mapping[str, str] | None = None,
    inner_vm_enabled: bool = False,
) -> tuple[Mount, ...]:
    """Defaults and the checks a schema cannot make, for an already schema-valid nexus:mounts."""
    mounts: list[Mount] = []
    vm_paths: dict[str, str] = {}
    inner_paths: dict[str, str] = {}
    container_paths: dict[str, str] = dict(container_paths_in_use or {})
    for index, entry in enumerate(raw):
        key = f"{KEY}[{index}]"
        host = _host_folder(f"{key}.host", entry["host"], home, base_dir)
        vm = _guest_path(f"{key}.vm", entry["vm"])
        _claim(f"{key}.vm", entry["vm"], vm, vm_paths, "VM")
        container = entry.get("container")
        if container is not None:
            if not playground_enabled:
                raise ConfigError(
                    f"{key}.container: got {container!r} while nexus:playground.enabled is false; "
                    "allowed: no container path without the playground",
                    hint=f"remove {key}.container, or enable the playground",
                )
            container = _guest_path(f"{key}.container", container, what="container")
            previous = container_paths.get(container)
            if previous:
                raise ConfigError(
                    f"{key}.container: got {container!r}, already mounted by {previous}; "
                    "allowed: a container path of its own",
                    hint="give each mount its own folder in the container",
                )
            container_paths[container] = f"{key}.container"
        inner_vm = entry.get("innerVm")
        if inner_vm is not None:
            inner_vm = _inner_vm_path(key, inner_vm, container, inner_vm_enabled, inner_paths)
        kind = entry.get("type", "auto")
        chosen = auto_type(host_os) if kind == "auto" else kind
        if chosen == "9p" and host_os == "windows":
            raise ConfigError(
                f"{key}.type: got '9p'; QEMU on Windows has no 9p; allowed there: auto or reverse-sshfs",
                hint=f"set {key}.type to auto (reverse-sshfs)",
            )
        if chosen == "virtiofs" and host_os != "linux":
            raise ConfigError(
                f"{key}.type: got 'virtiofs' on a {host_os} host; allowed there: auto, 9p or "
                "reverse-sshfs (virtiofsd runs on Linux only)",
                hint=f"set {key}.type to auto",
            )
        mounts.append(
            Mount(
                host=str(host),
                vm=vm,
                type=chosen,
                read_only=bool(entry.get("readOnly", False)),
                container=container,
                inner_vm=inner_vm,
            )
        )
    return tuple(mounts)


def _inner_vm_path(
    key: str, value: str, container: str | None, inner_vm_enabled: bool, seen: dict[str, str]
) -> str:
    """Checks `innerVm` of one mount; `seen` (inner VM path -> its key) gets this one."""
    if container is None:
        raise ConfigError(
            f"{key}.innerVm: got {value!r} without {key}.container; allowed: an inner VM path only "
            "with a container path (the inner VM's QEMU runs in the container and shares what it sees)",
            hint=f"set {key}.container too, such as /mnt/share, or remove {key}.innerVm",
        )
    if not inner_vm_enabled:
        raise ConfigError(
            f"{key}.innerVm: got {value!r} while nexus:innerVm.enabled is false; "
            "allowed: no inner VM path without the inner VM",
            hint=f"remove {key}.innerVm, or enable the inner VM",
        )
    path = _guest_path(f"{key}.innerVm", value, what="inner VM")
    _claim(f"{key}.innerVm", value, path, seen, "inner VM")
    return path


def _claim(key: str, value: str, path: str, seen: dict[str, str], where: str) -> None:
    """`path` as a mount's own folder in `where` (the VM, the inner VM): not the same as, inside
    or around another mount's there. `seen` maps the paths taken so far to their keys."""
    article = "an" if where[0] in "aeiou" else "a"
    for other, other_key in seen.items():
        if path == other or _inside(path, other) or _inside(other, path):
            raise ConfigError(
                f"{key}: got {value!r}, "
                + (f"the same {where} path as" if path == other else f"inside or around the {where} path of")
                + f" {other_key}; allowed: {article} {where} path of its own, not nested in another mount",
                hint=f"give each mount its own folder in the {where}",
            )
    seen[path] = key


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def _host_folder(key: str, value: str, home: Path, base_dir: Path) -> Path:
    if value == "~" or value.startswith("~/"):
        path = home / value[2:]
    else:
        path = Path(value)
        path = path if path.is_absolute() else base_dir / path
    path = Path(posixpath.normpath(path)) if path.as_posix().startswith("/") else path
    shown = value if str(path) == value else f"{value} ({path})"
    if not path.exists():
        raise ConfigError(
            f"{key}: got {shown!r}, which does not exist; allowed: an existing folder on this machine",
            hint="create the folder first (mounts never create or change anything on the host)",
        )
    if not path.is_dir():
        raise ConfigError(
            f"{key}: got {shown!r}, which is a file; allowed: a folder",
            hint="mount the folder that holds it, or copy the file with `scripts/lab cp`",
        )
    return path


def _guest_path(key: str, value: str, *, what: str = "VM") -> str:
    path = posixpath.normpath(value)
    if ".." in value.split("/") or path == "/":
        raise ConfigError(
            f"{key}: got {value!r}; allowed: an absolute {what} path below /, without '..'",
            hint="name the folder the share appears at, such as /srv/project",
        )
    for reserved in RESERVED_GUEST_PATHS:
        if path == reserved or _inside(path, reserved):
            raise ConfigError(
                f"{key}: got {value!r}, under {reserved}; allowed: {'an' if what[0] in 'aeiou' else 'a'} "
                f"{what} path outside " + ", ".join(RESERVED_GUEST_PATHS),
                hint="mount it somewhere of its own, such as /srv/project or /mnt/project",
            )
    return path


# ---------------------------------------------------------------- QEMU and virtiofsd


def qemu_opt_value(value: object) -> str:
    return str(value).replace(",", ",,")


def memory_backend_argv(mounts: Sequence[Mount], memory_mib: int) -> list[str]:
    """virtiofs needs the guest's memory shared with virtiofsd: a memfd backend as its NUMA node."""
    if not any(m.type == "virtiofs" for m in mounts):
        return []
    return [
        "-object",
        f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on",
        "-numa",
        "node,memdev=mem",
    ]


def device_argv(mounts: Sequence[Mount], sockets: Sequence[PurePath | None]) -> list[str]:
    """QEMU's devices for the shares; `sockets[i]` is virtiofsd's socket of mount i (virtiofs only)."""
    argv: list[str] = []
    for index, (mount, socket) in enumerate(zip(mounts, sockets, strict=True)):
        tag = mount.tag(index)
        if mount.type == "9p":
            fsdev = [
                "local",
                f"id=fs{index}",
                f"path={qemu_opt_value(mount.host)}",
                "security_model=none",
            ]
            if mount.read_only:
                fsdev.append("readonly=on")
            argv += ["-fsdev", ",".join(fsdev), "-device", f"virtio-9p-pci,fsdev=fs{index},mount_tag={tag}"]
        elif mount.type == "virtiofs":
            if socket is None:
                raise ValueError(f"mount {index} is virtiofs and has no socket")
            argv += [
                "-chardev",
                f"socket,id=vfs{index},path={qemu_opt_value(socket)}",
                "-device",
                f"vhost-user-fs-pci,chardev=vfs{index},tag={tag}",
            ]
        elif mount.type != "reverse-sshfs":  # served over SSH, no device
            raise ValueError(f"unknown mount type {mount.type!r}")
    return argv


VIRTIOFSD_CANDIDATES = ("virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")


def virtiofsd_flavour(binary: str) -> str:
    """ "rust" (virtiofsd 1.x: --shared-dir, --readonly, unprivileged with --sandbox none) or "c"
    (QEMU's own, up to 7.2: -o source=..., needs root)."""
    result = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30, check=False)
    return "rust" if "--shared-dir" in result.stdout + result.stderr else "c"


def virtiofsd_argv(binary: str, flavour: str, mount: Mount, socket: PurePath, *, as_root: bool) -> list[str]:
    if flavour == "rust":
        argv = [binary, f"--socket-path={socket}", f"--shared-dir={mount.host}", "--cache=auto"]
        if mount.read_only:
            argv.append("--readonly")
        if not as_root:
            argv.append("--sandbox=none")
        return argv
    # QEMU's C virtiofsd has no read-only mode: the guest mounts it read-only (see guest_script).
    return [binary, f"--socket-path={socket}", "-o", f"source={mount.host}", "-o", "cache=auto"]


# ---------------------------------------------------------------- the guest's side


def fstab_line(mount: Mount, index: int) -> str:
    # nofail: a share that is gone never stops the boot; x-systemd.before: Docker starts the
    # playground container (restart policy) only once its bind mount's source is mounted.
    options = ["nofail", "x-systemd.before=docker.service", "ro" if mount.read_only else "rw"]
    if mount.type == "9p":
        options = ["trans=virtio", "version=9p2000.L", f"msize={MSIZE_9P}", "cache=mmap", *options]
        fs = "9p"
    else:
        fs = "virtiofs"
    return f"{mount.tag(index)} {mount.vm} {fs} {','.join(options)} 0 0"


def _fstab_block_steps(entries: Sequence[str]) -> list[str]:
    """Shell steps that replace our block of /etc/fstab with `entries` (no block when none)."""
    lines = [FSTAB_BEGIN, *entries, FSTAB_END]
    steps = [
        f"begin={shlex.quote(FSTAB_BEGIN)}",
        f"end={shlex.quote(FSTAB_END)}",
        # Keep everything but our own block, then append the new block (none when no mounts).
        'kept=$(awk -v b="$begin" -v e="$end" \'$0==b{skip=1;next} $0==e{skip=0;next} !skip\' /etc/fstab)',
        'printf "%s\\n" "$kept" > /etc/fstab.nexus-new',
    ]
    if entries:
        steps.append(
            f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} >> /etc/fstab.nexus-new"
        )
    return [*steps, "cat /etc/fstab.nexus-new > /etc/fstab", "rm -f /etc/fstab.nexus-new"]


def guest_script(mounts: Sequence[Mount]) -> str:
    """A shell script, run as root in the VM at each start: the shares go into /etc/fstab (so a
    reboot of the guest mounts them again, before Docker starts), then are mounted now. Every
    value is quoted; guest paths have no spaces (GUEST_PATH) but are quoted anyway."""
    devices = [(i, m) for i, m in enumerate(mounts) if m.type in DEVICE_TYPES]
    # With no mount, the block is still rewritten (to none): the VM drops what it had.
    steps = [
        "set -eu",
        *_fstab_block_steps([fstab_line(m, i) for i, m in devices]),
        "systemctl daemon-reload 2>/dev/null || true",
    ]
    for index, mount in devices:
        path = shlex.quote(mount.vm)
        module = "9pnet_virtio" if mount.type == "9p" else "virtiofs"
        steps += [
            f"modprobe {module} 2>/dev/null || true",
            f"mkdir -p {path}",
            f"mountpoint -q {path} || mount {path} || "
            f"{{ echo {shlex.quote(_no_mount_hint(mount, index))} >&2; exit 3; }}",
        ]
    return "\n".join(steps) + "\n"


# ---------------------------------------------------------------- reverse-sshfs

SFTP_SERVER_CANDIDATES = {
    "linux": ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server"),
    "darwin": ("/usr/libexec/sftp-server",),
    "windows": (r"C:\Windows\System32\OpenSSH\sftp-server.exe",),
}


def sftp_server_argv(binary: str, mount: Mount) -> list[str]:
    """The host's sftp-server, serving the share over the pipe (-R: read-only mode)."""
    return [binary, "-e", *(["-R"] if mount.read_only else [])]


def sftp_path(host_path: str, host_os: str) -> str:
    """The host folder as an SFTP path: Windows' OpenSSH serves C:\\x as /C:/x."""
    if host_os == "windows":
        return "/" + host_path.replace("\\", "/")
    return host_path


NO_SSHFS_EXIT = 127  # the shell's "command not found"
SSHFS_INSTALL_STEP = (
    "install sshfs in the VM: sudo apt-get install sshfs (or list it in nexus:guest.packages)"
)


def no_sshfs_message(index: int) -> str:
    return f"{KEY}[{index}]: type reverse-sshfs needs sshfs in the VM and it has none; {SSHFS_INSTALL_STEP}"


def guest_packages(mounts: Sequence[Mount]) -> tuple[str, ...]:
    """What the VM's seed installs for the shares: sshfs for reverse-sshfs (9p and virtiofs are
    the kernel's)."""
    return ("sshfs",) if any(m.type == "reverse-sshfs" for m in mounts) else ()


def sshfs_command(mount: Mount, host_os: str, index: int) -> str:
    """The line the guest's shell runs (ssh's remote command): make the folder, then sshfs in the
    foreground, speaking SFTP over ssh's stdin/stdout (`passive`, sshfs 3.7's `slave`). Run as
    root with allow_other, so the container's root and every VM user reach it; idmap=user shows
    the host user's files as the login user's (uid/gid of the login user, read before sudo).
    A guest without sshfs says so, naming the mount, and exits NO_SSHFS_EXIT."""
    options = [
        "passive",
        "allow_other",
        "idmap=user",
        "uid=$(id -u)",
        "gid=$(id -g)",
        "ro" if mount.read_only else "rw",
    ]
    path = shlex.quote(mount.vm)
    remote = shlex.quote(":" + sftp_path(mount.host, host_os))
    # sudo unless the login user is root already.
    root = 'as=sudo; [ "$(id -u)" = 0 ] && as=; '
    check = (
        f"command -v sshfs >/dev/null 2>&1 || "
        f"{{ echo {shlex.quote(no_sshfs_message(index))} >&2; exit {NO_SSHFS_EXIT}; }}; "
    )
    return check + root + f"$as mkdir -p {path} && exec $as sshfs -f -o {','.join(options)} {remote} {path}"


def _no_mount_hint(mount: Mount, index: int) -> str:
    fs = "9p (modules 9p, 9pnet_virtio)" if mount.type == "9p" else "virtiofs (module virtiofs)"
    return f"{KEY}[{index}]: the VM could not mount {mount.vm}; its kernel needs {fs}" + (
        " (Debian's cloud kernel has no 9p: use an image with a generic kernel, or type virtiofs)"
        if mount.type == "9p"
        else ""
    )


def as_props(mounts: Sequence[Mount]) -> list[dict[str, Any]]:
    """The mounts as QemuVm's typed input (nested values go by their schema names). Without
    `innerVm`: the inner VM's shares are InnerQemu's input, and changing one leaves the VM be."""
    return [
        {"host": m.host, "vm": m.vm, "type": m.type, "readOnly": m.read_only}
        | ({"container": m.container} if m.container else {})
        for m in mounts
    ]


def from_props(items: Sequence[Mapping[str, Any]] | None) -> tuple[Mount, ...]:
    return tuple(
        Mount(
            host=item["host"],
            vm=item["vm"],
            type=item["type"],
            read_only=bool(item.get("readOnly") or False),
            container=item.get("container"),
        )
        for item in items or ()
    )


# ---------------------------------------------------------------- the inner VM's side


def inner_shares(mounts: Sequence[Mount]) -> tuple[InnerShare, ...]:
    """The mounts with `innerVm`, as the inner VM's shares: each served from its container path,
    under the tag the VM knows it by (nexus<index of nexus:mounts>)."""
    return tuple(
        InnerShare(tag=m.tag(i), source=m.container, path=m.inner_vm, read_only=m.read_only)
        for i, m in enumerate(mounts)
        if m.inner_vm and m.container
    )


def inner_device_argv(shares: Sequence[InnerShare]) -> list[str]:
    """The inner QEMU's 9p devices: `readonly=on` makes QEMU refuse writes whatever the guest does."""
    argv: list[str] = []
    for index, share in enumerate(shares):
        fsdev = ["local", f"id=share{index}", f"path={qemu_opt_value(share.source)}", "security_model=none"]
        if share.read_only:
            fsdev.append("readonly=on")
        argv += [
            "-fsdev",
            ",".join(fsdev),
            "-device",
            f"virtio-9p-pci,fsdev=share{index},mount_tag={share.tag}",
        ]
    return argv


def inner_fstab_line(share: InnerShare) -> str:
    options = [
        "trans=virtio",
        "version=9p2000.L",
        f"msize={MSIZE_9P}",
        "nofail",
        "ro" if share.read_only else "rw",
    ]
    return f"{share.tag} {share.path} 9p {','.join(options)} 0 0"


def inner_fstab_script(shares: Sequence[InnerShare]) -> str:
    """A shell script the inner VM's seed runs as root at each boot (cloud-init's bootcmd): the
    shares go into /etc/fstab (nofail: a missing share never stops the boot), then are mounted.
    A share that cannot be mounted says why on the console; the boot goes on (each mount is
    in an `||` list, which `set -e` lets fail; a failed fstab step stops before fstab changes)."""
    steps = ["set -eu", *_fstab_block_steps([inner_fstab_line(s) for s in shares])]
    for share in shares:
        path = shlex.quote(share.path)
        hint = (
            f"nexus:mounts ({share.tag}): the inner VM could not mount {share.path}; its kernel needs 9p "
            "(modules 9p, 9pnet_virtio; Debian's cloud kernel has none, Ubuntu's has them)"
        )
        steps += [
            "modprobe 9pnet_virtio 2>/dev/null || true",
            f"mkdir -p {path}",
            f"mountpoint -q {path} || mount {path} || echo {shlex.quote(hint)} >&2",
        ]
    return "\n".join(steps) + "\n"

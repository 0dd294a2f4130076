"""Build (once) and cache a small, real Debian 12 cloud image for the end-to-end tests.

No cloud-image server is reachable from the test machines, so the image is made locally from
Debian's package mirror: ``mmdebstrap`` a minimal bookworm system with a cloud kernel,
cloud-init, sshd and growpart straight into an ext4 file system on a loop device, make the raw
disk BIOS-bootable with extlinux, then convert it to a compressed qcow2. It boots under SeaBIOS
like a real cloud image and is configured by a cloud-init NoCloud seed (volume label
``cidata``).

Three recipes share this code: ``BASE`` (the host layers' tests), ``GUEST_LAYERS``, which
also bakes in the seed's guest packages (Docker, QEMU, libvirt, cpu-checker), sshfs and Debian's
``docker-registry``, so the guest-layer tests do not spend minutes in ``apt-get`` under TCG, and
``GENERIC``, ``BASE`` with Debian's generic kernel instead of the cloud one: the cloud kernel
has no 9p, so the 9p shares' test boots this one.

The result is cached under ``<cache_root>/<recipe version>/``: ``debian-12-nexus-test.qcow2``,
``SHA256SUMS`` (``sha256sum`` format) and a ``.complete`` marker written last. A build runs in a
temporary directory next to it, under an exclusive lock, and is renamed into place only when
finished, so an interrupted build never leaves a half-made image behind.

Building needs root (loop devices, mount) and the Debian packages ``mmdebstrap``,
``qemu-utils``, ``extlinux`` and ``syslinux-common``. Run ``python -m tests.support.debian_image``
(as root) to build or reuse the image and print its directory.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.build_cache import cached_build

# Bump whenever anything below changes what ends up in the image.
RECIPE_VERSION = "debian12-r2"

IMAGE_NAME = "debian-12-nexus-test.qcow2"
SUMS_NAME = "SHA256SUMS"
COMPLETE_MARKER = ".complete"
# Beside the toolchain and the image cache; NEXUS_CACHE_DIR moves all of them (scripts/setup).
DEFAULT_CACHE_BASE = (
    Path(os.environ.get("NEXUS_CACHE_DIR", Path.home() / ".cache" / "nexus-nested-vm")) / "test-image"
)

SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "NEXUS_TEST_IMAGE_MIRROR"

PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",  # systemd-logind needs it; logind turns an ACPI power button into a clean shutdown
    "cloud-init",
    "cloud-guest-utils",  # growpart
    "fdisk",  # sfdisk, used by growpart on an MBR disk
    "e2fsprogs",  # resize2fs, used by cloud-init's resizefs
    "openssh-server",
    "sudo",
    "ifupdown",  # cloud-init renders its DHCP fallback network config for ifupdown (ENI)
    "isc-dhcp-client",
    "netbase",
    "iproute2",
    "ca-certificates",
    "locales",
)

# Keep documentation, man pages and translations out of the image (also for later installs).
DPKG_OPTIONS: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)

# What the guest layers need in the VM (the seed's cloud-init packages), plus a registry
# the image-reference tests can push to and pull from, since no public one is reachable.
GUEST_LAYER_PACKAGES: tuple[str, ...] = (
    "docker.io",
    "apparmor",  # the kernel enables AppArmor; without the parser dockerd cannot start containers
    "qemu-system-x86",
    "qemu-utils",
    "libvirt-daemon-system",
    "libvirt-clients",
    "cpu-checker",
    "docker-registry",
    "sshfs",  # reverse-sshfs mounts (the seed installs it too; baked in to spare apt under TCG)
)

ROOT_LABEL = "rootfs"
SECTOR = 512
PART_START_SECTOR = 2048
RAW_SIZE = 2 * 1024**3


@dataclass(frozen=True)
class Recipe:
    """What goes into one cached test image; ``version`` names its cache directory."""

    version: str
    packages: tuple[str, ...]
    raw_size: int


BASE = Recipe(RECIPE_VERSION, PACKAGES, RAW_SIZE)
# Bump the version whenever anything that ends up in this image changes.
GUEST_LAYERS = Recipe("debian12-guest-r4", PACKAGES + GUEST_LAYER_PACKAGES, 4 * 1024**3)
# Debian's generic kernel: unlike the cloud one it has 9p (modules 9p, 9pnet, 9pnet_virtio).
# Its initramfs keeps initramfs-tools' default MODULES=most: MODULES=dep would look at the
# build's loop device, not the VM's virtio disk, and leave virtio_blk out.
GENERIC = Recipe(
    "debian12-generic-r2",
    tuple("linux-image-amd64" if package == "linux-image-cloud-amd64" else package for package in PACKAGES),
    RAW_SIZE,
)
RECIPES = {"base": BASE, "guest": GUEST_LAYERS, "generic": GENERIC}
# Kernel messages at warning level and above only; systemd's status lines and cloud-init's
# banners still reach the serial console, so a serial log shows how far the boot got.
# An emulated CPU (TCG) does not speculate, so the kernel's speculation mitigations only cost.
KERNEL_ARGS = f"root=LABEL={ROOT_LABEL} ro console=ttyS0,115200n8 loglevel=4 mitigations=off"

MBR_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/lib/syslinux/mbr/mbr.bin"),
    Path("/usr/lib/EXTLINUX/mbr.bin"),
    Path("/usr/share/syslinux/mbr.bin"),
    Path("/usr/lib/syslinux/bios/mbr.bin"),
)
REQUIRED_TOOLS: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "mkfs.ext4": "e2fsprogs",
    "extlinux": "extlinux",
    "qemu-img": "qemu-utils",
}

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

Log = Callable[[str], None]


# --------------------------------------------------------------------------- public API


def ensure_test_image(cache_root: Path | None = None, log: Log = print, recipe: Recipe = BASE) -> Path:
    """Return a directory holding ``debian-12-nexus-test.qcow2`` and its ``SHA256SUMS``.

    ``cache_root`` is the directory under which one subdirectory per recipe version is kept
    (default ``~/.cache/nexus-nested-vm/test-image``). A complete, digest-checked cached image is
    returned at once; otherwise the image is built (a few minutes, needs root), with concurrent
    callers serialised by a lock file.
    """
    base = DEFAULT_CACHE_BASE if cache_root is None else Path(cache_root)
    return cached_build(
        base,
        recipe.version,
        is_complete=_is_complete,
        build=lambda work: _build_image(work, log, recipe),
        what="test image",
        log=log,
    )


def image_path(directory: Path) -> Path:
    """The qcow2 file inside a directory returned by :func:`ensure_test_image`."""
    return directory / IMAGE_NAME


# --------------------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_complete(directory: Path) -> bool:
    """True if ``directory`` holds a finished image whose digest matches its SHA256SUMS."""
    image = directory / IMAGE_NAME
    sums = directory / SUMS_NAME
    if not ((directory / COMPLETE_MARKER).is_file() and image.is_file() and sums.is_file()):
        return False
    expected = None
    for line in sums.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == IMAGE_NAME:
            expected = fields[0].lower()
    return expected is not None and expected == _sha256(image)


# --------------------------------------------------------------------------- commands


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the builder dies, so no orphan keeps using a loop mount."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run(cmd: Sequence[str], on_line: Log | None = None, tail_lines: int = 40) -> str:
    """Run ``cmd`` (an argument list, no shell); return its output or raise RuntimeError.

    stdout and stderr are merged; with ``on_line`` every output line is passed on as it comes.
    """
    argv = [str(arg) for arg in cmd]
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    collected: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise RuntimeError(f"cannot run {shlex.join(argv)}: {exc}") from exc
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            collected.append(line)
            if on_line is not None:
                on_line(line)
    if proc.returncode != 0:
        output = "\n".join(tail)
        raise RuntimeError(
            f"command failed with exit status {proc.returncode}: {shlex.join(argv)}\n"
            f"--- last {len(tail)} output lines ---\n{output}"
        )
    return "\n".join(collected)


def _check_prerequisites() -> Path:
    """Fail early, with a useful message, if this machine cannot build the image."""
    if sys.platform != "linux":
        raise RuntimeError("building the test image needs Linux (mmdebstrap, loop devices)")
    if os.geteuid() != 0:
        raise RuntimeError(
            "building the test image needs root (loop device, mount); run "
            "`sudo python -m tests.support.debian_image` once to fill the cache"
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    mbr = next((path for path in MBR_CANDIDATES if path.is_file()), None)
    if mbr is None:
        missing.append("syslinux-common")
    if missing:
        raise RuntimeError(
            "building the test image needs these Debian packages: " + " ".join(sorted(set(missing)))
        )
    assert mbr is not None
    return mbr


# --------------------------------------------------------------------------- mirror


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif raw[0] in " \t" and key:
            stanza[key] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def _apt_sources(apt_dir: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """Yield (uri, suites, components) for every enabled ``deb`` source under ``apt_dir``."""
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for raw in text.splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0])  # drop [ options ]
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb":
                yield fields[1], [fields[2]], fields[3:]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for stanza in _deb822_stanzas(text):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in stanza.get("types", "").split():
                continue
            for uri in stanza.get("uris", "").split():
                yield uri, stanza.get("suites", "").split(), stanza.get("components", "").split()


def find_debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's APT uses for bookworm (``$NEXUS_TEST_IMAGE_MIRROR`` wins)."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    if override:
        return override
    for uri, suites, components in _apt_sources(apt_dir):
        if SUITE in suites and "main" in components and uri.startswith(("http://", "https://", "file:")):
            return uri
    return FALLBACK_MIRROR


# --------------------------------------------------------------------------- build


def _mbr(boot_code: bytes, start: int, sectors: int, version: str) -> bytes:
    """A DOS master boot record with syslinux's boot code and one active Linux partition."""

    def chs(lba: int) -> bytes:
        heads, per_track = 255, 63
        cyl, rest = divmod(lba, heads * per_track)
        head, sector = divmod(rest, per_track)
        if cyl > 1023:
            return b"\xfe\xff\xff"
        return bytes((head, ((cyl >> 2) & 0xC0) | (sector + 1), cyl & 0xFF))

    entry = b"\x80" + chs(start) + b"\x83" + chs(start + sectors - 1) + struct.pack("<II", start, sectors)
    disk_id = int.from_bytes(hashlib.sha256(version.encode()).digest()[:4], "little")
    record = boot_code[:440].ljust(440, b"\0") + struct.pack("<IH", disk_id, 0)
    record += entry + b"\0" * 48 + b"\x55\xaa"
    assert len(record) == SECTOR
    return record


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _configure_rootfs(root: Path) -> None:
    """Turn the freshly bootstrapped tree into a generic cloud guest."""
    _write(root / "etc/fstab", f"LABEL={ROOT_LABEL}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")
    _write(root / "etc/hostname", "debian\n")
    _write(
        root / "etc/hosts",
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
    )
    # C.UTF-8 is built into glibc: cloud-init's locale module has nothing to generate.
    _write(root / "etc/default/locale", "LANG=C.UTF-8\n")
    _write(
        root / "etc/cloud/cloud.cfg.d/90_nexus_test_image.cfg",
        "# nexus-nested-vm test image: only a NoCloud seed is ever attached.\n"
        "datasource_list: [ NoCloud, None ]\n"
        "# Map the instance's hostname to 127.0.1.1, or sudo warns that it cannot resolve it.\n"
        "manage_etc_hosts: true\n"
        "# Under TCG each host key costs boot time (RSA about ten seconds); the lab's SSH\n"
        "# clients take an ed25519 one.\n"
        "ssh_genkeytypes: [ ed25519 ]\n"
        "ssh:\n"
        "  emit_keys_to_console: false\n"
        "# No GRUB here (extlinux boots it): its module would only look for one.\n"
        "grub_dpkg:\n"
        "  enabled: false\n",
    )
    # A test VM lives minutes: the weekly e2scrub of LVM volumes (there are none) is boot time.
    (root / "etc/systemd/system/e2scrub_reap.service").symlink_to("/dev/null")
    _write(
        root / "etc/network/interfaces",
        "# cloud-init writes the DHCP configuration to /etc/network/interfaces.d/50-cloud-init\n"
        "source /etc/network/interfaces.d/*\n",
    )
    # The build host's files must not leak into the image; per-instance identity is made on boot.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    _write(root / "etc/machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # cloud-init's ssh module generates fresh host keys on first boot
    for cache in (root / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    for lists in (root / "var/lib/apt/lists").glob("*"):
        if lists.is_file() and lists.name != "lock":
            lists.unlink()
    for logfile in (root / "var/log").rglob("*"):
        if logfile.is_file():
            logfile.unlink()

    kernel = root / "vmlinuz"
    initrd = root / "initrd.img"
    if not (kernel.exists() and initrd.exists()):
        raise RuntimeError(f"no /vmlinuz or /initrd.img in the bootstrapped tree {root}")
    _write(
        root / "boot/extlinux/extlinux.conf",
        "SERIAL 0 115200\n"
        "DEFAULT debian\n"
        "PROMPT 0\n"
        "TIMEOUT 1\n"
        "LABEL debian\n"
        f"  LINUX /boot/{os.readlink(kernel).split('/')[-1]}\n"
        f"  INITRD /boot/{os.readlink(initrd).split('/')[-1]}\n"
        f"  APPEND {KERNEL_ARGS}\n",
    )


def _build_image(work: Path, log: Log, recipe: Recipe) -> None:
    mbr_code = _check_prerequisites().read_bytes()
    mirror = find_debian_mirror()
    raw = work / "disk.raw"
    mnt = work / "mnt"
    mnt.mkdir()

    part_sectors = recipe.raw_size // SECTOR - PART_START_SECTOR
    with raw.open("wb") as disk:
        disk.truncate(recipe.raw_size)
        disk.write(_mbr(mbr_code, PART_START_SECTOR, part_sectors, recipe.version))

    def mmdebstrap_progress(line: str) -> None:
        if line.startswith(("I: ", "E: ", "W: ")):
            log(f"test image: mmdebstrap {line}")

    # No partition nodes without udev here, so the partition is attached at its byte offset.
    loop = _run(
        [
            "losetup",
            "--find",
            "--show",
            "--offset",
            str(PART_START_SECTOR * SECTOR),
            "--sizelimit",
            str(part_sectors * SECTOR),
            str(raw),
        ]
    ).strip()
    try:
        _run(["mkfs.ext4", "-q", "-L", ROOT_LABEL, loop])
        _run(["mount", loop, str(mnt)])
        try:
            log(f"test image: mmdebstrap {SUITE} from {mirror} (about a minute or two)")
            started = time.monotonic()
            _run(
                [
                    "mmdebstrap",
                    "--mode=root",
                    "--variant=minbase",
                    "--include=" + ",".join(recipe.packages),
                    *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
                    SUITE,
                    str(mnt),
                    mirror,
                ],
                on_line=mmdebstrap_progress,
            )
            log(f"test image: mmdebstrap finished in {time.monotonic() - started:.0f} s")
            _configure_rootfs(mnt)
            _run(["extlinux", "--install", str(mnt / "boot/extlinux")])
        finally:
            _run(["umount", str(mnt)])
        _run(["e2fsck", "-f", "-y", loop])
    finally:
        _run(["losetup", "--detach", loop])

    log("test image: converting to compressed qcow2")
    started = time.monotonic()
    image = work / IMAGE_NAME
    convert = ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2"]
    try:
        # zstd: 4 s instead of zlib's 26 s here, and a slightly smaller file (QEMU >= 5.1).
        _run([*convert, "-o", "compression_type=zstd", str(raw), str(image)])
    except RuntimeError as exc:
        log(f"test image: zstd compression unavailable, using zlib ({exc.args[0].splitlines()[-1]})")
        image.unlink(missing_ok=True)
        _run([*convert, str(raw), str(image)])
    log(f"test image: qemu-img convert took {time.monotonic() - started:.0f} s")
    raw.unlink()
    mnt.rmdir()
    (work / SUMS_NAME).write_text(f"{_sha256(image)}  {IMAGE_NAME}\n", encoding="utf-8")
    (work / COMPLETE_MARKER).write_text(f"{recipe.version}\n", encoding="utf-8")
    log(f"test image: {IMAGE_NAME} is {image.stat().st_size / 1024**2:.0f} MiB")


if __name__ == "__main__":
    # `python -m tests.support.debian_image [base|guest|generic]`: build or reuse one recipe's image.
    name = sys.argv[1] if len(sys.argv) > 1 else "base"
    if name not in RECIPES or len(sys.argv) > 2:
        sys.exit(f"usage: python -m tests.support.debian_image [{'|'.join(RECIPES)}] (got {sys.argv[1:]})")
    print(ensure_test_image(recipe=RECIPES[name]))

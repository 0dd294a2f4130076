"""Build (once) and cache the root-file-system tarball the playground tests `docker import`.

No container registry is reachable from the test machines, so the playground image is made
from Debian's mirror: ``mmdebstrap`` a minimal bookworm tree with QEMU (for the inner VM), a
static busybox (its ``httpd`` is the container's web server) and socat (to talk QMP from a
shell), and put boot media for the inner VM into it:

- ``/opt/nexus/inner-vm/vmlinuz``: Debian's generic kernel, taken from its package (the cloud
  kernel has no 9p, which the inner VM's shares need);
- ``/opt/nexus/inner-vm/initrd.img``: a tiny busybox initramfs written here (newc cpio) whose
  ``/init`` loads the kernel's virtio, 9p and power-button modules, mounts every 9p share of
  ``nexus:mounts`` at ``/mnt/<tag>`` (reporting what it reads and whether a write succeeds),
  prints a marker on the serial console and powers off on the ACPI power button;
- ``/srv/www/index.html``: a page the container's web server answers with.

Cached like the test image (:mod:`tests.support.debian_image`): ``<cache>/test-image/<version>/``
holds the tarball, ``SHA256SUMS`` and a ``.complete`` marker written last; a build runs under an
exclusive lock in a temporary directory renamed into place when finished. Needs root (mmdebstrap
in root mode). ``python -m tests.support.playground_rootfs`` builds or reuses it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import sys
import tarfile
from pathlib import Path, PurePosixPath

from tests.support.build_cache import cached_build
from tests.support.debian_image import (
    COMPLETE_MARKER,
    DEFAULT_CACHE_BASE,
    DPKG_OPTIONS,
    SUITE,
    SUMS_NAME,
    Log,
    _run,
    _sha256,
    find_debian_mirror,
)

# Bump whenever anything below changes what ends up in the tarball.
VERSION = "playground-r3"
TARBALL_NAME = "nexus-playground-rootfs.tar"

PACKAGES = ("qemu-system-x86", "qemu-utils", "busybox-static", "socat", "ca-certificates")

INNER_VM_DIR = "/opt/nexus/inner-vm"
INNER_KERNEL = f"{INNER_VM_DIR}/vmlinuz"
INNER_INITRD = f"{INNER_VM_DIR}/initrd.img"
WEB_ROOT = "/srv/www"
PAGE_MARKER = "nexus-playground is serving"
# What the inner VM's /init prints once its userspace runs (the e2e test looks for it).
INNER_USERSPACE_MARKER = "nexus inner VM: userspace is up"
# Each 9p share it finds: "<prefix> <tag>: <file>: <first line>" for each *.txt at its top,
# then "<prefix> <tag>: write ok" or "<prefix> <tag>: write refused: <error>" for a write of
# INNER_WRITTEN_FILE (so the e2e test sees both directions and read-only from the console).
INNER_SHARE_PREFIX = "nexus inner VM share"
INNER_WRITTEN_FILE = "from-inner-vm.txt"
INNER_WRITTEN_TEXT = "written in the inner VM"

# The inner VM's whole userspace: busybox, mounts, a marker, and a clean power-off when QEMU
# presses the ACPI power button (QMP system_powerdown), so the graceful stop is testable.
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for module in /lib/modules/*.ko; do insmod "$module"; done
for tag_file in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
  [ -r "$tag_file" ] || continue
  tag=$(tr -d '\\000' < "$tag_file")
  mkdir -p "/mnt/$tag"
  if ! mount -t 9p -o trans=virtio,version=9p2000.L "$tag" "/mnt/$tag"; then
    echo "{INNER_SHARE_PREFIX} $tag: mount failed"; continue
  fi
  for file in "/mnt/$tag"/*.txt; do
    [ -f "$file" ] && echo "{INNER_SHARE_PREFIX} $tag: ${{file##*/}}: $(head -n1 "$file")"
  done
  if (echo "{INNER_WRITTEN_TEXT}" > "/mnt/$tag/{INNER_WRITTEN_FILE}") 2>/tmp/error; then
    echo "{INNER_SHARE_PREFIX} $tag: write ok"
  else
    echo "{INNER_SHARE_PREFIX} $tag: write refused: $(cat /tmp/error)"
  fi
done
echo "{INNER_USERSPACE_MARKER} (kernel $(uname -r))"
for event in /sys/class/input/event*; do
  if grep -q "Power Button" "$event/device/name" 2>/dev/null; then
    power_button="/dev/input/${{event##*/}}"
  fi
done
if [ -n "$power_button" ]; then
  (for _ in 1 2 3 4 5 6 7 8 9 10; do [ -c "$power_button" ] && break; sleep 1; done
   dd if="$power_button" bs=24 count=1 >/dev/null 2>&1 &&
   echo "nexus inner VM: power button pressed, powering off" && poweroff -f) &
fi
while :; do sleep 3600; done
"""

# The kernel comes from the generic kernel's package, extracted inside the chroot while apt's
# lists exist. Of its modules, the initramfs gets what the power button and the 9p shares
# need, in load order (dependencies first; busybox's insmod does not resolve them): /init
# loads them in the order of their names, which INNER_MODULES' index prefixes.
INNER_MODULES_DIR = f"{INNER_VM_DIR}/modules"
INNER_MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/9p/9pnet.ko",
    "net/9p/9pnet_virtio.ko",
    "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko",
    "fs/9p/9p.ko",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
)
KERNEL_HOOK = (
    'chroot "$1" sh -ec \''
    f"mkdir -p {INNER_MODULES_DIR} && cd /tmp && "
    "pkg=$(apt-cache depends linux-image-amd64"
    ' | sed -n "s/.*Depends: \\(linux-image-[0-9].*\\)/\\1/p" | head -n1) && '
    'apt-get download -q "$pkg" 2>&1 && '
    'dpkg-deb --fsys-tarfile linux-image-*.deb | tar -x --wildcards "./boot/vmlinuz-*" '
    + " ".join(f'"*/kernel/{module}"' for module in INNER_MODULES)
    + f' && mv boot/vmlinuz-* {INNER_KERNEL} && mv $(find lib -name "*.ko") {INNER_MODULES_DIR}/ && '
    "rm -rf boot lib linux-image-*.deb'"
)


def ensure_playground_rootfs(cache_root: Path | None = None, log: Log = print) -> Path:
    """Return the path of the cached root-file-system tarball, building it if needed."""
    base = DEFAULT_CACHE_BASE if cache_root is None else Path(cache_root)
    built = cached_build(
        base,
        VERSION,
        is_complete=_is_complete_tarball,
        build=lambda work: _build(work, log),
        what="playground rootfs",
        log=log,
    )
    return built / TARBALL_NAME


# A playground for the tests without an inner VM: busybox and the web page, nothing else.
# Under TCG every MiB a test copies into the VM and `docker import`s costs time; the full
# tree above (QEMU and its libraries) is about a hundred times larger.
BUSYBOX_TARBALL_NAME = "nexus-playground-busybox.tar"


def ensure_busybox_rootfs(cache_root: Path | None = None, log: Log = print) -> Path:
    """The full tree's static busybox with a link per applet, /srv/www/index.html and /tmp:
    what a container that serves the page and runs `sh` needs. Made once beside the full
    tarball (its busybox comes from there), renamed into place when whole."""
    rootfs = ensure_playground_rootfs(cache_root, log)
    small = rootfs.parent / BUSYBOX_TARBALL_NAME
    if small.is_file():
        return small
    with tarfile.open(rootfs) as full:
        # The binary, not initramfs-tools' conf-hooks.d/busybox of the same name.
        member = next(m for m in full.getmembers() if m.isfile() and m.name.endswith("bin/busybox"))
        extracted = full.extractfile(member)
        assert extracted is not None
        busybox = extracted.read()
    partial = small.with_name(f".{BUSYBOX_TARBALL_NAME}.{os.getpid()}")
    scratch = small.with_name(f".busybox.{os.getpid()}")
    try:
        # Named busybox: it picks the applet to run by the name it is called by.
        scratch.mkdir()
        (scratch / "busybox").write_bytes(busybox)
        (scratch / "busybox").chmod(0o755)
        applets = _run([str(scratch / "busybox"), "--list-full"]).split()
        with tarfile.open(partial, "w") as out:

            def add(
                name: str, mode: int, kind: bytes = tarfile.DIRTYPE, data: bytes = b"", link: str = ""
            ) -> None:
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
                out.addfile(info, io.BytesIO(data) if data else None)

            for folder in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "srv", "srv/www", "etc", "root"):
                add(folder, 0o755)
            add("tmp", 0o1777)
            add("bin/busybox", 0o755, tarfile.REGTYPE, busybox)
            for applet in sorted(set(applets) - {"bin/busybox"}):
                add(applet, 0o777, tarfile.SYMTYPE, link="/bin/busybox")
            add("etc/passwd", 0o644, tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n")
            add("etc/group", 0o644, tarfile.REGTYPE, b"root:x:0:\n")
            add(
                f"{WEB_ROOT.lstrip('/')}/index.html",
                0o644,
                tarfile.REGTYPE,
                f"<h1>{PAGE_MARKER}</h1>\n".encode(),
            )
        os.rename(partial, small)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"busybox playground rootfs: {small.stat().st_size / 1024**2:.1f} MiB")
    return small


IMAGE_TARBALL_NAME = "nexus-playground-busybox-image.tar"
IMAGE_TARBALL_TAG = "nexus/playground:loaded"


def ensure_playground_image_tarball(cache_root: Path | None = None, log: Log = print) -> Path:
    """The busybox tree as an image archive (`docker save` format), for the `docker load` path.

    One layer (the root-file-system tarball as it is), its config and a manifest: what
    `docker load` reads. Made once beside the tarball, renamed into place when whole.
    """
    rootfs = ensure_busybox_rootfs(cache_root, log)
    archive = rootfs.parent / IMAGE_TARBALL_NAME
    if archive.is_file():
        return archive
    layer_digest = _sha256(rootfs)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created_by": "tests.support.playground_rootfs"}],
        }
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    layer_name = f"{layer_digest}/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [IMAGE_TARBALL_TAG], "Layers": [layer_name]}])
    partial = archive.with_name(f".{IMAGE_TARBALL_NAME}.{os.getpid()}")
    try:
        with tarfile.open(partial, "w") as out:
            out.add(rootfs, arcname=layer_name)
            for name, data in ((config_name, config), ("manifest.json", manifest.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
        os.rename(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
    log(f"playground image archive: {archive.stat().st_size / 1024**2:.0f} MiB")
    return archive


def _is_complete_tarball(directory: Path) -> bool:
    # Same layout as the test image's cache entry, with the tarball in the image's place.
    if not (directory / COMPLETE_MARKER).is_file():
        return False
    return _is_complete_with(directory, TARBALL_NAME)


def _is_complete_with(directory: Path, name: str) -> bool:
    tarball, sums = directory / name, directory / SUMS_NAME
    if not (tarball.is_file() and sums.is_file()):
        return False
    expected = [line.split()[0] for line in sums.read_text().splitlines() if line.endswith(name)]
    return bool(expected) and expected[0] == _sha256(tarball)


def _build(work: Path, log: Log) -> None:
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        raise RuntimeError("building the playground rootfs needs root and the `mmdebstrap` package")
    tarball = work / TARBALL_NAME
    this_module = [sys.executable, "-m", "tests.support.playground_rootfs"]
    repo = Path(__file__).resolve().parents[2]
    # Host-side steps on the finished tree ($1): the initramfs and the web page.
    tree_hook = f'cd {shlex.quote(str(repo))} && {shlex.join(this_module)} customize "$1"'
    log(f"playground rootfs: mmdebstrap {SUITE} with {', '.join(PACKAGES)}")
    _run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
            f"--customize-hook={KERNEL_HOOK}",
            f"--customize-hook={tree_hook}",
            SUITE,
            str(tarball),
            find_debian_mirror(),
        ],
        on_line=lambda line: log(f"playground rootfs: {line}") if line.startswith(("I: ", "E: ")) else None,
    )
    (work / SUMS_NAME).write_text(f"{_sha256(tarball)}  {TARBALL_NAME}\n")
    (work / COMPLETE_MARKER).write_text(f"{VERSION}\n")
    log(f"playground rootfs: {tarball.stat().st_size / 1024**2:.0f} MiB")


def customize(root: Path) -> None:
    """Add the inner VM's initramfs and the web page to the bootstrapped tree."""
    (root / INNER_VM_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    busybox = (root / "bin/busybox").read_bytes()
    found = root / INNER_MODULES_DIR.lstrip("/")
    modules = {
        f"{index:02d}-{PurePosixPath(module).name}": (found / PurePosixPath(module).name).read_bytes()
        for index, module in enumerate(INNER_MODULES)
    }
    (root / INNER_INITRD.lstrip("/")).write_bytes(initramfs(busybox, INIT_SCRIPT, modules))
    web_root = root / WEB_ROOT.lstrip("/")
    web_root.mkdir(parents=True, exist_ok=True)
    (web_root / "index.html").write_text(f"<h1>{PAGE_MARKER}</h1>\n")


def initramfs(busybox: bytes, init_script: str, modules: dict[str, bytes]) -> bytes:
    """A gzip'd newc cpio archive: /bin/busybox, /init, /lib/modules/*.ko, /dev/console, mount points."""
    entries: list[tuple[str, int, bytes, int]] = [
        (".", stat.S_IFDIR | 0o755, b"", 0),
        ("bin", stat.S_IFDIR | 0o755, b"", 0),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox, 0),
        ("init", stat.S_IFREG | 0o755, init_script.encode(), 0),
        ("dev", stat.S_IFDIR | 0o755, b"", 0),
        # The kernel opens /dev/console for init's output before devtmpfs is mounted.
        ("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)),
        ("proc", stat.S_IFDIR | 0o755, b"", 0),
        ("sys", stat.S_IFDIR | 0o755, b"", 0),
        ("tmp", stat.S_IFDIR | 0o1777, b"", 0),
        ("lib", stat.S_IFDIR | 0o755, b"", 0),
        ("lib/modules", stat.S_IFDIR | 0o755, b"", 0),
        *((f"lib/modules/{name}", stat.S_IFREG | 0o644, data, 0) for name, data in sorted(modules.items())),
    ]
    archive = io.BytesIO()
    for inode, (name, mode, data, rdev) in enumerate(entries, start=1):
        _cpio_entry(archive, inode, name, mode, data, rdev)
    _cpio_entry(archive, 0, "TRAILER!!!", 0, b"", 0)
    return gzip.compress(archive.getvalue(), mtime=0)


def _cpio_entry(out: io.BytesIO, inode: int, name: str, mode: int, data: bytes, rdev: int) -> None:
    encoded = name.encode() + b"\0"
    fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(encoded), 0)
    out.write(b"070701" + b"".join(f"{value:08X}".encode() for value in fields))
    out.write(encoded)
    out.write(b"\0" * (-out.tell() % 4))
    out.write(data)
    out.write(b"\0" * (-out.tell() % 4))


if __name__ == "__main__":
    if sys.argv[1:2] == ["customize"]:
        customize(Path(sys.argv[2]))
    else:
        print(ensure_playground_rootfs())

"""Build (once) and cache a small, real arm64 Debian 12 cloud image for the aarch64 end-to-end test.

The arm64 sibling of ``debian_image.py``, built the same way from Debian's mirror and reusing
its helpers (mirror lookup, locking, commands, rootfs configuration): ``mmdebstrap
--architectures=arm64`` runs the arm64 maintainer scripts through ``qemu-user-static``
(binfmt_misc), straight into an ext4 file system on a loop device. The disk is what an arm64
cloud image is: GPT, an EFI system partition whose removable-media loader
``EFI/BOOT/BOOTAA64.EFI`` is GRUB for arm64-efi, and the root file system. It boots under UEFI
(AAVMF/edk2) on QEMU's ``virt`` machine and is configured by a cloud-init NoCloud seed.

Cached under ``<cache_root>/<RECIPE_VERSION>/`` with a ``SHA256SUMS`` and a ``.complete``
marker written last, like the x86_64 image; an interrupted build never leaves a half-made image.

Building needs root (loop devices, mount), a registered binfmt_misc handler for aarch64 ELF
binaries and the Debian packages ``mmdebstrap``, ``qemu-user-static``, ``binfmt-support``,
``dosfstools``, ``mtools`` and ``qemu-utils``. Run ``python -m tests.support.arm64_image`` (as root) to build
or reuse the image and print its directory.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests.support import debian_image
from tests.support.build_cache import cached_build
from tests.support.debian_image import (
    COMPLETE_MARKER,
    DEFAULT_CACHE_BASE,
    DPKG_OPTIONS,
    ROOT_LABEL,
    SECTOR,
    SUITE,
    SUMS_NAME,
    Log,
)

# Bump whenever anything below changes what ends up in the image.
RECIPE_VERSION = "debian12-arm64-r3"
IMAGE_NAME = "debian-12-nexus-test-arm64.qcow2"

PACKAGES: tuple[str, ...] = (
    *(
        "linux-image-cloud-arm64" if package == "linux-image-cloud-amd64" else package
        for package in debian_image.PACKAGES
    ),
    "grub-efi-arm64-bin",  # the boot loader's modules; grub-mkimage makes BOOTAA64.EFI from them
    "gdisk",  # sgdisk, which growpart uses to grow a GPT partition
)

ESP_LABEL = "ESP"
RAW_SIZE = 2 * 1024**3
ALIGN_SECTORS = 2048
ESP_SECTORS = 64 * 1024**2 // SECTOR
# Under qemu-user an initramfs takes minutes to make, and installing the packages makes it
# twice (the kernel's hook, then initramfs-tools' trigger for the hooks of later packages).
# While they install, update-initramfs is diverted to a no-op; it runs once at the end.
UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
DIVERT_UPDATE_INITRAMFS = (
    f'chroot "$1" dpkg-divert --quiet --local --rename --add {UPDATE_INITRAMFS}'
    f' && printf "#!/bin/sh\\nexit 0\\n" > "$1{UPDATE_INITRAMFS}" && chmod 755 "$1{UPDATE_INITRAMFS}"'
)
# The PL011 UART of QEMU's virt machine, where `-serial` goes.
KERNEL_ARGS = f"root=LABEL={ROOT_LABEL} ro console=ttyAMA0,115200n8 loglevel=4 mitigations=off"

GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ENTRY_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
LINUX_ROOT_ARM64_TYPE = uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae")

# GRUB modules for: GPT, the ESP and ext4, finding the root file system by label, and
# loading the (gzip-compressed) arm64 kernel and its initrd.
GRUB_MODULES: tuple[str, ...] = (
    "part_gpt",
    "fat",
    "ext2",
    "search",
    "search_label",
    "configfile",
    "normal",
    "linux",
    "gzio",
    "echo",
    "test",
)

REQUIRED_TOOLS: dict[str, str] = {
    **debian_image.REQUIRED_TOOLS,
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "chroot": "coreutils",
}
REQUIRED_TOOLS.pop("extlinux")
BINFMT_AARCH64 = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


@dataclass(frozen=True)
class Partition:
    name: str
    type_guid: uuid.UUID
    first_lba: int
    last_lba: int  # inclusive, as GPT counts

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def partitions(total_sectors: int) -> tuple[Partition, Partition]:
    """The ESP and the root file system, aligned to 1 MiB, the root filling the rest."""
    last_usable = total_sectors - 1 - GPT_ENTRY_SECTORS - 1
    esp = Partition("EFI system", ESP_TYPE, ALIGN_SECTORS, ALIGN_SECTORS + ESP_SECTORS - 1)
    root_last = (last_usable + 1) // ALIGN_SECTORS * ALIGN_SECTORS - 1
    return esp, Partition("root", LINUX_ROOT_ARM64_TYPE, esp.last_lba + 1, root_last)


# --------------------------------------------------------------------------- GPT


def _guid(name: str) -> uuid.UUID:
    """A stable GUID per recipe, so the same recipe gives the same disk."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"nexus-nested-vm/{RECIPE_VERSION}/{name}")


def _gpt_header(current: int, backup: int, entries_lba: int, total: int, entries_crc: int) -> bytes:
    fields = [
        b"EFI PART",
        0x00010000,  # revision 1.0
        92,  # header size
        0,  # header CRC32, filled in below
        0,
        current,
        backup,
        1 + 1 + GPT_ENTRY_SECTORS,  # first usable LBA (34)
        total - 1 - GPT_ENTRY_SECTORS - 1,  # last usable LBA
        _guid("disk").bytes_le,
        entries_lba,
        GPT_ENTRIES,
        GPT_ENTRY_SIZE,
        entries_crc,
    ]
    layout = "<8sIIIIQQQQ16sQIII"
    header = struct.pack(layout, *fields)
    fields[3] = zlib.crc32(header)
    return struct.pack(layout, *fields).ljust(SECTOR, b"\0")


def gpt(total_sectors: int, parts: tuple[Partition, ...]) -> tuple[bytes, bytes]:
    """(the first 34 sectors, the last 33 sectors) of a GPT disk with these partitions."""
    entries = b"".join(
        struct.pack(
            "<16s16sQQQ72s",
            part.type_guid.bytes_le,
            _guid(part.name).bytes_le,
            part.first_lba,
            part.last_lba,
            0,
            part.name.encode("utf-16-le"),
        )
        for part in parts
    ).ljust(GPT_ENTRIES * GPT_ENTRY_SIZE, b"\0")
    entries_crc = zlib.crc32(entries)
    last = total_sectors - 1
    # The protective MBR: one partition of type 0xEE covering the disk, so MBR tools keep off.
    protective = struct.pack("<B3sB3sII", 0, b"\0\x02\0", 0xEE, b"\xff\xff\xff", 1, min(last, 0xFFFFFFFF))
    mbr = b"\0" * 446 + protective + b"\0" * 48 + b"\x55\xaa"
    primary = mbr + _gpt_header(1, last, 2, total_sectors, entries_crc) + entries
    backup = entries + _gpt_header(last, 1, last - GPT_ENTRY_SECTORS, total_sectors, entries_crc)
    return primary, backup


# --------------------------------------------------------------------------- cache


def _is_complete(directory: Path) -> bool:
    image = directory / IMAGE_NAME
    sums = directory / SUMS_NAME
    if not ((directory / COMPLETE_MARKER).is_file() and image.is_file() and sums.is_file()):
        return False
    expected = {
        fields[1].lstrip("*"): fields[0].lower()
        for fields in (line.split() for line in sums.read_text(encoding="utf-8").splitlines())
        if len(fields) == 2
    }.get(IMAGE_NAME)
    return expected is not None and expected == debian_image._sha256(image)


def ensure_arm64_test_image(cache_root: Path | None = None, log: Log = print) -> Path:
    """Return a directory holding ``debian-12-nexus-test-arm64.qcow2`` and its ``SHA256SUMS``.

    A complete, digest-checked cached image is returned at once; otherwise it is built (about
    ten minutes or more under qemu-user, needs root), concurrent callers serialised by a lock.
    """
    base = DEFAULT_CACHE_BASE if cache_root is None else Path(cache_root)
    return cached_build(
        base,
        RECIPE_VERSION,
        is_complete=_is_complete,
        build=lambda work: _build_image(work, log),
        what="arm64 test image",
        log=log,
    )


# --------------------------------------------------------------------------- build


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise RuntimeError(
            "building the arm64 test image needs root (loop device, mount); run "
            "`sudo python -m tests.support.arm64_image` once to fill the cache"
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if not Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists() and not shutil.which(
        "qemu-aarch64-static"
    ):
        missing += ["qemu-user-static", "binfmt-support"]
    if missing:
        raise RuntimeError(
            "building the arm64 test image needs these Debian packages: " + " ".join(sorted(set(missing)))
        )
    if not BINFMT_AARCH64.is_file() or "enabled" not in BINFMT_AARCH64.read_text():
        raise RuntimeError(
            "building the arm64 test image runs arm64 programs through qemu-user-static, but no "
            "binfmt_misc handler for aarch64 is registered; as root run "
            "`mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` (if not mounted) and "
            "`update-binfmts --enable qemu-aarch64`"
        )


def _install_boot_loader(root: Path, kernel: str, initrd: str, esp_device: str) -> None:
    """GRUB's menu on the root file system, and GRUB itself as the ESP's removable-media loader.

    The ESP is written with mtools, not mounted: a build host's kernel may lack vfat.
    """
    debian_image._write(
        root / "boot/grub/grub.cfg",
        "set timeout=0\n"
        "set default=0\n"
        "menuentry 'Debian GNU/Linux' {\n"
        f"  linux /boot/{kernel} {KERNEL_ARGS}\n"
        f"  initrd /boot/{initrd}\n"
        "}\n",
    )
    # Embedded in the EFI binary: find the root file system by label, then read its menu,
    # whatever the disks' order (the seed ISO is a disk too).
    embedded = root / "tmp/nexus-grub-embedded.cfg"
    loader = root / "tmp/BOOTAA64.EFI"
    debian_image._write(
        embedded,
        f"search --no-floppy --label {ROOT_LABEL} --set=root\n"
        "set prefix=($root)/boot/grub\n"
        "configfile $prefix/grub.cfg\n",
    )
    try:
        debian_image._run(
            [
                "chroot",
                str(root),
                "grub-mkimage",
                "--format=arm64-efi",
                "--output=/tmp/BOOTAA64.EFI",
                "--prefix=/boot/grub",
                "--config=/tmp/nexus-grub-embedded.cfg",
                *GRUB_MODULES,
            ]
        )
        debian_image._run(["mmd", "-i", esp_device, "::/EFI", "::/EFI/BOOT"])
        debian_image._run(["mcopy", "-i", esp_device, str(loader), "::/EFI/BOOT/BOOTAA64.EFI"])
    finally:
        embedded.unlink(missing_ok=True)
        loader.unlink(missing_ok=True)


def _make_initramfs(root: Path, version: str, log: Log) -> None:
    """Put update-initramfs back (see DIVERT_UPDATE_INITRAMFS) and make the one initramfs."""
    (root / UPDATE_INITRAMFS.lstrip("/")).unlink()
    debian_image._run(
        ["chroot", str(root), "dpkg-divert", "--quiet", "--local", "--rename", "--remove", UPDATE_INITRAMFS]
    )
    started = time.monotonic()
    debian_image._run(["chroot", str(root), "update-initramfs", "-c", "-k", version])
    log(f"arm64 test image: initramfs for {version} made in {time.monotonic() - started:.0f} s")


def _build_image(work: Path, log: Log) -> None:
    _check_prerequisites()
    mirror = debian_image.find_debian_mirror()
    raw = work / "disk.raw"
    mnt = work / "mnt"
    mnt.mkdir()

    total_sectors = RAW_SIZE // SECTOR
    esp, root = partitions(total_sectors)
    primary, backup = gpt(total_sectors, (esp, root))
    with raw.open("wb") as disk:
        disk.truncate(RAW_SIZE)
        disk.write(primary)
        disk.seek(RAW_SIZE - len(backup))
        disk.write(backup)

    def mmdebstrap_progress(line: str) -> None:
        if line.startswith(("I: ", "E: ", "W: ")):
            log(f"arm64 test image: mmdebstrap {line}")

    def attach(part: Partition) -> str:
        # No partition nodes without udev here, so each partition is attached at its offset.
        argv = ["losetup", "--find", "--show", "--offset", str(part.offset), "--sizelimit", str(part.size)]
        return debian_image._run([*argv, str(raw)]).strip()

    root_loop = attach(root)
    try:
        esp_loop = attach(esp)
        try:
            debian_image._run(["mkfs.vfat", "-n", ESP_LABEL, esp_loop])
            debian_image._run(["mkfs.ext4", "-q", "-L", ROOT_LABEL, root_loop])
            debian_image._run(["mount", root_loop, str(mnt)])
            try:
                log(f"arm64 test image: mmdebstrap {SUITE} arm64 from {mirror} (qemu-user: 10 to 30 minutes)")
                started = time.monotonic()
                debian_image._run(
                    [
                        "mmdebstrap",
                        "--mode=root",
                        "--variant=minbase",
                        "--architectures=arm64",
                        "--include=" + ",".join(PACKAGES),
                        f"--essential-hook={DIVERT_UPDATE_INITRAMFS}",
                        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
                        SUITE,
                        str(mnt),
                        mirror,
                    ],
                    on_line=mmdebstrap_progress,
                )
                log(f"arm64 test image: mmdebstrap finished in {time.monotonic() - started:.0f} s")
                kernel = os.readlink(mnt / "vmlinuz").split("/")[-1]
                _make_initramfs(mnt, kernel.removeprefix("vmlinuz-"), log)
                debian_image._configure_rootfs(mnt)
                shutil.rmtree(mnt / "boot/extlinux")  # the x86_64 recipe's BIOS boot loader
                initrd = os.readlink(mnt / "initrd.img").split("/")[-1]
                _install_boot_loader(mnt, kernel, initrd, esp_loop)
            finally:
                debian_image._run(["umount", str(mnt)])
            debian_image._run(["e2fsck", "-f", "-y", root_loop])
            debian_image._run(["fsck.vfat", "-n", esp_loop])
        finally:
            debian_image._run(["losetup", "--detach", esp_loop])
    finally:
        debian_image._run(["losetup", "--detach", root_loop])

    log("arm64 test image: converting to compressed qcow2")
    image = work / IMAGE_NAME
    convert = ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd"]
    debian_image._run([*convert, str(raw), str(image)])
    raw.unlink()
    mnt.rmdir()
    (work / SUMS_NAME).write_text(f"{debian_image._sha256(image)}  {IMAGE_NAME}\n", encoding="utf-8")
    (work / COMPLETE_MARKER).write_text(f"{RECIPE_VERSION}\n", encoding="utf-8")
    log(f"arm64 test image: {IMAGE_NAME} is {image.stat().st_size / 1024**2:.0f} MiB")


if __name__ == "__main__":
    print(ensure_arm64_test_image())

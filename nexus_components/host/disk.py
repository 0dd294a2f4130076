"""The qcow2 overlay disk: created on top of the cached base image, which is never written."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nexus_components.core.errors import HostToolError, VmError


def virtual_size(qemu_img: str, image: Path) -> int:
    info = json.loads(_run(qemu_img, ["info", "--output=json", "--force-share", str(image)], f"read {image}"))
    return int(info["virtual-size"])


def backing_file(qemu_img: str, image: Path) -> str | None:
    info = json.loads(_run(qemu_img, ["info", "--output=json", "--force-share", str(image)], f"read {image}"))
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    return str(backing) if backing else None


def create_overlay(qemu_img: str, base: Path, overlay: Path, size_bytes: int, *, size_key: str) -> None:
    """`qemu-img create -f qcow2 -b base -F qcow2 overlay size`, refusing a disk smaller than the base."""
    base_size = virtual_size(qemu_img, base)
    if size_bytes < base_size:
        raise VmError(
            f"{size_key}: {size_bytes} bytes is smaller than the base image ({base_size} bytes)",
            hint=f"set {size_key} to at least {-(-base_size // (1 << 30))}G",
        )
    overlay.parent.mkdir(parents=True, exist_ok=True)
    partial = overlay.with_name(overlay.name + ".partial")
    _run(
        qemu_img,
        ["create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(partial), str(size_bytes)],
        f"create the overlay disk {overlay}",
    )
    partial.replace(overlay)


def resize_offline(qemu_img: str, overlay: Path, size_bytes: int) -> None:
    _run(qemu_img, ["resize", "-q", str(overlay), str(size_bytes)], f"grow {overlay}")


def _run(qemu_img: str, args: Sequence[str], what: str) -> str:
    argv = [qemu_img, *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError as error:
        raise HostToolError(
            f"{qemu_img!r} was not found (config key nexus:vm.qemuImgBinary)",
            hint="install qemu-img (apt-get install qemu-utils, brew install qemu)",
        ) from error
    if result.returncode != 0:
        raise HostToolError(f"qemu-img could not {what}", command=argv, output=result.stdout + result.stderr)
    return result.stdout

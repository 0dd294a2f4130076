"""A blank base image: enough for every host layer up to QEMU (the VM never becomes ready)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def make_blank_image(folder: Path) -> dict[str, str]:
    """A 1 GiB blank qcow2 in `folder`, as the `url` and `sha256` of a base image."""
    image = folder / "blank.qcow2"
    folder.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    return {"url": str(image), "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}

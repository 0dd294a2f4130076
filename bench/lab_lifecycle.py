"""Wall-clock figures of a lab's lifecycle through the real engine, under TCG.

  up       `pulumi up` of a fresh stack with the image already cached, until SSH
           answers and cloud-init is done
  boot     the part of that spent waiting for the guest (the provider's own clock),
           the baseline for the engine's and the layers' overhead: up / boot
  no-op    a second `pulumi up` with nothing to change, against `pulumi preview`
  destroy  `pulumi destroy` (graceful ACPI powerdown included)

Run: .venv/bin/python -m bench.lab_lifecycle   (needs scripts/setup --dev and root
for the test image build)
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus_components.download import ImageSource, fetch_image
from tests.e2e.test_lab import lab_config, lab_stack
from tests.support.debian_image import ensure_test_image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def timed(step: Callable[[], Any]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    image = ensure_test_image(log=lambda _: None) / "debian-12-nexus-test.qcow2"
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        cli = lab_stack(tmp, "bench")
        config = lab_config(tmp, str(image), free_port(), free_port())
        cli.init(config)
        try:
            # Fill the cache first, so `up` measures a cached image as users see it on re-creates.
            fetch_image(ImageSource(url=str(image)), tmp / "cache")
            up = timed(cli.up)
            boot = float(cli.outputs().get("vmReadySeconds", 0)) or float("nan")
            preview = timed(cli.preview)
            noop = timed(cli.up)
        finally:
            destroy = timed(cli.destroy)
    print(f"up (cached image) to SSH + cloud-init: {up:6.1f} s")
    print(f"  of which guest boot (provider clock): {boot:6.1f} s  -> up/boot ratio {up / boot:.2f}")
    print(f"no-op up:                               {noop:6.1f} s")
    print(f"  preview of the same stack:            {preview:6.1f} s  -> ratio {noop / preview:.2f}")
    print(f"destroy:                                {destroy:6.1f} s")


if __name__ == "__main__":
    main()

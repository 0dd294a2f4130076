"""Build every cached test artefact the end-to-end tier needs, in the order it needs them.

`scripts/test` starts this in the background on a full run, while the toolchain builds and
the fast tiers run, so a machine with nothing cached does not build each artefact only when
the first test asks for it. The builders' own cache lock (build_cache.cached_build) makes a
test that needs an artefact still being built wait for it instead of building it again, so
this is purely a head start: a failure here is reported, and the test that needs the
artefact builds it again and fails with the builder's own error.

Run by hand: `python -m tests.support.prebuild` (as root, like the builders).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.arm64_image import ensure_arm64_test_image
from tests.support.debian_image import GENERIC, GUEST_LAYERS, ensure_test_image
from tests.support.playground_rootfs import ensure_playground_image_tarball


# The e2e tier's order (tests/conftest.py orders the modules by the image they boot).
def log(line: str) -> None:
    print(f"[prebuild {time.strftime('%H:%M:%S')}] {line}", flush=True)


ARTEFACTS: tuple[tuple[str, Callable[[], Path]], ...] = (
    ("x86_64 test image", lambda: ensure_test_image(log=log)),
    ("generic-kernel test image", lambda: ensure_test_image(log=log, recipe=GENERIC)),
    ("guest-layers test image", lambda: ensure_test_image(log=log, recipe=GUEST_LAYERS)),
    (
        "playground rootfs, its busybox variant and image archive",
        lambda: ensure_playground_image_tarball(log=log),
    ),
    ("arm64 test image", lambda: ensure_arm64_test_image(log=log)),
)


def main() -> int:
    # scripts/test stops this with SIGTERM when the tests end first: leave through Python's
    # unwinding, so the build cache removes the half-made build (its mounts, loop devices).
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))
    failed = 0
    for what, ensure in ARTEFACTS:
        started = time.monotonic()
        try:
            where = ensure()
        except Exception as error:  # the next artefact may still build; the test reports this one
            failed += 1
            log(f"{what}: FAILED after {time.monotonic() - started:.0f} s: {error}")
            continue
        log(f"{what}: ready after {time.monotonic() - started:.0f} s ({where})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

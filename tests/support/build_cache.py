"""One cache discipline for the artefacts the tests build (test images, playground tarball).

``<base>/<version>/`` holds a finished build, checked by the caller's ``is_complete``
(a digest against its SHA256SUMS, a ``.complete`` marker written last). A build runs in
``<base>/.<version>.build-<pid>`` under an exclusive lock, so concurrent test runs wait
for each other instead of building twice, and is renamed into place only when whole;
leftovers of an interrupted build (its mount, its loop device, its files) are removed
before the next attempt.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Log = Callable[[str], None]


def cached_build(
    base: Path,
    version: str,
    *,
    is_complete: Callable[[Path], bool],
    build: Callable[[Path], None],
    what: str,
    log: Log,
) -> Path:
    """The directory of a complete build of `version`, building it first if needed."""
    final = base / version
    if is_complete(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(base / f".{version}.lock", what, log):
        # Another process may have finished the build while this one waited for the lock.
        if is_complete(final):
            return final
        for stale in sorted(base.glob(f".{version}.build-*")):
            log(f"{what}: removing leftovers of an interrupted build: {stale}")
            remove_build_dir(stale)
        if final.exists():
            log(f"{what}: discarding incomplete or corrupt cache entry {final}")
            shutil.rmtree(final)
        work = base / f".{version}.build-{os.getpid()}"
        work.mkdir()
        try:
            started = time.monotonic()
            build(work)
            os.rename(work, final)
        except BaseException:
            remove_build_dir(work)
            raise
        log(f"{what}: built {final} in {time.monotonic() - started:.0f} s")
        return final


@contextmanager
def exclusive_lock(path: Path, what: str, log: Log) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{what}: waiting for another build to finish (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_build_dir(work: Path) -> None:
    """Remove a build directory, first releasing a mount or loop device it may still hold."""
    mnt = work / "mnt"
    if os.path.ismount(mnt):
        subprocess.run(["umount", "--lazy", str(mnt)], check=False, capture_output=True)
    raw = work / "disk.raw"
    if raw.exists() and shutil.which("losetup"):
        found = subprocess.run(
            ["losetup", "--noheadings", "--output", "NAME", "--associated", str(raw)],
            check=False,
            capture_output=True,
            text=True,
        )
        for device in found.stdout.split():
            subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)

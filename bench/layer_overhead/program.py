"""Builds the workload program (workload/*.go) for a layer's platform, once per source version.

Go cross-compiles a static binary for every target with CGO_ENABLED=0, so the program
runs in any Linux guest or container without anything installed there. Builds are cached
under `<cache>/bench/` keyed by the sources' digest, written to a temporary name and
renamed into place, so an interrupted build never leaves a half-made binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .errors import BenchError

SOURCE_DIR = Path(__file__).resolve().parent / "workload"
# Where the official installer puts Go when it is not on PATH.
GO_FALLBACKS = ("/usr/local/go/bin/go", "C:/Program Files/Go/bin/go.exe")


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("NEXUS_CACHE_DIR") or str(
        Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nexus-nested-vm"
    )
    return Path(base) / "bench"


def source_digest(source_dir: Path = SOURCE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(source_dir.iterdir()):
        if path.suffix in (".go", ".mod"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def find_go() -> str:
    found = shutil.which("go") or next((c for c in GO_FALLBACKS if Path(c).is_file()), None)
    if not found:
        raise BenchError(
            "Go was not found: the benchmark builds its workload program with it",
            hint="install Go 1.19 or newer (https://go.dev/dl, `apt-get install golang-go`, "
            "`brew install go`) and run scripts/bench-layers again",
        )
    return found


def build_program(target: str, cache_dir: Path | None = None) -> Path:
    """The program for `target` ("linux/amd64", "darwin/arm64", ...), built if not cached."""
    goos, _, goarch = target.partition("/")
    cache = cache_dir or default_cache_dir()
    suffix = ".exe" if goos == "windows" else ""
    binary = cache / f"nexus-bench-{source_digest()}-{goos}-{goarch}{suffix}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}.tmp")
    argv = [find_go(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "."]
    # GOTOOLCHAIN=local: never download another Go toolchain; the program needs only 1.19.
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": goos, "GOARCH": goarch, "GOTOOLCHAIN": "local"}
    try:
        result = subprocess.run(
            argv, cwd=SOURCE_DIR, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired as error:
        partial.unlink(missing_ok=True)
        raise BenchError(
            f"building the workload program for {target} took over 10 minutes", command=argv
        ) from error
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BenchError(
            f"could not build the workload program for {target}",
            command=argv,
            output=result.stdout + result.stderr,
            hint="the program needs Go 1.19 or newer (`go version`)",
        )
    os.replace(partial, binary)
    return binary

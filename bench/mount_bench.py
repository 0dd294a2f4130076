"""scripts/bench-mounts: each of a running lab's shares (nexus:mounts) against this machine's own disk.

The two workloads users of Lima and Colima compare mounts with, run in the shared folder itself:

- large: sha256sum of one 256 MiB file (written by the host once);
- small: unpack a tar of ~5,000 small files (1-4 KiB, 50 folders) into the share, then read
  every file back.

Each is timed on the host (in the host folder: the host's disk), then in the VM (at the mount's
VM path) and, for a mount with a container path, in the playground container; each layer's time
is printed as a ratio to the host's in the same run. The times are taken inside each layer
(`date` before and after), so SSH's start-up is not counted. Everything is written in one
folder `.nexus-bench-<pid>` in the share, removed at the end (nothing else in the folder is
touched).

    scripts/bench-mounts [--stack NAME] [--size-mib 256] [--files 5000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_components.cli import stack
from nexus_components.cli.copy import layers_of
from nexus_components.cli.transfer import Layers, in_layer
from nexus_components.core.errors import NexusError

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = ".nexus-bench-{pid}"
# Runs "$@" and prints its wall time in nanoseconds (the layer's own clock).
TIMED = 's=$(date +%s%N); "$@" >/dev/null || exit $?; e=$(date +%s%N); echo $((e - s))'
LARGE = 'exec sha256sum "$1"'
SMALL = 'mkdir -p "$2" && tar -xf "$1" -C "$2" && find "$2" -type f -exec cat {} + >/dev/null'


@dataclass(frozen=True)
class Share:
    host: Path
    vm: str
    container: str | None
    type: str


@dataclass(frozen=True)
class Result:
    share: str
    workload: str
    layer: str
    seconds: float
    host_seconds: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.host_seconds if self.host_seconds > 0 else float("inf")


def shares_of(mounts: Sequence[Mapping[str, Any]], home: Path, base_dir: Path) -> list[Share]:
    """The stack's nexus:mounts entries, host paths resolved as the configuration does."""
    shares = []
    for entry in mounts:
        host = str(entry["host"])
        path = home / host[2:] if host == "~" or host.startswith("~/") else Path(host)
        shares.append(
            Share(
                host=path if path.is_absolute() else base_dir / path,
                vm=str(entry["vm"]),
                container=entry.get("container"),
                type=str(entry.get("type", "auto")),
            )
        )
    return shares


def timed(command: Sequence[str]) -> list[str]:
    return ["sh", "-c", TIMED, "sh", *command]


def workload_argv(workload: str, folder: str, layer: str, *, sudo: bool = False) -> list[str]:
    """The timed command of one workload, with `folder` the bench folder as the layer sees it.
    `sudo`: as root (the VM's login user may not own the host user's folder; the container's
    user is root already)."""
    if workload == "large":
        command = timed(["sh", "-c", LARGE, "sh", f"{folder}/large.bin"])
    elif workload == "small":
        command = timed(["sh", "-c", SMALL, "sh", f"{folder}/small.tar", f"{folder}/unpacked-{layer}"])
    else:
        raise ValueError(workload)
    return ["sudo", "-n", *command] if sudo else command


def layer_folders(share: Share, name: str) -> dict[str, str]:
    folders = {"host": str(share.host / name), "vm": f"{share.vm.rstrip('/')}/{name}"}
    if share.container:
        folders["playground"] = f"{share.container.rstrip('/')}/{name}"
    return folders


def prepare(folder: Path, size_mib: int, files: int, seed: int = 17) -> None:
    """The workloads' inputs, written by the host into the share."""
    folder.mkdir()
    chunk = random.Random(seed).randbytes(1 << 20)  # noqa: S311 (test data, not secrets)
    with open(folder / "large.bin", "wb") as large:
        for index in range(size_mib):
            large.write(chunk[index % 7 :] + chunk[: index % 7])
    rng = random.Random(seed)  # noqa: S311
    with tarfile.open(folder / "small.tar", "w") as archive:
        for index in range(files):
            data = rng.randbytes(rng.randint(1024, 4096))
            info = tarfile.TarInfo(f"d{index % 50:02d}/f{index:05d}.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def measure(argv: Sequence[str]) -> float:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise NexusError("a workload failed", command=list(argv), output=(done.stderr or done.stdout).strip())
    return int(done.stdout.strip().splitlines()[-1]) / 1e9


def run(
    shares: Sequence[Share],
    layers: Layers,
    size_mib: int,
    files: int,
    log: Callable[[str], None],
    *,
    vm_sudo: bool = True,
) -> list[Result]:
    results: list[Result] = []
    name = BENCH_DIR.format(pid=os.getpid())
    for share in shares:
        folder = share.host / name
        log(f"{share.host} ({share.type}): writing the inputs ({size_mib} MiB, {files} files)")
        prepare(folder, size_mib, files)
        try:
            for workload in ("large", "small"):
                folders = layer_folders(share, name)
                host = measure(in_layer("host", workload_argv(workload, folders["host"], "host"), layers))
                for layer in [key for key in folders if key != "host"]:
                    argv = workload_argv(workload, folders[layer], layer, sudo=vm_sudo and layer == "vm")
                    seconds = measure(in_layer(layer, argv, layers))
                    results.append(Result(f"{share.vm} ({share.type})", workload, layer, seconds, host))
                    log(f"  {workload} in {layer}: {seconds:.2f} s (host {host:.2f} s)")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def render(results: Sequence[Result]) -> str:
    lines = [
        "| share | workload | layer | seconds | host seconds | ratio to host |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        figures = f"{r.seconds:.2f} | {r.host_seconds:.2f} | {r.ratio:.1f}x"
        lines.append(f"| {r.share} | {r.workload} | {r.layer} | {figures} |")
    return "\n".join(lines)


def stack_mounts(name: str) -> list[dict[str, Any]]:
    command = [*stack.pulumi_command(), "config", "--json", "--stack", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NexusError(
            f"could not read the settings of stack {name!r}", command=command, output=done.stderr
        )
    entry = json.loads(done.stdout).get("nexus:mounts")
    if not entry:
        raise NexusError(
            f"stack {name!r} has no nexus:mounts", hint="add a mount, run scripts/up, then bench it"
        )
    value = entry.get("objectValue", entry.get("value"))
    return list(json.loads(value) if isinstance(value, str) else value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-mounts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="the stack whose lab to measure (default: the selected stack)")
    parser.add_argument("--size-mib", type=int, default=256, help="the large file's size (default 256)")
    parser.add_argument("--files", type=int, default=5000, help="how many small files (default 5000)")
    args = parser.parse_args(argv)
    try:
        name = args.stack or stack.selected_stack()
        shares = shares_of(stack_mounts(name), Path.home(), REPO)
        outputs = stack.read_outputs(name)
        needed = ("vm", "playground") if any(s.container for s in shares) else ("vm",)
        results = run(
            shares,
            layers_of(outputs, *needed),
            args.size_mib,
            args.files,
            lambda line: print(line, file=sys.stderr),
        )
    except NexusError as error:
        print(f"scripts/bench-mounts: {error}", file=sys.stderr)
        return 1
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

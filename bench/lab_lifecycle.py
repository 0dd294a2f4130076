"""Wall-clock figures of a lab's lifecycle through the real engine, under TCG.

  up       `pulumi up` of a fresh stack with the image already cached, until SSH
           answers and cloud-init is done
  hand     the baseline, measured in the same run: the same QEMU argv started by hand
           on a fresh overlay and the same seed, polling SSH every second
           (`cloud-init status`) until cloud-init is done: up / hand is the cost of
           the engine, the layers and the readiness check
  no-op    a second `pulumi up` with nothing to change, against `pulumi preview`
  preview  `pulumi preview` of the host-only lab that is up, against `pulumi preview` of an
           empty Pulumi Python program on the same .venv and backend kind, the two run
           in turns (a guest still busy after its boot slows both alike): the lab's own
           cost (the nexus plugin's start-up, config checks, each resource's drift check)
  destroy  `pulumi destroy` (graceful ACPI powerdown included)

Targets (issue 14), read off the ratios printed: up/hand <= 1.05, no-op/preview <= 2,
lab preview/empty preview <= 2. Figures only: nothing here asserts a time.

Run: .venv/bin/python -m bench.lab_lifecycle [--rounds N]   (needs scripts/setup --dev
and root for the test image build). On a loaded machine TCG boot times swing by tens of
seconds between runs; several rounds give a median ratio.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus_components.core.download import ImageSource, fetch_image
from nexus_components.host.paths import VmPaths
from nexus_components.host.vm_process import stop
from tests.e2e.test_lab import lab_config, lab_stack
from tests.support.debian_image import IMAGE_NAME, ensure_test_image
from tests.support.pulumi_cli import PulumiCli, scratch_program

PREVIEWS = 5  # engine figures are short: the median of a few


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def timed(step: Callable[[], Any]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def median_of(step: Callable[[], Any], times: int = PREVIEWS) -> float:
    return statistics.median(timed(step) for _ in range(times))


def empty_program(tmp: Path) -> PulumiCli:
    """A Python program that declares nothing: the engine's and Python's floor for `preview`."""
    tmp.mkdir()
    cli = scratch_program(tmp, "empty", "import pulumi\n")
    cli.init({})
    cli.preview()  # the first run compiles the SDK's bytecode; not what a user waits for each time
    return cli


def previews_in_turns(lab: PulumiCli, empty: PulumiCli) -> tuple[float, float]:
    """The median `preview` of the lab and of the empty program, run one after the other."""
    lab_times, empty_times = [], []
    for _ in range(PREVIEWS):
        lab_times.append(timed(lab.preview))
        empty_times.append(timed(empty.preview))
    return statistics.median(lab_times), statistics.median(empty_times)


def vm_inputs(cli: PulumiCli) -> dict[str, Any]:
    (vm,) = [r for r in cli.resources() if r["type"] == "nexus:host:QemuVm"]
    return dict(vm["outputs"])


def hand_boot(argv: list[str], state_dir: Path, hand_dir: Path, base: Path, inputs: dict[str, Any]) -> float:
    """Boot the same argv on a fresh overlay, polling SSH every second as a person would."""
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(base),
            "-F",
            "qcow2",
            str(hand_dir / "disk.qcow2"),
            "4G",
        ],
        check=True,
    )
    hand_argv = [arg.replace(str(state_dir), str(hand_dir)) for arg in argv]
    poll = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=5",
        "-i", str(hand_dir / "id_ed25519"),
        "-p", str(int(inputs["sshPort"])),
        f"{inputs['username']}@127.0.0.1",
        "cloud-init status",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(hand_argv, check=True)
    try:
        while True:
            result = subprocess.run(poll, capture_output=True, text=True, timeout=60, check=False)
            if "status: done" in result.stdout:
                return time.perf_counter() - started
            if time.perf_counter() - started > 900:
                raise RuntimeError("the hand-booted VM was not ready within 900 s")
            time.sleep(1)
    finally:
        stop(VmPaths(hand_dir), powerdown_timeout=10)


def one_round(
    tmp: Path, image: Path, cache_dir: Path, base: Path, *, empty: PulumiCli | None
) -> dict[str, float]:
    """Up, the engine's figures (with `empty`, the program to compare previews with), destroy,
    then the hand boot."""
    cli = lab_stack(tmp, "bench")
    config = lab_config(tmp, str(image), free_port(), free_port())
    config["nexus:paths"]["cacheDir"] = str(cache_dir)
    cli.init(config)
    state_dir, hand_dir = tmp / "state", tmp / "hand"
    hand_dir.mkdir()
    figures: dict[str, float] = {}
    try:
        figures["up"] = timed(cli.up)
        figures["boot"] = float(cli.outputs().get("vmReadySeconds", 0)) or float("nan")
        if empty is not None:
            figures["preview"], figures["empty"] = previews_in_turns(cli, empty)
            figures["noop"] = median_of(cli.up)
        inputs = vm_inputs(cli)
        # The same seed and key for the hand boot, kept before destroy removes them.
        shutil.copy(state_dir / "cidata.iso", hand_dir / "cidata.iso")
        shutil.copy(inputs["privateKey"], hand_dir / "id_ed25519")
    finally:
        figures["destroy"] = timed(cli.destroy)
    figures["hand"] = hand_boot(list(inputs["argv"]), state_dir, hand_dir, base, inputs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="up + hand boot pairs (median ratio)")
    rounds = parser.parse_args().rounds
    image = ensure_test_image(log=lambda _: None) / IMAGE_NAME
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        # Fill the cache first, so `up` measures a cached image as users see it on re-creates.
        base = fetch_image(ImageSource(url=str(image)), tmp / "cache").path
        empty = empty_program(tmp / "empty")
        results = []
        for number in range(rounds):
            figures = one_round(
                tmp / f"round-{number}", image, tmp / "cache", base, empty=empty if number == 0 else None
            )
            results.append(figures)
            up, boot, hand = figures["up"], figures["boot"], figures["hand"]
            print(f"round {number + 1}: up {up:6.1f} s (guest {boot:6.1f} s)  hand boot {hand:6.1f} s  "
                  f"-> up/hand {up / hand:.3f}", flush=True)  # fmt: skip
    first = results[0]
    ratios = [r["up"] / r["hand"] for r in results]
    print(f"up (cached image) to SSH + cloud-init: {first['up']:6.1f} s")
    print(f"  of which waiting for the guest (provider clock): {first['boot']:6.1f} s")
    print(f"hand boot of the same argv, SSH polled every 1 s: {first['hand']:6.1f} s")
    print(f"up/hand ratio: {statistics.median(ratios):.3f} (median of {len(ratios)}: "
          + ", ".join(f"{r:.3f}" for r in ratios) + ")")  # fmt: skip
    print(f"no-op up:                               {first['noop']:6.1f} s")
    noop_ratio = first["noop"] / first["preview"]
    print(f"  preview of the same stack:            {first['preview']:6.1f} s  -> ratio {noop_ratio:.2f}")
    preview_ratio = first["preview"] / first["empty"]
    print(f"preview of the host-only lab:           {first['preview']:6.1f} s")
    print(f"  preview of an empty Python program:   {first['empty']:6.1f} s  -> ratio {preview_ratio:.2f}")
    print(f"destroy:                                {first['destroy']:6.1f} s")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()

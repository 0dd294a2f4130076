"""Wall-clock figures of lab snapshots and suspend/resume through the real engine, under TCG.

One lab, host-only (the x86_64 test image) or, with `--layers all`, with every layer (the
guest-layers test image, the playground container and the inner VM, as in
tests/e2e/test_guest_layers.py), its guest RAM dirtied first (`--fill-mib` of random data in
/dev/shm, so the saved state is not mostly zero pages):

  cold up   `pulumi up` of a fresh stack (images cached) until SSH answers and cloud-init is
            done (and, with every layer, the container and the inner VM run): the baseline,
            measured in the same run
  no-op up  a second `pulumi up` with nothing to change: the engine's own cost
  save      `scripts/lab snapshot save` (each round replaces the last one)
  revert    `scripts/lab snapshot revert`, the guest's clock set over SSH included
  suspend   `pulumi up` with nexus:vm.state suspended (save into the disk, QEMU stopped)
  resume    `pulumi up` with nexus:vm.state running (QEMU -loadvm, SSH answers)

Goals (issue 18): revert of a 2 GiB-RAM lab within 10 s under TCG here; resume >= 10x
faster than a cold up to the same layers. Figures only: nothing here asserts a time.

Run: .venv/bin/python -m bench.snapshots [--layers host|all] [--memory-mib 2048] [--fill-mib 512]
[--rounds 3] (needs scripts/setup --dev and the test images; boots one VM: take the VM test lock).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus_components.core.ssh import SshTarget
from nexus_components.host.paths import VmPaths
from tests.e2e.test_guest_layers import guest_config
from tests.e2e.test_lab import free_port, lab_config, lab_stack, ssh
from tests.e2e.test_snapshots import lab
from tests.support.debian_image import BASE, GUEST_LAYERS, IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.playground_rootfs import ensure_playground_rootfs
from tests.support.pulumi_cli import REPO, PulumiCli


def timed(step: Callable[[], Any]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def lab_step(cli: PulumiCli, *args: str) -> float:
    """Run one `scripts/lab` command; the seconds QEMU's job took, as the command prints them."""
    result = lab(cli, *args)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    found = re.search(r" in (\d+\.\d) s", result.stdout)
    return float(found.group(1)) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", choices=("host", "all"), default="host")
    parser.add_argument("--memory-mib", type=int, default=2048)
    parser.add_argument("--fill-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    figures: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds)
        print(f"  {name}: {seconds:.1f} s", flush=True)

    every_layer = args.layers == "all"
    with (
        tempfile.TemporaryDirectory(prefix="bench-snapshots-") as scratch,
        serving(ensure_test_image(recipe=GUEST_LAYERS if every_layer else BASE), IMAGE_NAME) as url,
    ):
        tmp = Path(scratch)
        cli = lab_stack(tmp, "bench")
        (cli.project_dir / "scripts").symlink_to(REPO / "scripts")
        ports = free_port(), free_port()
        config = (
            guest_config(tmp, url, ensure_playground_rootfs(), *ports)
            if every_layer
            else lab_config(tmp, url, *ports)
        )
        config["nexus:vm"] = {**config.get("nexus:vm", {}), "memoryMiB": args.memory_mib}
        if every_layer:
            # A nested KVM guest can stall the VM: PulumiCli.up heals that (and counts it).
            cli.guest = SshTarget("127.0.0.1", ports[0], "nexus", VmPaths(tmp / "state").ssh_private_key)
        cli.init(config)
        try:
            record("cold up", timed(cli.up))
            record("no-op up", timed(cli.up))
            outputs = cli.outputs()
            ssh(
                outputs,
                f"sudo -n dd if=/dev/urandom of=/dev/shm/fill bs=1M count={args.fill_mib} status=none",
            )
            for _ in range(args.rounds):
                started = time.perf_counter()
                job = lab_step(cli, "snapshot", "save", "--replace", "bench")
                record("save", time.perf_counter() - started)
                record("save job", job)
                ssh(outputs, "echo changed > /tmp/after-save")
                started = time.perf_counter()
                job = lab_step(cli, "snapshot", "revert", "bench")
                record("revert", time.perf_counter() - started)
                record("revert job", job)
            listed = lab(cli, "snapshot", "list").stdout
            print(listed)
            lab_step(cli, "snapshot", "delete", "bench")
            for _ in range(args.rounds):
                cli.set_config("nexus:vm.state", "suspended")
                record("suspend", timed(cli.up))
                cli.set_config("nexus:vm.state", "running")
                started = time.perf_counter()
                resumed = cli.up()
                record("resume", time.perf_counter() - started)
                print(
                    "\n".join(f"    {line.strip()}" for line in resumed.stdout.splitlines() if "[vm]" in line)
                )
        finally:
            cli.destroy(check=False)

    median = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"\nmedians over {args.rounds} round(s), layers: {args.layers}, {args.memory_mib} MiB guest RAM, "
        f"{args.fill_mib} MiB dirtied:"
    )
    for name, value in median.items():
        print(f"  {name:>10}: {value:6.1f} s")
    print("ratios (same run):")
    print(f"  revert / cold up:  {median['revert'] / median['cold up']:.3f}")
    print(
        f"  resume / cold up:  {median['resume'] / median['cold up']:.3f}"
        f"  (cold up is {median['cold up'] / median['resume']:.1f}x the resume)"
    )
    print(f"  save / no-op up:   {median['save'] / median['no-op up']:.2f}")
    print(f"  resume / no-op up: {median['resume'] / median['no-op up']:.2f}")
    print(f"VMs that hung and were restarted by an up (each one costs a boot): {cli.heals}")


if __name__ == "__main__":
    main()

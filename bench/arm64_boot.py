"""Boot time of an arm64 guest next to the x86_64 one, both under TCG, with the program's own argv.

Each row boots a locally built Debian 12 test image (tests/support/debian_image.py and
arm64_image.py) from a fresh qcow2 overlay and NoCloud seed, through the same pure modules the
providers use (build_qemu_argv, vm_process.launch / wait_until_ready / stop), and times launch
until SSH answers and cloud-init is done. The x86_64 row is the baseline for the ratios; the
arm64 rows compare TCG CPU models (pointer authentication with the architected QARMA algorithm
is costly to emulate; pauth-impdef=on uses QEMU's cheaper one).

Run: .venv/bin/python -m bench.arm64_boot [CPU model ...]   (needs scripts/setup --dev, root for the image
builds, qemu-system-arm and qemu-efi-aarch64)
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from nexus_components.config import load_config
from nexus_components.core import cloudinit, seed_iso, ssh
from nexus_components.host import disk, vm_process
from nexus_components.host.hostfacts import find_firmware, find_qemu, find_qemu_img
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import HostFacts, VmFiles, build_qemu_argv
from nexus_components.host.settings import disk_size_bytes
from tests.support import arm64_image, debian_image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def boot_seconds(image: Path, arch: str, cpu_model: str | None, scratch: Path) -> float:
    config = load_config(
        {
            "vm": {"arch": arch, "accelerator": "tcg", "cpus": 2, "memoryMiB": 1024, "diskSize": "4G"},
            "network": {"sshPort": free_port(), "forwards": []},
            "guest": {"username": "nexus", "installPackages": False},
            "paths": {"stateDir": str(scratch / "state")},
        },
        stack="bench",
        home=scratch,
    )
    paths = VmPaths(config.state_dir)
    paths.state_dir.mkdir(parents=True)
    qemu = find_qemu(config.vm, "linux")
    firmware = find_firmware(config.vm, "linux", qemu)
    host = HostFacts(
        os="linux",
        accelerator="tcg",
        qemu_binary=qemu,
        firmware_code=firmware.code if firmware else None,
    )
    if firmware and firmware.vars_template:
        shutil.copyfile(firmware.vars_template, paths.firmware_vars)
    disk.create_overlay(
        find_qemu_img(config.vm, "linux"),
        image,
        paths.overlay_disk,
        disk_size_bytes(config.vm.disk_size),
        size_key="nexus:vm.diskSize",
    )
    ssh.generate_key_pair(paths.ssh_private_key, comment="bench")
    spec = cloudinit.CloudInitSpec(
        username="nexus",
        ssh_public_key=paths.ssh_public_key.read_text().strip(),
        hostname="bench",
        guest_arch=arch,
        install_packages=False,
    )
    user_data = cloudinit.render_user_data(spec)
    meta_data = cloudinit.render_meta_data(
        instance_id=cloudinit.instance_id_for(user_data, "bench"), hostname="bench"
    )
    seed_iso.write_seed_iso(
        paths.seed_iso, {"user-data": user_data.encode(), "meta-data": meta_data.encode()}
    )

    argv = build_qemu_argv(config, host, VmFiles.of(paths))
    if cpu_model is not None:
        argv[argv.index("-cpu") + 1] = cpu_model
    target = ssh.SshTarget("127.0.0.1", config.network.ssh_port, "nexus", paths.ssh_private_key)
    started = time.monotonic()
    vm_process.launch(argv, paths)
    try:
        vm_process.wait_until_ready(
            target, paths, timeout=1800, log=lambda _: None, fallback_poll_seconds=1.0
        )
        return time.monotonic() - started
    finally:
        vm_process.stop(paths, powerdown_timeout=30)


def main() -> None:
    # Each arm64 boot takes minutes under TCG: name the CPU models to compare, if not both.
    cpu_models = sys.argv[1:] or ["max", "max,pauth-impdef=on"]
    x86_image = debian_image.image_path(debian_image.ensure_test_image(log=lambda _: None))
    arm64_dir = arm64_image.ensure_arm64_test_image(log=lambda _: None)
    arm64 = arm64_dir / arm64_image.IMAGE_NAME
    rows: list[tuple[str, Path, str, str | None]] = [("x86_64, q35, default CPU", x86_image, "x86_64", None)]
    rows += [(f"aarch64, virt, -cpu {model}", arm64, "aarch64", model) for model in cpu_models]
    figures: list[tuple[str, float]] = []
    for label, image, arch, cpu_model in rows:
        with tempfile.TemporaryDirectory() as scratch:
            seconds = boot_seconds(image, arch, cpu_model, Path(scratch))
        figures.append((label, seconds))
        print(f"{label:42s} launch to SSH + cloud-init: {seconds:6.1f} s", flush=True)
    baseline = figures[0][1]
    for label, seconds in figures[1:]:
        print(f"{label:42s} / x86_64: {seconds / baseline:.2f}")


if __name__ == "__main__":
    main()

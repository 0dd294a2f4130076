"""Time for each layer to become ready, through `pulumi up` and by hand, in the same run.

  by hand   the guest test image booted with the same QEMU options, then the same steps
            typed at a shell: SSH + cloud-init, `docker version`, scp + `docker import` +
            `docker run` until HTTP answers through the VM's forward, the inner VM's QEMU
            until QMP says running
  pulumi    `pulumi up` of the guest e2e stack; per layer from the providers' own clocks
            (vmReadySeconds, dockerReadySeconds, innerVmReadySeconds), the container
            layer as what remains of the whole `up`
  refresh   a no-op `up` (each layer's diff looks at the machine; no refresh) against
            `up --refresh` (every resource read back first, what `refresh: always` cost)

Both runs use TCG under the same load, so the ratios are the figures to compare.
Run: .venv/bin/python -m bench.guest_layers   (needs scripts/setup --dev and root)
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus_components.core import cloudinit, seed_iso, ssh
from nexus_components.guest import inner_vm
from nexus_components.guest.settings import InnerVmConfig
from tests.e2e.test_guest_layers import CONTAINER, guest_config
from tests.e2e.test_lab import free_port, lab_stack
from tests.support.debian_image import GUEST_LAYERS, IMAGE_NAME, ensure_test_image
from tests.support.playground_rootfs import INNER_INITRD, INNER_KERNEL, ensure_playground_rootfs


def timed(step: Callable[[], Any]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def until(probe: Callable[[], bool], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("step did not finish")
        time.sleep(1)


def by_hand(work: Path, image: Path, rootfs: Path) -> dict[str, float]:
    key = work / "id_ed25519"
    ssh.generate_key_pair(key, comment="bench")
    spec = cloudinit.CloudInitSpec(
        username="nexus",
        ssh_public_key=(work / "id_ed25519.pub").read_text(),
        hostname="bench",
        guest_arch="x86_64",
        install_packages=False,
    )
    user_data = cloudinit.render_user_data(spec)
    meta = cloudinit.render_meta_data(
        instance_id=cloudinit.instance_id_for(user_data, "bench"), hostname="bench"
    )
    seed_iso.write_seed_iso(work / "seed.iso", {"user-data": user_data.encode(), "meta-data": meta.encode()})
    disk = work / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(disk), "10G"],
        check=True,
    )
    ssh_port, http_port = free_port(), free_port()
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "q35,accel=tcg",
        "-smp",
        "2",
        "-m",
        "2048M",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
        f"if=virtio,format=qcow2,file={disk}",
        "-drive",
        f"if=virtio,format=raw,readonly=on,file={work / 'seed.iso'}",
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{http_port}-:80",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        f"file:{work / 'serial.log'}",
        "-pidfile",
        str(work / "qemu.pid"),
        "-daemonize",
    ]
    target = ssh.SshTarget("127.0.0.1", ssh_port, "nexus", key)

    def remote(*command: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(target.argv(list(command)), input=stdin, capture_output=True, check=False)

    figures: dict[str, float] = {}
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    try:
        until(lambda: remote("cloud-init", "status", "--wait").returncode in (0, 2))
        figures["vm"] = time.perf_counter() - started
        mark = time.perf_counter()
        until(lambda: remote("sudo", "-n", "docker", "version").returncode == 0)
        remote("sudo", "-n", "usermod", "-aG", "docker", "nexus")
        figures["docker"] = time.perf_counter() - mark
        mark = time.perf_counter()
        scp = ["scp", "-q", "-P", str(ssh_port), "-i", str(key), "-o", "StrictHostKeyChecking=no"]
        subprocess.run(
            [*scp, "-o", "UserKnownHostsFile=/dev/null", str(rootfs), "nexus@127.0.0.1:/var/tmp/r.tar"],
            check=True,
        )
        remote("docker", "import", "/var/tmp/r.tar", "bench:rootfs")
        serve = "exec busybox httpd -f -p 80 -h /srv/www"
        remote(
            "docker", "run", "-d", "--init", "--name", CONTAINER, "--device", "/dev/kvm", "-p", "80:80",
            "-v", "bench-inner:/var/lib/nexus/inner-vm", "bench:rootfs", "sh", "-c", serve,
        )  # fmt: skip
        until(lambda: _http_ok(http_port))
        figures["container"] = time.perf_counter() - mark
        mark = time.perf_counter()
        config = InnerVmConfig(enabled=True, memory_mib=256, kernel=INNER_KERNEL, initrd=INNER_INITRD)
        paths = inner_vm.InnerVmPaths(config.name)
        remote(*inner_vm.make_dir(CONTAINER, paths.dir))
        remote(*inner_vm.create_disk_if_missing(CONTAINER, paths.disk, "10G"))
        remote(*inner_vm.write_file(CONTAINER, paths.probe_image), stdin=inner_vm.probe_boot_sector())
        remote(*inner_vm.in_container(CONTAINER, inner_vm.probe_argv("kvm", paths.probe_image)))
        remote(*inner_vm.in_container(CONTAINER, inner_vm.build_inner_argv(config, "kvm")))
        until(
            lambda: (
                inner_vm.qmp_status(
                    remote(
                        *inner_vm.qmp_argv(CONTAINER, paths.qmp_socket),
                        stdin=inner_vm.qmp_input("query-status"),
                    ).stdout.decode()
                )
                == "running"
            )
        )
        figures["inner VM"] = time.perf_counter() - mark
    finally:
        pid = int((work / "qemu.pid").read_text())
        subprocess.run(["kill", str(pid)], check=False)
    return figures


def _http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def through_pulumi(work: Path, image: Path, rootfs: Path) -> dict[str, float]:
    cli = lab_stack(work, "bench")
    # Serve nothing: a local path is a valid image source (what an air-gapped user does).
    cli.init(guest_config(work, str(image), rootfs, free_port(), free_port()))
    figures: dict[str, float] = {}
    try:
        up = timed(cli.up)
        outputs = cli.outputs()
        figures["vm"] = float(outputs["vmReadySeconds"])
        figures["docker"] = float(outputs["dockerReadySeconds"])
        figures["inner VM"] = float(outputs["innerVmReadySeconds"])
        figures["container"] = up - figures["vm"] - figures["docker"] - figures["inner VM"]
        figures["whole up"] = up
        figures["no-op up"] = timed(cli.up)
        figures["no-op up --refresh"] = timed(lambda: cli.up("--refresh"))
        figures["preview"] = timed(cli.preview)
    finally:
        figures["destroy"] = timed(cli.destroy)
    return figures


def main() -> None:
    image = ensure_test_image(recipe=GUEST_LAYERS, log=lambda _: None) / IMAGE_NAME
    rootfs = ensure_playground_rootfs(log=lambda _: None)
    with tempfile.TemporaryDirectory() as scratch:
        hand_dir, pulumi_dir = Path(scratch) / "hand", Path(scratch) / "pulumi"
        hand_dir.mkdir()
        hand = by_hand(hand_dir, image, rootfs)
        managed = through_pulumi(pulumi_dir, image, rootfs)
    print(f"{'layer':28} {'by hand':>9} {'pulumi':>9} {'ratio':>6}")
    for layer in ("vm", "docker", "container", "inner VM"):
        print(f"{layer:28} {hand[layer]:8.1f}s {managed[layer]:8.1f}s {managed[layer] / hand[layer]:6.2f}")
    total = sum(hand[layer] for layer in ("vm", "docker", "container", "inner VM"))
    print(f"{'all layers':28} {total:8.1f}s {managed['whole up']:8.1f}s {managed['whole up'] / total:6.2f}")
    plain, refresh = managed["no-op up"], managed["no-op up --refresh"]
    print(f"no-op up {plain:6.1f}s; with --refresh {refresh:6.1f}s; ratio {refresh / plain:.2f}")
    print(f"preview {managed['preview']:.1f}s; destroy {managed['destroy']:.1f}s")
    print(
        "(by-hand steps: " + shlex.join(["docker", "import", "..."]) + ", docker run, QEMU in the container)"
    )


if __name__ == "__main__":
    main()

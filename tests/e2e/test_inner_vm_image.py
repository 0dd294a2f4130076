"""The inner VM booted from a real cloud image, reached with the generated script.

The project's program through the real engine: the guest test image (Docker, QEMU baked
in) boots under TCG, the playground container comes from the root-file-system tarball,
and the inner VM boots the host layers' Debian test image (cloud-init, sshd) given as a
path on this machine: fetched into the stack's image cache (digest from the SHA256SUMS
beside it), copied into the VM, an overlay disk and its own seed in the container.
`connect-inner-vm.sh` then runs commands in it through the VM as a jump host:

    up -> the script answers from the inner VM -> no-op up (nothing copied again)
       -> destroy (no QEMU, no state directory, no resources)
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bench.layer_overhead.results import WORKLOADS
from nexus_components.core.ssh import SshTarget
from nexus_components.host.paths import VmPaths
from tests.e2e.test_bench_layers import bench_layers
from tests.e2e.test_guest_layers import (  # noqa: F401  (module-scoped fixtures)
    guest_image_url,
    nothing_listens,
    rootfs_tarball,
)
from tests.e2e.test_lab import free_port, gone_within, lab_config, lab_stack, qemu_processes_of, ssh
from tests.support.debian_image import IMAGE_NAME, ensure_test_image
from tests.support.processes import running
from tests.support.pulumi_cli import PulumiCli

pytestmark = [pytest.mark.engine, pytest.mark.vm, pytest.mark.guest]

INNER_SSH_PORT = 2223  # the container port forwarded to the inner VM's 22, published as VM port 2223
INNER_HOSTNAME = "inner-box"


def image_config(
    tmp_path: Path, image_url: str, rootfs: Path, inner_image: Path, ssh_port: int
) -> dict[str, Any]:
    return lab_config(
        tmp_path,
        image_url,
        ssh_port,
        free_port(),
        vm={"memoryMiB": 3072, "diskSize": "10G", "bootTimeoutSeconds": 1200},
        network={"forwards": []},
        playground={
            "enabled": True,
            "rootfsTarball": str(rootfs),
            "command": ["sleep", "infinity"],
            "ports": [{"vm": INNER_SSH_PORT, "container": INNER_SSH_PORT}],
            "readyTimeoutSeconds": 900,
        },
        innerVm={
            "enabled": True,
            "memoryMiB": 768,
            "diskSize": "4G",
            # A path on this machine; its digest comes from the SHA256SUMS beside it.
            "image": {"url": str(inner_image)},
            "hostname": INNER_HOSTNAME,
            "forwards": [{"container": INNER_SSH_PORT, "guest": 22}],
            "bootTimeoutSeconds": 1200,
            "powerdownTimeoutSeconds": 60,
        },
    )


def run_script(script: str, *argv: str) -> str:
    result = subprocess.run([script, *argv], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{script} {argv}: exit {result.returncode}: {result.stderr}"
    return result.stdout.strip()


def test_inner_vm_boots_a_cloud_image_and_the_script_reaches_it(
    tmp_path: Path,
    guest_image_url: str,  # noqa: F811
    rootfs_tarball: Path,  # noqa: F811
) -> None:
    inner_image = ensure_test_image() / IMAGE_NAME
    ssh_port = free_port()
    cli: PulumiCli = lab_stack(tmp_path, "inner")
    # It starts a nested KVM guest: see PulumiCli.up.
    cli.guest = SshTarget("127.0.0.1", ssh_port, "nexus", VmPaths(tmp_path / "state").ssh_private_key)
    cli.init(image_config(tmp_path, guest_image_url, rootfs_tarball, inner_image, ssh_port))
    state_dir = tmp_path / "state"
    vm_pid = 0
    try:
        preview = cli.preview()
        assert "nexus:guest:InnerImage" in preview.stdout, preview.stdout

        started = time.monotonic()
        cli.up()
        print(
            f"first up (VM, Docker, container, image copy, inner VM boot): {time.monotonic() - started:.0f} s"
        )
        outputs = cli.outputs()
        vm_pid = outputs["vmPid"]
        print(f"inner VM ready after {outputs['innerVmReadySeconds']} s ({outputs['innerVmAccelerator']})")
        assert outputs["innerVmQmpStatus"] == "running"
        # up waited for the guest itself (its cloud-init's line on the serial console), not only QEMU.
        serial = "/var/lib/nexus/inner-vm/inner/serial.log"
        ready = ssh(outputs, f"docker exec nexus-playground grep -c -F 'nexus inner VM is ready:' {serial}")
        assert ready == "1", ready

        script = outputs["innerVmShellScript"]
        assert script == str(state_dir / "connect-inner-vm.sh") and Path(script).is_file()
        assert f"shell: {script}" in outputs["innerVmReach"]
        assert f"guest port 22: VM port {INNER_SSH_PORT}" in outputs["innerVmReach"]

        # The image went into the VM once, named by its digest, and the container sees it.
        digest = (inner_image.parent / "SHA256SUMS").read_text().split()[0]
        assert ssh(outputs, "ls /var/lib/nexus/images") == f"{digest}.qcow2"

        # The generated script: ssh with the stack's key, the VM as jump host.
        assert run_script(script, "cat", "/etc/hostname") == INNER_HOSTNAME
        assert run_script(script, "cloud-init", "status") == "status: done"
        assert run_script(script, "id", "-un") == "nexus"

        noop_started = time.monotonic()
        heals = cli.heals
        second = cli.up()
        print(f"no-op up: {time.monotonic() - noop_started:.1f} s")
        if cli.heals == heals:  # a healed VM (see PulumiCli.up) is a change
            for verb in ("created", "updated", "deleted", "replaced"):
                assert verb not in second.stdout, second.stdout
        vm_pid = cli.outputs()["vmPid"]
        assert run_script(script, "cat", "/etc/hostname") == INNER_HOSTNAME

        # The layer-overhead benchmark measures the inner VM's column through the same script.
        bench = bench_layers(cli, "inner", "--quick", "--repeats", "1")
        assert bench.returncode == 0, bench.stderr
        document = json.loads((state_dir / "bench-layers.json").read_text())
        layers = {layer["name"]: (layer["accelerator"], layer["up"]) for layer in document["layers"]}
        assert layers["inner-vm"] == (outputs["innerVmAccelerator"], True), layers
        cells = {(r["workload"], r["layer"]): r for r in document["results"]}
        for workload in WORKLOADS:
            if workload.name != "http":  # no forwarded HTTP port reaches the inner VM here
                cell = cells[(workload.name, "inner-vm")]
                assert cell["median"] and cell["median"] > 0, cell
        assert run_script(script, "sh", "-c", "ls /var/tmp | grep -c nexus-bench || true") == "0"
    finally:
        destroyed = cli.destroy(check=False)

    output = destroyed.stdout + destroyed.stderr
    assert destroyed.returncode == 0, output
    assert "[inner-vm] powered off" in output, output
    assert vm_pid and gone_within(vm_pid, 10) and not running(vm_pid)
    assert qemu_processes_of(state_dir) == []
    assert nothing_listens(ssh_port)
    assert not state_dir.exists()
    assert cli.resources() == []

"""The guest layers for real: Docker in the VM, the playground container, the inner VM.

The project's own program through the real engine boots the guest test image (Docker,
QEMU, libvirt baked in) under TCG; the playground image is a root-file-system tarball
made with mmdebstrap, copied into the VM and `docker import`ed; the inner VM boots
Debian's cloud kernel inside the container with KVM (nested SVM under TCG). One stack
lives through:

    up -> HTTP through host -> VM -> container -> inner VM checks -> no-op up
       -> snapshot save; a file deleted in the container, one written in the VM, the inner
          VM killed; revert (twice): all undone, the same QEMUs, no second inner boot
       -> suspended: QEMU gone, preview quiet, a change to a layer refused; resumed: every
          layer as it was, the same inner QEMU
       -> container removed by hand: preview shows it, up restores it
       -> container stopped by hand: up starts the same container again, files kept
       -> Docker daemon stopped in the VM: up starts it
       -> a replace onto a VM port something else holds: refused, the container kept
       -> a corrupt image archive: one error naming the key, nothing left in the VM,
          and switching back changes nothing
       -> the VM's disk deleted: up makes every layer again on a new one
       -> a failing inner-VM step leaves the layers below running
       -> inner VM off, the busybox playground from here on (small imports under TCG)
       -> a container left by an interrupted up is removed; a user's of that name is not
       -> disk grows: df shows it
       -> image from a registry run in the VM -> build context, rebuilt on a change
       -> destroy (nothing left)

A second stack hangs its VM (SIGSTOP): up restarts it, and destroy powers it off.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.layer_overhead.results import WORKLOADS
from nexus_components.core.ssh import SshTarget
from nexus_components.guest import inner_vm as inner
from nexus_components.host.paths import VmPaths
from nexus_components.state_upgrade import drop_pending_creates
from tests.e2e.test_bench_layers import bench_layers
from tests.e2e.test_lab import free_port, gone_within, lab_config, lab_stack, qemu_processes_of, ssh
from tests.e2e.test_snapshots import assert_no_changes, lab_ok, resume, suspend
from tests.support.debian_image import GUEST_LAYERS, IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.playground_rootfs import (
    IMAGE_TARBALL_TAG,
    INNER_INITRD,
    INNER_KERNEL,
    INNER_USERSPACE_MARKER,
    PAGE_MARKER,
    ensure_busybox_rootfs,
    ensure_playground_image_tarball,
    ensure_playground_rootfs,
)
from tests.support.processes import running
from tests.support.pulumi_cli import REPO, PulumiCli

pytestmark = [pytest.mark.engine, pytest.mark.vm, pytest.mark.guest]

CONTAINER = "nexus-playground"
INNER_SERIAL = "/var/lib/nexus/inner-vm/inner/serial.log"
INNER_QMP = "/var/lib/nexus/inner-vm/inner/qmp.sock"
# A VM port the lifecycle test has another program hold, to see a replace onto it refused.
TAKEN_PORT = 8081
# A value with spaces, quotes and `$`: it must reach the container byte for byte.
GREETING = 'it\'s "quoted", $HOME and `ticks` stay as typed'


def nothing_listens(port: int) -> bool:
    """No listener answers (a connection the VM's side closed may sit in TIME_WAIT a minute,
    which does not stop QEMU's forward from binding the port again: it sets SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.settimeout(5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def guest_image_url() -> Iterator[str]:
    with serving(ensure_test_image(recipe=GUEST_LAYERS), IMAGE_NAME) as url:
        yield url


@pytest.fixture(scope="module")
def rootfs_tarball() -> Path:
    return ensure_playground_rootfs()


def guest_config(
    tmp_path: Path, image_url: str, rootfs: Path, ssh_port: int, http_port: int
) -> dict[str, Any]:
    serve = 'printf "%s" "$GREETING" > /srv/www/env.txt && exec busybox httpd -f -p 80 -h /srv/www'
    return lab_config(
        tmp_path,
        image_url,
        ssh_port,
        http_port,
        vm={"memoryMiB": 2048, "diskSize": "10G", "bootTimeoutSeconds": 1200},
        playground={
            "enabled": True,
            "rootfsTarball": str(rootfs),
            "command": ["sh", "-c", serve],
            "env": {"GREETING": GREETING},
            "ports": [{"vm": 80, "container": 80}],
            "readyTimeoutSeconds": 900,
        },
        innerVm={
            "enabled": True,
            "memoryMiB": 256,
            "kernel": INNER_KERNEL,
            "initrd": INNER_INITRD,
            "kernelArgs": "console=ttyS0 panic=-1",
            "powerdownTimeoutSeconds": 60,
        },
    )


REGISTRY_PORT = 5001
REGISTRY_CONFIG = f"""version: 0.1
storage:
  filesystem:
    rootdirectory: /tmp/nexus-test-registry
http:
  addr: 127.0.0.1:{REGISTRY_PORT}
"""


def start_registry() -> str:
    """A shell line for the VM: Debian's registry binary (a second instance, without the
    package's htpasswd auth) on REGISTRY_PORT, as a transient systemd unit, so it outlives
    the SSH session that starts it."""
    write = shlex.join(["printf", "%s", REGISTRY_CONFIG]) + " > /tmp/nexus-test-registry.yml"
    serve = shlex.join(
        [
            "sudo", "-n", "systemd-run", "--unit=nexus-test-registry", "--collect",
            "docker-registry", "serve", "/tmp/nexus-test-registry.yml",
        ]
    )  # fmt: skip
    return f"{write} && {serve}"


def http_get(port: int, path: str = "/", attempts: int = 30) -> str:
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return str(response.read().decode())
        except OSError as error:
            last_error = error
            time.sleep(2)
    raise AssertionError(f"no HTTP answer on host port {port}{path}: {last_error}")


def in_container(outputs: dict[str, Any], *argv: str) -> str:
    return ssh(outputs, shlex.join(["docker", "exec", CONTAINER, *argv]))


def inner_qmp_status(outputs: dict[str, Any]) -> str:
    request = '{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n'
    line = (
        shlex.join(["printf", "%s", request])
        + " | "
        + shlex.join(["docker", "exec", "-i", CONTAINER, "socat", "-t1", "-", f"UNIX-CONNECT:{INNER_QMP}"])
    )
    return ssh(outputs, line)


def wait_for_serial(outputs: dict[str, Any], marker: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        log = in_container(outputs, "cat", INNER_SERIAL)
        if marker in log or time.monotonic() > deadline:
            return log
        time.sleep(3)


def forget_container(cli: PulumiCli, tmp_path: Path) -> None:
    """What an up killed between docker's create and Pulumi saving the state leaves: the
    container runs in the VM, the state lacks it and what depends on it, and holds a
    "pending CREATE" for it. Then what `scripts/up` does with that before its `up`."""
    container = next(r for r in cli.resources() if r["type"] == "docker:index/container:Container")
    cli.run("state", "delete", container["urn"], "--target-dependents", "--yes", "--stack", cli.stack)
    exported = tmp_path / "pending.json"
    cli.run("stack", "export", "--stack", cli.stack, "--file", str(exported))
    state = json.loads(exported.read_text())
    state["deployment"]["pending_operations"] = [{"resource": container, "type": "creating"}]
    state["deployment"], dropped = drop_pending_creates(state["deployment"])
    assert dropped == 1
    exported.write_text(json.dumps(state))
    cli.run("stack", "import", "--stack", cli.stack, "--file", str(exported))


CONTAINER_STEP = re.compile(r"docker:index(?:/container)?:Container")


def up_interrupted_at_the_container(cli: PulumiCli) -> tuple[int, str]:
    """`pulumi up` sent SIGINT (one Ctrl-C) as soon as it starts creating the container:
    its exit status and output."""
    argv = ["pulumi", "up", *cli.stack_args(), "--yes", "--skip-preview", "--non-interactive"]
    up = subprocess.Popen(
        argv, cwd=cli.project_dir, env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert up.stdout is not None
    lines: list[str] = []
    interrupted = False
    for line in up.stdout:
        lines.append(line)
        # The progress display names the type docker:index:Container.
        if not interrupted and CONTAINER_STEP.search(line) and "creating" in line:
            os.kill(up.pid, signal.SIGINT)
            interrupted = True
    returncode = up.wait(timeout=1800)
    output = "".join(lines)
    assert interrupted, output
    return returncode, output


def inner_vm_now(outputs: dict[str, Any]) -> tuple[str, str]:
    """The inner QEMU's pid and how many times its kernel booted (its console's banners)."""
    pid = ssh(outputs, shlex.join(inner.running_pid(CONTAINER, inner.InnerVmPaths("inner").pid_file)))
    assert pid.isdigit(), f"no inner QEMU runs: {pid!r}"
    return pid, in_container(outputs, "grep", "-c", "Linux version", INNER_SERIAL)


def assert_every_layer_runs_on(outputs: dict[str, Any], http_port: int, inner_vm: tuple[str, str]) -> None:
    """The container serves, and the inner VM is the same QEMU, running, with no second boot."""
    assert http_get(http_port, "/env.txt") == GREETING
    assert inner_vm_now(outputs) == inner_vm, "the same inner QEMU, no second boot on its console"
    assert '"status": "running"' in inner_qmp_status(outputs)


def snapshot_of_the_whole_lab(cli: PulumiCli, state_dir: Path, http_port: int) -> None:
    """Save `clean`; delete a file in the container, write one in the VM, kill the inner
    VM; revert: all undone, each layer answers without a new boot; twice; delete."""
    if not (cli.project_dir / "scripts").exists():
        (cli.project_dir / "scripts").symlink_to(REPO / "scripts")
    outputs = cli.outputs()
    vm_pid = outputs["vmPid"]
    in_container(outputs, "sh", "-c", "echo saved > /root/kept")
    inner_vm = inner_vm_now(outputs)
    started = time.monotonic()
    assert "saved snapshot 'clean'" in lab_ok(cli, "snapshot", "save", "clean")
    print(f"snapshot save, every layer: {time.monotonic() - started:.1f} s")
    for attempt in (1, 2):
        in_container(outputs, "rm", "/root/kept")
        ssh(outputs, "echo later > /home/nexus/new")
        in_container(outputs, "sh", "-c", 'kill -9 "$1"', "sh", inner_vm[0])
        started = time.monotonic()
        assert "reverted the lab to snapshot 'clean'" in lab_ok(cli, "snapshot", "revert", "clean")
        print(f"snapshot revert {attempt}, every layer: {time.monotonic() - started:.1f} s")
        assert in_container(outputs, "cat", "/root/kept") == "saved", f"revert {attempt}"
        assert ssh(outputs, "test -e /home/nexus/new || echo gone") == "gone", f"revert {attempt}"
        assert_every_layer_runs_on(outputs, http_port, inner_vm)
        assert qemu_processes_of(state_dir) == [vm_pid], "the same VM QEMU, no reboot"
    assert_no_changes(cli)
    assert "deleted snapshot 'clean'" in lab_ok(cli, "snapshot", "delete", "clean")


def suspend_and_resume_the_whole_lab(cli: PulumiCli, state_dir: Path, http_port: int) -> int:
    """nexus:vm.state suspended: QEMU gone, preview quiet, a change to a layer refused;
    running: every layer resumes as it was. Returns the resumed VM's pid."""
    outputs = cli.outputs()
    in_container(outputs, "sh", "-c", "echo before > /root/before-suspend")
    inner_vm = inner_vm_now(outputs)
    suspend(cli, state_dir)
    cli.set_config("nexus:innerVm.memoryMiB", "320")
    refused = cli.run("preview", *cli.stack_args(), check=False)
    message = refused.stdout + refused.stderr
    assert refused.returncode != 0, message
    assert "nexus:innerVm changed (memory_mib) while nexus:vm.state is suspended" in message, message
    cli.set_config("nexus:innerVm.memoryMiB", "256")

    outputs = resume(cli, state_dir, "every layer")
    assert in_container(outputs, "cat", "/root/before-suspend") == "before"
    assert_every_layer_runs_on(outputs, http_port, inner_vm)
    assert_no_changes(cli)
    return int(outputs["vmPid"])


def container_id(outputs: dict[str, Any]) -> str:
    return ssh(outputs, shlex.join(["docker", "inspect", "--format", "{{.Id}}", CONTAINER]))


def test_guest_layers_lifecycle(tmp_path: Path, guest_image_url: str, rootfs_tarball: Path) -> None:
    ssh_port, http_port = free_port(), free_port()
    cli: PulumiCli = lab_stack(tmp_path, "guest")
    # It starts a nested KVM guest: see PulumiCli.up.
    cli.guest = SshTarget("127.0.0.1", ssh_port, "nexus", VmPaths(tmp_path / "state").ssh_private_key)
    cli.init(guest_config(tmp_path, guest_image_url, rootfs_tarball, ssh_port, http_port))
    state_dir = tmp_path / "state"
    vm_pid = 0
    try:
        preview = cli.preview()
        for kind in ("DockerEngine", "Playground", "InnerVm"):
            assert f"nexus:guest:{kind}" in preview.stdout, preview.stdout
        for kind in ("DockerDaemon", "ContainerPreflight", "ContainerPresence", "TarballImage", "InnerQemu"):
            assert f"nexus:guest:{kind}" in preview.stdout, preview.stdout
        assert "docker:index/container:Container" in preview.stdout

        started = time.monotonic()
        first = cli.up()
        print(f"first up (boot, Docker, import, container, inner VM): {time.monotonic() - started:.0f} s")
        assert "[docker] Docker" in first.stdout, first.stdout
        outputs = cli.outputs()
        vm_pid = outputs["vmPid"]

        # Layer 3: Docker in the VM, with the seed's checks as outputs.
        assert outputs["dockerVersion"].startswith("20.10"), outputs
        assert outputs["kvmUsable"] is True, outputs["kvmVerdict"]
        assert "KVM acceleration can be used" in outputs["kvmVerdict"]
        assert outputs["libvirtVersion"].startswith("9."), outputs
        # Layer 4: host port -> VM 80 -> container 80, env passed byte for byte.
        assert PAGE_MARKER in http_get(http_port)
        assert http_get(http_port, "/env.txt") == GREETING
        assert outputs["playgroundImageDigest"].startswith("sha256:")
        assert in_container(outputs, "sh", "-c", "test -c /dev/kvm && echo kvm") == "kvm"
        # Layer 5: the inner VM runs under KVM, answers QMP, and its kernel boots.
        assert outputs["innerVmAccelerator"] == "kvm"
        assert outputs["innerVmQmpStatus"] == "running"
        assert '"status": "running"' in inner_qmp_status(outputs)
        serial = wait_for_serial(outputs, INNER_USERSPACE_MARKER, 180)
        assert "Linux version" in serial and INNER_USERSPACE_MARKER in serial, serial[-2000:]
        assert Path(outputs["playgroundShellScript"]).is_file()

        noop_started = time.monotonic()
        heals = cli.heals
        second = cli.up()
        print(f"no-op up: {time.monotonic() - noop_started:.1f} s")
        if cli.heals == heals:
            assert "unchanged" in second.stdout, second.stdout
            for verb in ("created", "updated", "deleted", "replaced"):
                assert verb not in second.stdout, second.stdout
        vm_pid = cli.outputs()["vmPid"]

        # The layer-overhead benchmark measures the container column too (one batch per layer).
        bench = bench_layers(cli, "guest", "--quick", "--repeats", "1")
        assert bench.returncode == 0, bench.stderr
        document = json.loads((state_dir / "bench-layers.json").read_text())
        layers = {layer["name"]: (layer["accelerator"], layer["up"]) for layer in document["layers"]}
        assert layers["container"] == ("tcg", True) and layers["inner-vm"] == ("kvm", False), layers
        cells = {(r["workload"], r["layer"]): r for r in document["results"]}
        for workload in WORKLOADS:
            if workload.name != "http":  # the container's port 80 is its own web server's
                cell = cells[(workload.name, "container")]
                assert cell["median"] and cell["median"] > 0, cell
        assert in_container(outputs, "sh", "-c", "ls /tmp | grep -c nexus-bench || true") == "0"

        # The whole running lab, undoable and suspendable: the VM's RAM holds the container
        # and the inner VM, so a revert or a resume brings all three back without a boot.
        snapshot_of_the_whole_lab(cli, state_dir, http_port)
        vm_pid = suspend_and_resume_the_whole_lab(cli, state_dir, http_port)
        outputs = cli.outputs()

        # A container removed by hand: preview shows it (no refresh needed), up brings it
        # (and the inner VM) back. That up gets one Ctrl-C as it starts creating the
        # container: Pulumi finishes that step (the provider's, not the program's, which
        # Pulumi ends) and stops; the next up converges.
        ssh(outputs, shlex.join(["docker", "rm", "--force", CONTAINER]))
        drift = cli.preview()
        assert "nexus-guest-playground-presence" in drift.stdout, drift.stdout
        assert "docker:index/container:Container" in drift.stdout and "replace" in drift.stdout, drift.stdout
        assert f"container {CONTAINER} is gone; up creates it again" in drift.stdout + drift.stderr
        returncode, interrupted = up_interrupted_at_the_container(cli)
        print(f"up interrupted at the container: exit status {returncode}")
        assert "before hook" not in interrupted and "error reading from server" not in interrupted, (
            interrupted
        )
        assert re.search(CONTAINER_STEP.pattern + r"\s+\S+\s+created", interrupted), interrupted
        assert container_id(outputs), "the container's create ran to its end"
        cli.up()
        outputs = cli.outputs()
        assert http_get(http_port, "/env.txt") == GREETING
        assert outputs["innerVmQmpStatus"] == "running"
        assert '"status": "running"' in inner_qmp_status(outputs)

        # A container stopped by hand: preview says it starts again, and up starts the same
        # container, with what was written in it (not a new one from the image).
        in_container(outputs, "sh", "-c", "echo kept > /written-by-hand")
        kept = container_id(outputs)
        ssh(outputs, shlex.join(["docker", "stop", CONTAINER]))
        drift = cli.preview()
        assert f"container {CONTAINER} is stopped; up starts it again" in drift.stdout + drift.stderr
        assert "docker:index/container:Container" not in drift.stdout, drift.stdout
        cli.up()
        outputs = cli.outputs()
        assert container_id(outputs) == kept
        assert in_container(outputs, "cat", "/written-by-hand") == "kept"
        assert http_get(http_port, "/env.txt") == GREETING
        assert outputs["innerVmQmpStatus"] == "running"
        assert '"status": "running"' in inner_qmp_status(outputs)

        # The Docker daemon stopped in the VM: it is the lab's own, so up starts it (once)
        # instead of waiting readyTimeoutSeconds for it; the container comes back as it was.
        ssh(outputs, "sudo -n systemctl stop docker docker.socket")
        daemon_started = time.monotonic()
        revived = cli.up()
        print(f"up with the Docker daemon stopped: {time.monotonic() - daemon_started:.0f} s")
        assert "the Docker daemon is inactive in the VM; starting it" in revived.stdout + revived.stderr
        outputs = cli.outputs()
        assert container_id(outputs) == kept
        assert http_get(http_port, "/env.txt") == GREETING
        assert outputs["innerVmQmpStatus"] == "running"

        # A change that replaces the container, onto a VM port another program holds: preview
        # and up stop before the old container is deleted, naming the key and the holder.
        listen = shlex.join(
            [
                "sudo", "-n", "systemd-run", "--unit=nexus-test-listener", "--collect",
                "python3", "-m", "http.server", "--bind", "127.0.0.1", str(TAKEN_PORT),
            ]
        )  # fmt: skip
        listening = f"ss -ltn | grep -q ':{TAKEN_PORT} '"
        ssh(outputs, f"{listen} && for i in $(seq 1 60); do {listening} && exit 0; sleep 1; done; exit 1")
        cli.set_config("nexus:playground.ports[1].vm", str(TAKEN_PORT))
        cli.set_config("nexus:playground.ports[1].container", str(TAKEN_PORT))
        for refused in (cli.run("preview", *cli.stack_args(), check=False), cli.up(check=False)):
            message = refused.stdout + refused.stderr
            assert refused.returncode != 0, message
            assert (
                f"nexus:playground.ports[1].vm: VM port {TAKEN_PORT}/tcp is in use by python3 (pid" in message
            )
            assert "the current one is left as it is" in message, message
        assert container_id(outputs) == kept
        assert http_get(http_port, "/env.txt") == GREETING
        cli.run("config", "rm", "--path", "nexus:playground.ports[1]", *cli.stack_args())
        ssh(outputs, "sudo -n systemctl stop nexus-test-listener")

        # A corrupt image archive: up stops at `docker load` with one error naming the key,
        # the container is kept, nothing is left in the VM, and switching back changes nothing.
        corrupt = tmp_path / "corrupt-image.tar"
        corrupt.write_bytes(b"not a docker save archive\n" * 4096)
        cli.run("config", "rm", "--path", "nexus:playground.rootfsTarball", *cli.stack_args())
        cli.set_config("nexus:playground.imageTarball", str(corrupt))
        failed = cli.up(check=False)
        message = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "playground: could not load nexus:playground.imageTarball" in message, message
        assert "command: docker load --quiet" in message and "not a valid repository/tag" not in message, (
            message
        )
        assert container_id(outputs) == kept
        assert http_get(http_port, "/env.txt") == GREETING
        assert ssh(outputs, "ls -A /var/tmp | grep -c nexus || true") == "0"
        cli.run("config", "rm", "--path", "nexus:playground.imageTarball", *cli.stack_args())
        cli.set_config("nexus:playground.rootfsTarball", str(rootfs_tarball))
        heals = cli.heals
        back = cli.up()
        if cli.heals == heals:
            for verb in ("created", "updated", "deleted", "replaced"):
                assert verb not in back.stdout, back.stdout
            assert container_id(outputs) == kept
        assert ssh(outputs, "ls -A /var/tmp | grep -c nexus || true") == "0"

        # The VM's disk file deleted by hand: up starts the VM on a new disk, and what was
        # stored on the old one (the imported image, the container, its volume, the inner
        # VM) is made again there, not taken as still present.
        vm_pid = cli.outputs()["vmPid"]
        ssh(outputs, "echo old-disk > /home/nexus/marker && sync")
        VmPaths(state_dir).overlay_disk.unlink()
        assert "replace" in cli.preview().stdout
        cli.up()
        outputs = cli.outputs()
        assert outputs["vmPid"] != vm_pid and running(outputs["vmPid"])
        assert not running(vm_pid)
        vm_pid = outputs["vmPid"]
        assert VmPaths(state_dir).overlay_disk.is_file()
        assert ssh(outputs, "cat /home/nexus/marker 2>/dev/null || echo none") == "none"
        assert http_get(http_port, "/env.txt") == GREETING
        assert outputs["innerVmQmpStatus"] == "running"
        assert '"status": "running"' in inner_qmp_status(outputs)

        # A kernel that is not there: the failing inner-VM step names its layer, command and
        # output; the layers below keep running, and the right kernel starts it again.
        # (The running inner VM is powered off first: its userspace must be up to hear the
        # power button, or the step waits out powerdownTimeoutSeconds.)
        assert INNER_USERSPACE_MARKER in wait_for_serial(outputs, INNER_USERSPACE_MARKER, 300)
        cli.set_config("nexus:innerVm.kernel", "/opt/nexus/no such vmlinuz")
        failed = cli.up(check=False)
        message = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "inner VM: could not start QEMU in the container nexus-playground" in message, message
        assert "no such vmlinuz" in message and "command: docker exec nexus-playground" in message, message
        assert http_get(http_port, "/env.txt") == GREETING
        assert running(vm_pid)
        cli.set_config("nexus:innerVm.kernel", INNER_KERNEL)
        cli.up()
        outputs = cli.outputs()
        assert outputs["innerVmQmpStatus"] == "running"
        vm_pid = outputs["vmPid"]  # a VM healed by an up above runs as a new process

        # The inner VM turned off: its QEMU powers off and the rest runs on. The steps below
        # replace the container; they run on the busybox playground (a hundredth of the size:
        # each import, push and pull of the full one costs minutes under TCG), so that switch
        # is a replace of the image and the container too.
        # (Its userspace must be up to hear the power button.)
        assert INNER_USERSPACE_MARKER in wait_for_serial(outputs, INNER_USERSPACE_MARKER, 300)
        cli.set_config("nexus:innerVm.enabled", "false")
        cli.set_config("nexus:playground.rootfsTarball", str(ensure_busybox_rootfs()))
        heals = cli.heals
        turned_off = cli.up()
        assert "[inner-vm] powered off" in turned_off.stdout + turned_off.stderr, turned_off.stdout
        outputs = cli.outputs()
        assert "innerVmQmpStatus" not in outputs, outputs
        if cli.heals == heals:
            assert outputs["vmPid"] == vm_pid, "the VM runs on"
        vm_pid = outputs["vmPid"]
        assert http_get(http_port, "/env.txt") == GREETING
        assert (
            in_container(outputs, "sh", "-c", "test -e /usr/bin/qemu-system-x86_64 || echo busybox")
            == "busybox"
        )

        # An up killed after docker made the container but before Pulumi saved it: the
        # state lacks the container (and what depends on it) while the VM holds it. The
        # next up removes that leftover instead of failing on its name.
        forget_container(cli, tmp_path)
        leftover = container_id(outputs)
        recovered = cli.up()
        assert (
            f"removing container {CONTAINER} ({leftover[:12]}), left by an interrupted run"
            in recovered.stdout
        ), recovered.stdout
        outputs = cli.outputs()
        assert container_id(outputs) != leftover
        assert http_get(http_port, "/env.txt") == GREETING
        # A container of that name the user made is never removed: up stops and says so.
        forget_container(cli, tmp_path)
        image = outputs["playgroundImageDigest"]
        remove = shlex.join(["docker", "rm", "--force", CONTAINER])
        create = shlex.join(["docker", "create", "--name", CONTAINER, image, "true"])
        users = ssh(outputs, f"{remove} >/dev/null && {create}")
        clash = cli.up(check=False)
        message = clash.stdout + clash.stderr
        assert clash.returncode != 0
        assert f"the VM already has a container named {CONTAINER} ({users[:12]})" in message, message
        assert "nexus:playground.name" in message, message
        assert container_id(outputs) == users
        ssh(outputs, shlex.join(["docker", "rm", CONTAINER]))
        cli.up()
        assert http_get(http_port, "/env.txt") == GREETING

        # Growing the disk reaches the file system: df shows it, not just lsblk.
        before = int(ssh(outputs, "df -B1 --output=size / | tail -n 1"))
        cli.set_config("nexus:vm.diskSize", "12G")
        heals = cli.heals
        cli.up()
        after = int(ssh(outputs, "df -B1 --output=size / | tail -n 1"))
        assert after > before + (1 << 30), (before, after)
        if cli.heals == heals:
            assert cli.outputs()["vmPid"] == vm_pid, "the disk grows without a restart"

        # An image reference, pulled from a registry we run ourselves in the VM: push the
        # imported image there, then switch the source to its reference.
        reference = f"localhost:{REGISTRY_PORT}/nexus/playground:1"
        imported = cli.outputs()["playgroundImageDigest"]
        ssh(outputs, start_registry())
        push = f"docker tag {shlex.quote(imported)} {reference} && docker push -q {reference}"
        ssh(outputs, f"for i in $(seq 1 30); do {push} && exit 0; sleep 3; done; exit 1", timeout=300)
        cli.run("config", "rm", "--path", "nexus:playground.rootfsTarball", *cli.stack_args())
        cli.set_config("nexus:playground.image", reference)
        cli.up()
        outputs = cli.outputs()
        assert outputs["playgroundImageDigest"].startswith(f"{reference.rsplit(':', 1)[0]}@sha256:"), outputs
        assert http_get(http_port, "/env.txt") == GREETING

        # A build context on the host, built in the VM; a changed file rebuilds.
        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {reference}\nCOPY built.html /srv/www/built.html\n")
        (context / "built.html").write_text("first build")
        cli.run("config", "rm", "--path", "nexus:playground.image", *cli.stack_args())
        cli.set_config("nexus:playground.buildContext", str(context))
        cli.up()
        assert http_get(http_port, "/built.html") == "first build"
        (context / "built.html").write_text("second build")
        cli.up()
        assert http_get(http_port, "/built.html") == "second build"

    finally:
        destroyed = cli.destroy(check=False)

    output = destroyed.stdout + destroyed.stderr
    assert destroyed.returncode == 0, output
    # (A destroy with the inner VM running, inside out, is test_mounts'.)
    assert vm_pid and gone_within(vm_pid, 10) and not running(vm_pid)
    assert qemu_processes_of(state_dir) == []
    assert nothing_listens(ssh_port) and nothing_listens(http_port)
    assert not state_dir.exists()
    assert cli.resources() == []


@pytest.fixture(scope="module")
def image_tarball() -> Path:
    return ensure_playground_image_tarball()


def test_a_vm_that_hangs_is_restarted_by_up_and_powered_off_by_destroy(
    tmp_path: Path, guest_image_url: str, rootfs_tarball: Path, image_tarball: Path
) -> None:
    """A frozen VM (SIGSTOP: its SSH and QMP accept connections but never answer), as a
    guest whose kernel hangs looks from the host. `up` power-cycles it on the same disk and
    the container comes back; frozen again, it must not keep destroy from removing the
    stack: nothing stored on the VM's disk needs SSH to go. No inner VM here (the lifecycle
    test restarts one with its VM): two nested boots would double this test's time."""
    ssh_port, http_port = free_port(), free_port()
    cli: PulumiCli = lab_stack(tmp_path, "hang")
    config = guest_config(tmp_path, guest_image_url, rootfs_tarball, ssh_port, http_port)
    config["nexus:innerVm"] = {"enabled": False}
    cli.init(config)
    state_dir = tmp_path / "state"
    # This stack's image comes as an image archive (`docker save` format): `docker load`.
    cli.run("config", "rm", "--path", "nexus:playground.rootfsTarball", *cli.stack_args())
    cli.set_config("nexus:playground.imageTarball", str(image_tarball))
    frozen: list[int] = []
    try:
        cli.up()
        outputs = cli.outputs()
        assert http_get(http_port, "/env.txt") == GREETING
        loaded = ssh(
            outputs, shlex.join(["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE_TARBALL_TAG])
        )
        assert outputs["playgroundImageDigest"] == loaded, (outputs["playgroundImageDigest"], loaded)
        # Synced: a frozen guest is killed, and its page cache dies with it.
        ssh(outputs, "echo kept > /home/nexus/marker && sync")

        frozen.append(outputs["vmPid"])
        os.kill(frozen[-1], signal.SIGSTOP)
        healed = cli.up(heal=False)  # one up must do it
        assert "the guest does not answer on SSH (it hangs)" in healed.stdout + healed.stderr, healed.stdout
        outputs = cli.outputs()
        assert outputs["vmPid"] != frozen[-1] and gone_within(frozen[-1], 10)
        assert ssh(outputs, "cat /home/nexus/marker") == "kept", "restarted on the same disk"
        assert http_get(http_port, "/env.txt") == GREETING

        frozen.append(outputs["vmPid"])
        os.kill(frozen[-1], signal.SIGSTOP)
    finally:
        destroyed = cli.destroy(check=False)
        for pid in frozen:
            if running(pid):
                os.kill(pid, signal.SIGKILL)

    output = destroyed.stdout + destroyed.stderr
    assert destroyed.returncode == 0, output
    # Nothing on the VM's disk needs SSH to go: its QEMU is stopped without asking the guest.
    assert "does not answer on its control socket (QMP); stopping it" in output, output
    assert all(gone_within(pid, 10) for pid in frozen)
    assert qemu_processes_of(state_dir) == []
    assert nothing_listens(ssh_port) and nothing_listens(http_port)
    assert not state_dir.exists()
    assert cli.resources() == []

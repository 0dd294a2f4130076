"""The real thing: the project's own program through the real engine, on a real VM.

A small Debian cloud image is built locally (tests/support/test_image.py), served over
HTTP with a SHA256SUMS file, and a throwaway stack boots it under TCG. One VM lives
through the whole lifecycle a developer goes through, in order:

    preview -> up -> ssh -> no-op up -> grow disk -> change memory -> kill -9 -> up -> destroy

The tests marked only `engine` stop before a guest boots (a blank 1 GiB qcow2 stands in
for the image): what must fail at preview, or before the VM's own resources, and how a
provider's error reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_components.core.ssh import SshTarget
from tests.support.debian_image import IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.processes import processes_where, pulumi_programs_in, running
from tests.support.pulumi_cli import REPO, PulumiCli, project_view

pytestmark = [pytest.mark.engine]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def image_url() -> Iterator[str]:
    with serving(ensure_test_image(), IMAGE_NAME) as url:
        yield url


def lab_stack(tmp_path: Path, name: str) -> PulumiCli:
    project = project_view(tmp_path / "project")
    return PulumiCli(
        project_dir=project,
        backend_dir=tmp_path / "backend",
        stack=name,
        config_file=project / f"Pulumi.{name}.yaml",
    )


def lab_config(
    tmp_path: Path, image_url: str, ssh_port: int, http_port: int, **sections: dict[str, Any]
) -> dict[str, Any]:
    """The e2e stacks' settings; `sections` (vm=..., playground=...) update a `nexus:` key's."""
    config: dict[str, dict[str, Any]] = {
        "nexus:image": {"url": image_url},
        "nexus:vm": {
            "accelerator": "tcg",
            "cpus": 2,
            "memoryMiB": 1024,
            "diskSize": "4G",
            "bootTimeoutSeconds": 600,
        },
        "nexus:network": {"sshPort": ssh_port, "forwards": [{"host": http_port, "guest": 80}]},
        # Package installs take minutes under TCG; the seed's package list is unit-tested.
        "nexus:guest": {"username": "nexus", "installPackages": False},
        "nexus:paths": {"stateDir": str(tmp_path / "state"), "cacheDir": str(tmp_path / "cache")},
        # The base test image has no Docker; the guest layers have their own test.
        "nexus:playground": {"enabled": False},
    }
    for section, values in sections.items():
        config[f"nexus:{section}"] = {**config.get(f"nexus:{section}", {}), **values}
    return config


def ssh(outputs: dict[str, Any], command: str, *, timeout: float = 120) -> str:
    """Run one shell line in the VM as the stack's user, the way a user's ssh would."""
    target = SshTarget("127.0.0.1", int(outputs["sshPort"]), "nexus", Path(outputs["privateKeyPath"]))
    argv = [*target.argv(connect_timeout=30), command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"ssh {command!r} failed: {result.stderr}"
    return result.stdout.strip()


def qemu_processes_of(state_dir: Path) -> list[int]:
    """Every live process whose command line mentions the stack's state directory."""
    return processes_where(
        lambda proc: str(state_dir).encode() in (proc / "cmdline").read_bytes() and running(int(proc.name))
    )


def mem_total_kib(outputs: dict[str, Any]) -> int:
    line = ssh(outputs, "grep MemTotal /proc/meminfo")
    return int(re.findall(r"\d+", line)[0])


@pytest.mark.vm
def test_bad_config_fails_before_anything_is_made(tmp_path: Path, image_url: str) -> None:
    cli = lab_stack(tmp_path, "bad")
    config = lab_config(tmp_path, image_url, free_port(), free_port())
    config["nexus:vm"]["memoryMiB"] = 64
    config["nexus:network"]["sshPort"] = 70000
    cli.init(config)
    result = cli.run("preview", *cli.stack_args(), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "nexus:vm.memoryMiB: got 64" in output
    assert "nexus:network.sshPort: got 70000" in output
    assert "Traceback" not in output
    up = cli.up(check=False)
    assert up.returncode != 0
    assert not (tmp_path / "state").exists()
    assert [r["type"] for r in cli.resources()] in ([], ["pulumi:pulumi:Stack"])


def start_up(cli: PulumiCli, **popen: Any) -> subprocess.Popen[str]:
    """`pulumi up` in the background, as a user's terminal runs it."""
    argv = ["pulumi", "up", *cli.stack_args(), "--yes", "--skip-preview", "--non-interactive"]
    return subprocess.Popen(argv, cwd=cli.project_dir, env=cli.env(), text=True, **popen)


def wait_until_qemu_runs(up: subprocess.Popen[str], state_dir: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not qemu_processes_of(state_dir):
        assert up.poll() is None and time.monotonic() < deadline, "QEMU never started"
        time.sleep(0.5)


@pytest.mark.vm
def test_boot_timeout_shows_the_serial_console_and_leaves_no_vm(tmp_path: Path, image_url: str) -> None:
    cli = lab_stack(tmp_path, "slow")
    config = lab_config(tmp_path, image_url, free_port(), free_port())
    config["nexus:vm"]["bootTimeoutSeconds"] = 30  # a TCG boot takes about 45 s here
    cli.init(config)
    state_dir = tmp_path / "state"

    result = cli.up(check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the VM was not ready within 30 s" in output, output
    assert "last lines of the serial console" in output
    assert "raise nexus:vm.bootTimeoutSeconds" in output
    # The engine prints a provider's traceback; ours is cut to the message itself.
    assert "vm_process.py" not in output, output
    assert "Traceback" not in output, output
    tail = output[output.index("last lines of the serial console") :]
    assert "\x1b" not in tail and "\n\n\n" not in tail, "escape codes and blank runs are stripped"
    assert qemu_processes_of(state_dir) == [], "a VM that never became ready is not left running"

    cli.destroy()
    assert not state_dir.exists()
    assert cli.resources() == []


@pytest.mark.vm
def test_a_program_interrupted_mid_run_prints_no_traceback_and_the_next_up_converges(
    tmp_path: Path, image_url: str
) -> None:
    """The language host sends the program SIGINT when the engine ends a run; that signal
    can land while the program still waits on a registration (CI saw it once, under load)."""
    cli = lab_stack(tmp_path, "sigint")
    cli.init(lab_config(tmp_path, image_url, free_port(), free_port()))
    state_dir = tmp_path / "state"
    up = start_up(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_qemu_runs(up, state_dir)
        programs = pulumi_programs_in(cli.project_dir)
        assert len(programs) == 1, programs
        os.kill(programs[0], signal.SIGINT)
        output, _ = up.communicate(timeout=600)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()

    assert up.returncode != 0
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    # The engine finishes the step in flight: the VM it started is recorded, not orphaned.
    again = cli.up()
    assert "pending operations" not in again.stdout + again.stderr
    outputs = cli.outputs()
    assert qemu_processes_of(state_dir) == [outputs["vmPid"]]
    assert ssh(outputs, "whoami") == "nexus"
    cli.destroy()
    assert qemu_processes_of(state_dir) == [] and not state_dir.exists()


@pytest.mark.vm
def test_lab_lifecycle(tmp_path: Path, image_url: str) -> None:
    ssh_port, http_port = free_port(), free_port()
    cli = lab_stack(tmp_path, "lab")
    cli.init(lab_config(tmp_path, image_url, ssh_port, http_port))
    state_dir, cache_dir = tmp_path / "state", tmp_path / "cache"
    last_pid = 0
    try:
        preview = cli.preview()
        assert "nexus:index:Lab" in preview.stdout, preview.stdout
        for kind in ("StateDir", "BaseImage", "SshKey", "OverlayDisk", "CloudInitSeed", "QemuVm"):
            assert f"nexus:host:{kind}" in preview.stdout, preview.stdout
        assert "to create" in preview.stdout
        assert not state_dir.exists(), "preview must not change anything"

        started = time.monotonic()
        first = cli.up()
        # Progress on the long steps reaches the user while `up` runs.
        assert "[image] downloaded debian-12-nexus-test.qcow2" in first.stdout, first.stdout
        assert "[vm] waiting for cloud-init and SSH" in first.stdout
        # The guest's own signal on the serial console ended the wait, not an SSH poll.
        assert re.search(r"\[vm\] cloud-init finished after \d+ s; checking SSH", first.stdout), first.stdout
        assert "[vm] ready after" in first.stdout
        print(f"first up (download + boot to SSH + cloud-init): {time.monotonic() - started:.0f} s")
        outputs = cli.outputs()
        assert outputs["sshPort"] == ssh_port
        assert outputs["accelerator"] == "tcg"
        assert Path(outputs["privateKeyPath"]).stat().st_mode & 0o777 == 0o600
        assert ssh(outputs, "whoami") == "nexus"
        assert ssh(outputs, "sudo -n true && echo sudo-ok") == "sudo-ok"
        assert ssh(outputs, "cloud-init status").endswith("done")
        assert (state_dir / "connect-ssh.sh").is_file()
        assert (state_dir / "serial.log").stat().st_size > 0
        pid = outputs["vmPid"]
        assert running(pid)
        ssh(outputs, "echo kept > /home/nexus/marker")

        second = cli.up()
        assert "unchanged" in second.stdout and "updated" not in second.stdout, second.stdout

        # Growing the disk resizes it in place while the VM runs.
        cli.set_config("nexus:vm.diskSize", "6G")
        grown = cli.up()
        assert "[vm] grew the root file system to" in grown.stdout, grown.stdout
        assert cli.outputs()["vmPid"] == pid, grown.stdout
        assert ssh(outputs, "lsblk -bdno SIZE /dev/vda") == str(6 << 30)
        # ... and the root file system with it, over SSH, without a restart.
        assert int(ssh(outputs, "df -B1 --output=size / | tail -n 1")) > 5 << 30

        # Shrinking is refused at preview, naming the key.
        cli.set_config("nexus:vm.diskSize", "2G")
        refused = cli.run("preview", *cli.stack_args(), check=False)
        assert refused.returncode != 0
        assert "nexus:vm.diskSize" in refused.stdout + refused.stderr
        cli.set_config("nexus:vm.diskSize", "6G")

        # More memory restarts the VM on the same disk.
        before_kib = mem_total_kib(outputs)
        cli.set_config("nexus:vm.memoryMiB", "1536")
        cli.up()
        outputs = cli.outputs()
        assert outputs["vmPid"] != pid
        assert gone_within(pid, 10)
        assert mem_total_kib(outputs) > before_kib + 400 * 1024
        assert ssh(outputs, "cat /home/nexus/marker") == "kept"

        # A VM killed behind Pulumi's back: preview shows it, up starts it again.
        os.kill(outputs["vmPid"], signal.SIGKILL)
        time.sleep(1)
        drift = cli.preview()
        assert "~ 1 to update" in drift.stdout or "1 to update" in drift.stdout, drift.stdout
        cli.refresh()
        (vm_state,) = [r for r in cli.resources() if r["type"] == "nexus:host:QemuVm"]
        assert vm_state["outputs"]["pid"] == 0, "refresh records that the VM is not running"
        cli.up()
        outputs = cli.outputs()
        assert running(outputs["vmPid"])
        assert ssh(outputs, "cat /home/nexus/marker") == "kept"
        last_pid = outputs["vmPid"]
    finally:
        destroyed = cli.destroy(check=False)

    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert last_pid and gone_within(last_pid, 10)
    assert qemu_processes_of(state_dir) == []
    assert port_is_free(ssh_port) and port_is_free(http_port)
    assert not state_dir.exists()
    assert cli.resources() == []
    cached = list(cache_dir.rglob(IMAGE_NAME))
    assert len(cached) == 1 and cached[0].stat().st_size > 0, "the shared image cache stays"


# --- errors before changes, without booting a guest ------------------------------------------


def blank_stack(tmp_path: Path, image: dict[str, str], name: str, **sections: dict[str, Any]) -> PulumiCli:
    cli = lab_stack(tmp_path, name)
    config = lab_config(tmp_path, image["url"], free_port(), free_port())
    config["nexus:image"] = image
    config["nexus:vm"]["diskSize"] = "2G"
    for section, values in sections.items():
        config[f"nexus:{section}"].update(values)
    cli.init(config)
    return cli


def engine_output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_no_traceback(output: str) -> None:
    for trace in ("Traceback", 'File "', "nexus_components.core.errors", "vm_process.py"):
        assert trace not in output, output


def test_a_provider_error_reads_like_a_config_error(tmp_path: Path, blank_image: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        cli = blank_stack(tmp_path, blank_image, "busy", network={"sshPort": busy})
        result = cli.up(check=False)
    output = engine_output(result)
    assert result.returncode != 0
    assert f"nexus:network.sshPort: host port {busy} on 127.0.0.1 is already in use" in output, output
    assert f"next step: stop what listens there (`lsof -i :{busy}`)" in output
    assert_no_traceback(output)
    cli.destroy()
    assert not (tmp_path / "state").exists()


def test_auto_falling_back_to_tcg_says_so(tmp_path: Path, blank_image: dict[str, str]) -> None:
    from nexus_components.config import load_config
    from nexus_components.host.hostfacts import detect_host

    cli = blank_stack(tmp_path, blank_image, "auto", vm={"accelerator": "auto"})
    output = engine_output(cli.run("preview", *cli.stack_args()))
    chosen = detect_host(
        load_config({"vm": {"accelerator": "auto"}}, stack="x", home=tmp_path).vm
    ).accelerator
    said = "so QEMU emulates the CPU in software (TCG)" in output
    assert said == (chosen == "tcg"), output


@pytest.mark.parametrize("where", ["users-folder", "shared-root", "a-file"])
def test_a_state_dir_that_is_not_the_stacks_is_refused_at_preview(
    tmp_path: Path, blank_image: dict[str, str], where: str
) -> None:
    folder = tmp_path / "my-project"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "serial.log").write_text("my notes\n")
    state_dir = {"users-folder": str(folder), "shared-root": "/tmp", "a-file": str(folder / "serial.log")}[
        where
    ]
    cli = blank_stack(tmp_path, blank_image, "foreign", paths={"stateDir": state_dir})

    for command in (["preview"], ["up", "--yes", "--skip-preview"]):
        result = cli.run(*command, *cli.stack_args(), check=False)
        output = engine_output(result)
        assert result.returncode != 0
        assert "nexus:paths.stateDir:" in output, output
        assert_no_traceback(output)
    assert (folder / "serial.log").read_text() == "my notes\n"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert sorted(p.name for p in folder.iterdir()) == ["serial.log"]
    assert [r["type"] for r in cli.resources()] in ([], ["pulumi:pulumi:Stack"])


def test_a_disk_smaller_than_the_image_fails_before_the_vms_own_resources(
    tmp_path: Path, blank_image: dict[str, str]
) -> None:
    cli = blank_stack(tmp_path, blank_image, "small", vm={"diskSize": "512M"})
    # Not cached yet: only the download can tell, and it comes before the VM's files.
    first = cli.up(check=False)
    output = engine_output(first)
    assert first.returncode != 0
    assert "nexus:vm.diskSize: got '512M', smaller than the base image's own disk size" in output, output
    assert_no_traceback(output)
    assert not (tmp_path / "state").exists()
    made = [r["urn"] for r in cli.resources() if r["type"].startswith("nexus:host:")]
    assert made == [], "nothing of the VM (nor the failed image) is recorded"
    # Cached now: preview itself refuses it.
    preview = cli.run("preview", *cli.stack_args(), check=False)
    assert preview.returncode != 0
    assert "nexus:vm.diskSize: got '512M'" in engine_output(
        preview
    ) and "allowed: at least 1G" in engine_output(preview)
    cli.destroy()


def test_user_data_clashing_with_the_seed_is_refused_at_preview(
    tmp_path: Path, blank_image: dict[str, str]
) -> None:
    cli = blank_stack(tmp_path, blank_image, "userdata", guest={"userData": {"users": "default"}})
    result = cli.run("preview", *cli.stack_args(), check=False)
    output = engine_output(result)
    assert result.returncode != 0
    assert "nexus:guest.userData.users: got 'default' (a str); allowed: a list" in output, output
    assert "extra_user_data" not in output
    assert_no_traceback(output)


def test_destroy_removes_the_parent_directories_up_created(
    tmp_path: Path, blank_image: dict[str, str]
) -> None:
    nested = tmp_path / "labs" / "team" / "state"
    with socket.socket() as holder:  # stops up at QEMU, after every file of the stack is made
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        cli = blank_stack(
            tmp_path,
            blank_image,
            "nested",
            paths={"stateDir": str(nested)},
            network={"sshPort": holder.getsockname()[1]},
        )
        assert cli.up(check=False).returncode != 0
    assert (nested / "disk.qcow2").is_file()
    cli.destroy()
    assert not (tmp_path / "labs").exists()


# --- interrupted up, lost state dir -------------------------------------------------------------


def pending_operations(cli: PulumiCli) -> list[dict[str, Any]]:
    exported = json.loads(cli.run("stack", "export", "--stack", cli.stack).stdout)
    return list(exported["deployment"].get("pending_operations") or [])


def interrupt_twice_while_booting(cli: PulumiCli, state_dir: Path) -> None:
    """Ctrl-C twice, as a terminal sends it: to the whole process group, once QEMU runs."""
    up = start_up(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_qemu_runs(up, state_dir)
        time.sleep(3)
        os.killpg(up.pid, signal.SIGINT)
        time.sleep(1)
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=120)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def scripts_up(cli: PulumiCli, *args: str) -> subprocess.CompletedProcess[str]:
    """The README's `scripts/up`, run in the stack's project view (scripts/ linked in)."""
    return subprocess.run(
        [str(cli.project_dir / "scripts" / "up"), *args],
        cwd=cli.project_dir,
        env={**cli.env(), "NEXUS_SETUP_DONE": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


@pytest.mark.vm
def test_hard_cancelled_up_then_scripts_up_then_lost_state_dir_then_destroy(
    tmp_path: Path, image_url: str
) -> None:
    ssh_port, http_port = free_port(), free_port()
    cli = lab_stack(tmp_path, "cancel")
    (cli.project_dir / "scripts").symlink_to(REPO / "scripts")
    cli.init(lab_config(tmp_path, image_url, ssh_port, http_port))
    state_dir = tmp_path / "state"
    try:
        interrupt_twice_while_booting(cli, state_dir)
        assert [op["type"] for op in pending_operations(cli)] == ["creating"]

        # scripts/up clears what the killed run left and converges to one VM.
        up = scripts_up(cli, cli.stack, "--yes", "--skip-preview", "--non-interactive")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "pending operations" not in up.stdout + up.stderr
        assert "clearing its 1 unfinished create(s)" in up.stderr, up.stderr
        # The guest's signal on the serial console ended the wait, then one SSH check.
        assert re.search(r"\[vm\] cloud-init finished after \d+ s; checking SSH", up.stdout), up.stdout
        assert pending_operations(cli) == []
        outputs = cli.outputs()
        assert qemu_processes_of(state_dir) == [outputs["vmPid"]]
        assert ssh(outputs, "whoami") == "nexus"
        again = cli.up()
        assert "pending operations" not in again.stdout + again.stderr

        # The state directory deleted by hand: destroy still stops the VM it recorded.
        pid = outputs["vmPid"]
        shutil.rmtree(state_dir)
        destroyed = cli.destroy(check=False)
        stopped = gone_within(pid, 10)
    finally:
        for leftover in qemu_processes_of(state_dir):
            os.kill(leftover, signal.SIGKILL)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert stopped, "destroy left the VM running"
    assert port_is_free(ssh_port) and port_is_free(http_port)
    assert cli.resources() == []


def closed_port_url() -> str:
    """An http URL nothing answers: what a machine without internet access meets."""
    return f"http://127.0.0.1:{free_port()}/images/noble-server-cloudimg-amd64.img"


def test_a_failed_download_shows_the_error_and_no_traceback(tmp_path: Path) -> None:
    """The language host signals the program as the engine ends a failed run; where the
    signal lands is a matter of timing, so the failure is repeated."""
    cli = lab_stack(tmp_path, "offline")
    cli.init(lab_config(tmp_path, closed_port_url(), free_port(), free_port()))
    for attempt in range(3):
        result = cli.up(check=False)
        output = engine_output(result)
        assert result.returncode != 0, output
        assert "could not fetch" in output and "SHA256SUMS" in output, output
        assert "next step:" in output and "nexus:image.url" in output, output
        assert "Exception ignored" not in output, f"attempt {attempt + 1}: {output}"
        assert "non-zero exit code" not in output, output
        assert_no_traceback(output)
    cli.destroy()
    assert not (tmp_path / "state").exists()


def test_a_config_error_is_the_only_error(tmp_path: Path) -> None:
    cli = lab_stack(tmp_path, "bad-port")
    config = lab_config(tmp_path, closed_port_url(), free_port(), free_port())
    config["nexus:network"]["sshPort"] = 70000
    cli.init(config)
    result = cli.run("preview", *cli.stack_args(), check=False)
    output = engine_output(result)
    assert result.returncode != 0
    assert "nexus:network.sshPort: got 70000; allowed: at most 65535" in output, output
    assert "non-zero exit code" not in output, output
    assert_no_traceback(output)


def test_scripts_up_with_a_leading_flag_ups_the_default_stack(tmp_path: Path) -> None:
    cli = lab_stack(tmp_path, "linux")  # this host's default stack
    (cli.project_dir / "scripts").symlink_to(REPO / "scripts")
    cli.init(lab_config(tmp_path, closed_port_url(), free_port(), free_port()))
    up = scripts_up(cli, "--yes", "--skip-preview", "--non-interactive")
    output = engine_output(up)
    assert "unknown flag" not in output, output
    # It got as far as the linux stack's image download.
    assert up.returncode != 0 and "could not fetch" in output, output
    cli.destroy()

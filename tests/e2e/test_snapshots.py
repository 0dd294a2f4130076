"""Snapshots of a running lab, for real: `scripts/lab snapshot` on a stack's VM under TCG.

One VM (the small x86_64 test image, no guest layers) lives through:

    up -> save `clean` -> delete one file, write another -> revert: both undone, the same
       QEMU, SSH answers, the guest's clock set, preview shows no changes -> a second revert
       -> bad names, an unknown name, a taken name: refused, nothing changed
       -> delete -> nexus:vm.state suspended: QEMU gone, preview quiet, save refused
       -> running: resumed without a boot, files kept, preview quiet
       -> suspended again -> destroy leaves nothing
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_lab import (
    free_port,
    lab_config,
    lab_stack,
    port_is_free,
    qemu_processes_of,
    ssh,
)
from tests.support.debian_image import IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.pulumi_cli import REPO, PulumiCli

pytestmark = [pytest.mark.engine, pytest.mark.vm]


@pytest.fixture(scope="module")
def image_url() -> Iterator[str]:
    with serving(ensure_test_image(), IMAGE_NAME) as url:
        yield url


def lab(cli: PulumiCli, *args: str) -> subprocess.CompletedProcess[str]:
    """The README's `scripts/lab`, run in the stack's project view (scripts/ linked in)."""
    return subprocess.run(
        [str(cli.project_dir / "scripts" / "lab"), "--stack", cli.stack, *args],
        cwd=cli.project_dir,
        env=cli.env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def lab_ok(cli: PulumiCli, *args: str) -> str:
    result = lab(cli, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout.strip())
    return result.stdout


def lab_refused(cli: PulumiCli, *args: str) -> str:
    result = lab(cli, *args)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def assert_no_changes(cli: PulumiCli) -> None:
    preview = cli.preview()
    for change in ("to create", "to update", "to replace", "to delete"):
        assert change not in preview.stdout, preview.stdout


def suspend(cli: PulumiCli, state_dir: Path) -> None:
    """nexus:vm.state suspended: the running VM saved into its disk, its QEMU gone, preview quiet."""
    cli.set_config("nexus:vm.state", "suspended")
    suspended = cli.up()
    assert "[vm] suspended in" in suspended.stdout, suspended.stdout
    assert qemu_processes_of(state_dir) == [], "the host's memory of the VM is freed"
    assert cli.outputs()["vmPid"] == 0
    assert_no_changes(cli)


def resume(cli: PulumiCli, state_dir: Path, what: str) -> dict[str, Any]:
    """nexus:vm.state running again: resumed (not booted) by one `up`; the stack's outputs."""
    cli.set_config("nexus:vm.state", "running")
    started = time.monotonic()
    resumed = cli.up()
    print(f"resume up, {what}: {time.monotonic() - started:.1f} s")
    assert "[vm] resumed in" in resumed.stdout, resumed.stdout
    outputs = cli.outputs()
    assert qemu_processes_of(state_dir) == [outputs["vmPid"]]
    return outputs


def assert_clock_is_the_hosts(outputs: dict[str, object]) -> None:
    guest = int(ssh(outputs, "date -u +%s"))
    assert abs(guest - time.time()) < 5, f"guest clock {guest}, host {time.time():.0f}"


def test_snapshot_save_revert_delete(tmp_path: Path, image_url: str) -> None:
    cli = lab_stack(tmp_path, "snap")
    (cli.project_dir / "scripts").symlink_to(REPO / "scripts")
    ssh_port, http_port = free_port(), free_port()
    cli.init(lab_config(tmp_path, image_url, ssh_port, http_port))
    state_dir = tmp_path / "state"
    try:
        cli.up()
        outputs = cli.outputs()
        pid = outputs["vmPid"]
        ssh(outputs, "echo saved > /home/nexus/kept")

        saved = lab_ok(cli, "snapshot", "save", "clean")
        assert "saved snapshot 'clean'" in saved and "of VM state" in saved
        listed = lab_ok(cli, "snapshot", "list")
        assert listed.splitlines()[0].split() == ["NAME", "KIND", "VM", "STATE", "TAKEN", "(UTC)"]
        assert listed.splitlines()[1].split()[:2] == ["clean", "live"], listed

        for attempt in (1, 2):
            ssh(outputs, "rm /home/nexus/kept && echo later > /home/nexus/new && sync")
            if attempt == 1:
                time.sleep(10)  # the guest's clock would be this far behind without the resync
            reverted = lab_ok(cli, "snapshot", "revert", "clean")
            assert "reverted the lab to snapshot 'clean'" in reverted
            assert "set the guest's clock" in reverted, reverted
            assert ssh(outputs, "cat /home/nexus/kept") == "saved", f"revert {attempt}"
            assert ssh(outputs, "test -e /home/nexus/new || echo gone") == "gone", f"revert {attempt}"
            assert qemu_processes_of(state_dir) == [pid], "the same QEMU, no reboot"
            assert_clock_is_the_hosts(outputs)
        assert_no_changes(cli)

        # Bad input: refused, naming the value and the rule, nothing changed.
        for bad in ("a b", "x;rm -rf", "-x", "1abc"):
            refused = lab_refused(cli, "snapshot", "save", "--", bad)
            assert f"snapshot name {bad!r} is not allowed; allowed: 1 to 63 characters" in refused, refused
        refused = lab_refused(cli, "snapshot", "revert", "nope")
        assert "no snapshot named 'nope'; the lab has: clean" in refused, refused
        refused = lab_refused(cli, "snapshot", "delete", "nope")
        assert "no snapshot named 'nope'; the lab has: clean" in refused, refused
        refused = lab_refused(cli, "snapshot", "save", "clean")
        assert "a snapshot named 'clean' already exists" in refused and "--replace" in refused, refused
        assert lab_ok(cli, "snapshot", "list") == listed
        assert ssh(outputs, "cat /home/nexus/kept") == "saved"

        assert "deleted snapshot 'clean'" in lab_ok(cli, "snapshot", "delete", "clean")
        assert "no snapshots" in lab_ok(cli, "snapshot", "list")

        # Suspended: the running VM saved into its disk and its QEMU gone; preview is quiet.
        ssh(outputs, "echo written > /home/nexus/before-suspend && sync")
        uptime_before = float(ssh(outputs, "cut -d' ' -f1 /proc/uptime"))
        suspend(cli, state_dir)
        refused = lab_refused(cli, "snapshot", "save", "later")
        assert "the lab's VM is not running" in refused, refused
        assert "_nexus-suspended" in lab_ok(cli, "snapshot", "list")

        # Resumed: no boot (the guest's uptime goes on), the file is there, preview is quiet.
        outputs = resume(cli, state_dir, "VM only")
        assert ssh(outputs, "cat /home/nexus/before-suspend") == "written"
        assert float(ssh(outputs, "cut -d' ' -f1 /proc/uptime")) >= uptime_before, "not a reboot"
        assert_clock_is_the_hosts(outputs)
        assert "no snapshots" in lab_ok(cli, "snapshot", "list"), "the suspended state is dropped"
        assert_no_changes(cli)

        # Destroy of a suspended lab leaves nothing (checked below).
        cli.set_config("nexus:vm.state", "suspended")
        cli.up()
    finally:
        destroyed = cli.destroy(check=False)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert qemu_processes_of(state_dir) == []
    assert port_is_free(ssh_port) and port_is_free(http_port)
    assert not state_dir.exists()
    assert cli.resources() == []

"""scripts/bench-mounts' parts: the stack's shares, the timed commands, and one real run with this
machine standing in for the VM (the same stand-in for ssh as tests/unit/test_copy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.mount_bench import Share, layer_folders, render, run, shares_of, workload_argv
from nexus_components.cli.transfer import Layers
from nexus_components.core.errors import NexusError

FAKE_SSH = ["sh", "-c", 'shift; eval "$1"', "fake-ssh"]


def test_shares_resolve_home_and_project_relative_paths() -> None:
    shares = shares_of(
        [
            {"host": "~/code", "vm": "/srv/code", "container": "/work"},
            {"host": "data", "vm": "/srv/d", "type": "9p"},
        ],
        Path("/home/me"),
        Path("/repo"),
    )
    assert shares == [
        Share(Path("/home/me/code"), "/srv/code", "/work", "auto"),
        Share(Path("/repo/data"), "/srv/d", None, "9p"),
    ]


def test_each_layer_works_in_its_own_view_of_the_bench_folder() -> None:
    share = Share(Path("/h/my code"), "/srv/code", "/work", "9p")
    assert layer_folders(share, ".b") == {
        "host": "/h/my code/.b",
        "vm": "/srv/code/.b",
        "playground": "/work/.b",
    }
    argv = workload_argv("small", "/srv/code/.b", "vm")
    assert argv[-2:] == ["/srv/code/.b/small.tar", "/srv/code/.b/unpacked-vm"]


def test_a_run_measures_both_workloads_and_leaves_the_share_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("untouched")
    share = Share(tmp_path, str(tmp_path), None, "9p")  # the "VM" sees the folder at the same path
    results = run([share], Layers(vm_ssh=FAKE_SSH), size_mib=2, files=30, log=lambda _: None, vm_sudo=False)
    assert [(r.workload, r.layer) for r in results] == [("large", "vm"), ("small", "vm")]
    assert all(r.seconds > 0 and r.host_seconds > 0 for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    table = render(results)
    assert "| large | vm |" in table and "x |" in table


def test_a_workload_that_fails_in_a_layer_is_an_error_not_a_fast_time(tmp_path: Path) -> None:
    share = Share(tmp_path, "/nonexistent/share", None, "9p")  # the "VM" has no such folder
    with pytest.raises(NexusError, match="a workload failed"):
        run([share], Layers(vm_ssh=FAKE_SSH), size_mib=1, files=5, log=lambda _: None, vm_sudo=False)
    assert list(tmp_path.iterdir()) == [], "the bench folder is removed in any case"


def test_the_vm_runs_the_workload_as_root_when_asked() -> None:
    assert workload_argv("large", "/srv/a/.b", "vm", sudo=True)[:2] == ["sudo", "-n"]

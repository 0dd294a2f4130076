"""What an interrupted test run left running is stopped; another run's processes are not."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import leftovers
from tests.support.processes import running

# A process that ignores SIGTERM, as a wedged QEMU or plugin may: only SIGKILL ends it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def spawn(started: list[subprocess.Popen[bytes]], argv: list[str], run: str | None) -> int:
    env = {key: value for key, value in os.environ.items() if key != leftovers.RUN_ENV}
    if run is not None:
        env[leftovers.RUN_ENV] = run
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    started.append(process)
    if argv[-1] == STUBBORN:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process.pid


def test_the_runs_processes_stop_and_no_other(
    tmp_path: Path, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leftovers, "GRACE_SECONDS", 0.5)
    folder = tmp_path / "basetemp"
    marked = spawn(started, ["sleep", "600"], "run-1")
    stubborn = spawn(started, [sys.executable, "-c", STUBBORN], "run-1")
    # Started through the tests' own sshd, say: no mark, but its command line names the folder.
    named = spawn(started, ["sleep", "600", str(folder / "state" / "disk.qcow2")], None)
    other_run = spawn(started, ["sleep", "600"], "run-2")
    unrelated = spawn(started, ["sleep", "600"], None)

    assert leftovers.main(["run-1", str(folder)]) == 0

    for process in started:
        if process.pid in (marked, stubborn, named):
            process.wait(timeout=10)  # reaped here: they are this test's children
    assert not any(running(pid) for pid in (marked, stubborn, named))
    assert all(running(pid) for pid in (other_run, unrelated))


def test_nothing_left_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert leftovers.main(["no-such-run"]) == 0
    assert capsys.readouterr().err == ""

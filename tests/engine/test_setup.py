"""scripts/setup re-runs: what `scripts/up` (plain setup) and `scripts/test` (--dev) run first."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.pulumi_cli import REPO

pytestmark = pytest.mark.engine


def setup(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(REPO / "scripts" / "setup"), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def test_plain_and_dev_setup_reuse_each_others_venv() -> None:
    setup("--dev")
    # `scripts/up` after `scripts/test`: the dev install already holds the runtime set.
    plain = setup()
    assert "installing" not in plain.stderr and "creating .venv" not in plain.stderr, plain.stderr
    again = setup("--dev")
    assert "installing" not in again.stderr and "creating .venv" not in again.stderr, again.stderr


def test_an_unknown_option_is_refused_by_name() -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "setup"), "--fast"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "unknown option --fast" in result.stderr

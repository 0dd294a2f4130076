"""scripts/setup re-runs: what `scripts/up` (plain setup) and `scripts/test` (--dev) run first."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.pulumi_cli import REPO, toolchain_bin

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


def test_langs_says_which_ways_it_tried_for_a_language_host_it_cannot_get(tmp_path: Path) -> None:
    """A `pulumi` of the pinned version without the Node.js host beside it, no reachable
    get.pulumi.com (a proxy that refuses), and a wrong source tarball: setup stops and says
    what it tried, before anything is built."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("pulumi", "pulumi-language-python"):
        shutil.copy2(toolchain_bin() / name, bin_dir / name)
    wrong_tarball = tmp_path / "pulumi-language-nodejs-src.tar.gz"
    wrong_tarball.write_bytes(b"not the source release")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "NEXUS_CACHE_DIR": str(tmp_path / "cache"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NEXUS_PULUMI_NODEJS_HOST_SRC": str(wrong_tarball),
    }
    result = subprocess.run(
        [str(REPO / "scripts" / "setup"), "--langs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "the Pulumi nodejs language host (TypeScript/YAML programs) could not be obtained" in result.stderr
    assert f"1. beside {bin_dir}/pulumi: not there" in result.stderr
    assert "2. the official installer: get.pulumi.com is unreachable" in result.stderr
    assert (
        f"3. a build from source: NEXUS_PULUMI_NODEJS_HOST_SRC={wrong_tarball}: sha256 is not"
        in result.stderr
    )
    assert sorted(path.name for path in bin_dir.iterdir()) == ["pulumi", "pulumi-language-python"]

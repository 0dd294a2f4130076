"""scripts/pulumi and the passphrase that encrypts a local stack's secrets (the VM's SSH key).

Each test runs the real scripts/pulumi and Pulumi CLI with a HOME of its own, so the
passphrase file and the default file backend it makes are the test's.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.pulumi_cli import REPO, project_view

pytestmark = pytest.mark.engine

SECRET = "stand-in for the VM's private SSH key"


def scripts_pulumi(home: Path, project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PULUMI_CONFIG_PASSPHRASE") and key != "PULUMI_BACKEND_URL"
    }
    environment.update(
        HOME=str(home),
        # The toolchain scripts/setup cached for the real user.
        NEXUS_CACHE_DIR=os.environ.get("NEXUS_CACHE_DIR", str(Path.home() / ".cache" / "nexus-nested-vm")),
        PULUMI_HOME=str(Path.home() / ".pulumi"),
        **env,
    )
    return subprocess.run(
        [str(project / "scripts" / "pulumi"), *args, "--non-interactive"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def store_secret(home: Path, project: Path, **env: str) -> None:
    stored = scripts_pulumi(
        home, project, "config", "set", "--secret", "probe", SECRET, "--stack", "linux", **env
    )
    assert stored.returncode == 0, stored.stderr


def read_secret(home: Path, project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return scripts_pulumi(home, project, "config", "get", "probe", "--stack", "linux", **env)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    view = project_view(tmp_path / "project")
    (view / "scripts").symlink_to(REPO / "scripts")
    # The checkout's Pulumi.yaml: its file backend under HOME.
    (view / "Pulumi.yaml").unlink()
    (view / "Pulumi.yaml").symlink_to(REPO / "Pulumi.yaml")
    (view / "stacks").mkdir()
    return view


def test_a_new_user_gets_a_private_random_passphrase(tmp_path: Path, project: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    made = scripts_pulumi(home, project, "stack", "init", "linux")
    assert made.returncode == 0, made.stderr
    passphrase = home / ".nexus-nested-vm" / "passphrase"
    assert f"made a passphrase for your stacks' secrets in {passphrase}" in made.stderr
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    chosen = passphrase.read_text()
    assert len(chosen) >= 32
    store_secret(home, project)
    # The same file is used again: the secret reads back.
    shown = read_secret(home, project)
    assert shown.stdout.strip() == SECRET, shown.stderr
    assert passphrase.read_text() == chosen
    # Without the passphrase the secret cannot be read: an empty one, the old default, fails.
    empty = read_secret(home, project, PULUMI_CONFIG_PASSPHRASE="")
    assert empty.returncode != 0 and SECRET not in empty.stdout
    assert "passphrase" in empty.stderr.lower(), empty.stderr


def test_a_passphrase_of_your_own_is_used_and_no_file_is_made(tmp_path: Path, project: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    made = scripts_pulumi(home, project, "stack", "init", "linux", PULUMI_CONFIG_PASSPHRASE="mine")
    assert made.returncode == 0, made.stderr
    assert not (home / ".nexus-nested-vm" / "passphrase").exists()
    store_secret(home, project, PULUMI_CONFIG_PASSPHRASE="mine")
    shown = read_secret(home, project, PULUMI_CONFIG_PASSPHRASE="mine")
    assert shown.stdout.strip() == SECRET, shown.stderr


def test_stacks_made_with_the_old_empty_passphrase_keep_working(tmp_path: Path, project: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    old = scripts_pulumi(home, project, "stack", "init", "linux", PULUMI_CONFIG_PASSPHRASE="")
    assert old.returncode == 0, old.stderr
    store_secret(home, project, PULUMI_CONFIG_PASSPHRASE="")
    # The next run without a passphrase of the user's: no new file would open these stacks.
    shown = read_secret(home, project)
    assert shown.returncode == 0 and shown.stdout.strip() == SECRET, shown.stderr
    assert not (home / ".nexus-nested-vm" / "passphrase").exists()
    assert "use an empty passphrase" in shown.stderr

"""Drives the real Pulumi CLI (installed by scripts/setup) for engine-level tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nexus_components.core.ssh import SshTarget
from nexus_components.host.vm_process import guest_hangs

REPO = Path(__file__).resolve().parents[2]
# Every up of this test run that healed a hung VM (see PulumiCli.up): tests/conftest.py
# reports them at the end of the run, so a heal that hides a regression shows.
HEALS: list[str] = []


def project_view(dest: Path) -> Path:
    """The project's program in a scratch directory, so that stack files Pulumi writes
    (`stack init` puts an encryption salt in Pulumi.<stack>.yaml) land there, not in
    the checkout's stacks/."""
    dest.mkdir(parents=True)
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    for checkout_only in ("stackConfigDir", "backend"):
        project.pop(checkout_only, None)
    (dest / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    # The program, its modules, the .venv (with the generated SDK) and the plugin that
    # Pulumi.yaml's `plugins.providers` names (a path relative to the project).
    for name in ("__main__.py", "nexus_components", "nexus_provider", ".venv"):
        (dest / name).symlink_to(REPO / name)
    return dest


def cache_root() -> Path:
    """Where scripts/setup keeps the toolchain and the images (NEXUS_CACHE_DIR moves it)."""
    return Path(os.environ.get("NEXUS_CACHE_DIR", Path.home() / ".cache" / "nexus-nested-vm"))


def toolchain_bin() -> Path:
    marker = cache_root() / "toolchain-bin"
    if not marker.is_file():
        raise RuntimeError(f"{marker} is missing: run scripts/setup --dev first")
    return Path(marker.read_text().strip())


def installed_plugins_dir() -> Path:
    """Where scripts/setup installed the `command` and `docker` plugins."""
    return Path(os.environ.get("PULUMI_HOME", Path.home() / ".pulumi")) / "plugins"


def failure(result: subprocess.CompletedProcess[str]) -> AssertionError:
    return AssertionError(
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


@dataclass
class PulumiCli:
    """One project directory, a throwaway file backend, one stack, its own config file."""

    project_dir: Path
    backend_dir: Path
    stack: str
    config_file: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    # Another backend than the file one in backend_dir, e.g. an s3:// bucket several users
    # share; backend_dir then holds this user's PULUMI_HOME alone.
    backend_url: str | None = None
    # The VM's SSH, for stacks that start a nested KVM guest inside a TCG VM: on some
    # hosts that guest stalls the VM now and then (QEMU's nested SVM under TCG), which is
    # not what a test is about. Then a failed `up` is run once more, as a user would, and
    # must heal the VM (see `up`).
    guest: SshTarget | None = None
    # How many ups were run twice to heal a hung VM: the VM then has a new process, so a
    # test's "no restart" or "nothing changed" claim holds only when this did not move.
    heals: int = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PATH=f"{toolchain_bin()}{os.pathsep}{env['PATH']}",
            PULUMI_BACKEND_URL=self.backend_url or self.backend_dir.as_uri(),
            PULUMI_CONFIG_PASSPHRASE="nexus-tests",
            PULUMI_SKIP_UPDATE_CHECK="true",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
            PULUMI_HOME=str(self.pulumi_home()),
        )
        env.update(self.extra_env)
        return env

    def pulumi_home(self) -> Path:
        """A throwaway PULUMI_HOME that shares the provider plugins scripts/setup installed."""
        home = self.backend_dir / ".pulumi-home"
        if not (home / "plugins").exists():
            home.mkdir(parents=True, exist_ok=True)
            (home / "plugins").symlink_to(installed_plugins_dir(), target_is_directory=True)
        return home

    def run(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        argv = ["pulumi", *args, "--non-interactive"]
        result = subprocess.run(
            argv,
            cwd=self.project_dir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise failure(result)
        return result

    def stack_args(self) -> list[str]:
        return ["--stack", self.stack, "--config-file", str(self.config_file)]

    def init(self, config: dict[str, Any]) -> None:
        self.backend_dir.mkdir(parents=True, exist_ok=True)
        self.run("stack", "init", self.stack)
        # Keep what `stack init` wrote there (the passphrase's salt) beside the config.
        settings = yaml.safe_load(self.config_file.read_text()) if self.config_file.exists() else None
        self.config_file.write_text(yaml.safe_dump({**(settings or {}), "config": config}))

    def preview(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("preview", *self.stack_args(), "--diff", *extra)

    def up(self, *extra: str, check: bool = True, heal: bool = True) -> subprocess.CompletedProcess[str]:
        """`pulumi up`. With `check` and `guest`, an up that failed while the VM hangs (by
        the same check `up` makes, vm_process.guest_hangs) is run once more: that second up
        must restart the VM and converge, or the test fails. `heal=False` for a test of the
        healing itself."""
        argv = ["up", *self.stack_args(), "--yes", "--skip-preview", *extra]
        if not (check and heal and self.guest):
            return self.run(*argv, check=check)
        first = self.run(*argv, check=False)
        if first.returncode == 0:
            return first
        if not guest_hangs(self.guest):
            raise failure(first)
        print(
            f"pulumi up failed while the VM hung (SSH on port {self.guest.port} does not answer); "
            f"running up once more to heal it. The failed up said:\n{first.stdout[-3000:]}",
            file=sys.stderr,
        )
        second = self.run(*argv)
        self.heals += 1
        HEALS.append(f"stack {self.stack}: up #{self.heals} healed a VM that hung (port {self.guest.port})")
        # Both ups' output: what the first one created is reported there.
        return subprocess.CompletedProcess(
            second.args, 0, first.stdout + second.stdout, first.stderr + second.stderr
        )

    def refresh(self) -> subprocess.CompletedProcess[str]:
        return self.run("refresh", *self.stack_args(), "--yes", "--skip-preview")

    def destroy(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("destroy", *self.stack_args(), "--yes", "--skip-preview", check=check)

    def outputs(self) -> dict[str, Any]:
        result = self.run("stack", "output", "--json", "--show-secrets", "--stack", self.stack)
        return dict(json.loads(result.stdout))

    def resources(self) -> list[dict[str, Any]]:
        result = self.run("stack", "export", "--stack", self.stack)
        deployment = json.loads(result.stdout)["deployment"]
        return list(deployment.get("resources") or [])

    def set_config(self, path: str, value: str) -> None:
        self.run("config", "set", "--path", path, value, *self.stack_args())


def scratch_program(
    tmp_path: Path, name: str, program: str, extra_env: dict[str, str] | None = None
) -> PulumiCli:
    """A one-file Pulumi program on the project's .venv, with one stack `probe`."""
    project = tmp_path / "project"
    project.mkdir()
    runtime = {"name": "python", "options": {"virtualenv": str(REPO / ".venv")}}
    (project / "Pulumi.yaml").write_text(yaml.safe_dump({"name": name, "runtime": runtime}, sort_keys=False))
    (project / "__main__.py").write_text(program)
    return PulumiCli(
        project_dir=project,
        backend_dir=tmp_path / "backend",
        stack="probe",
        config_file=project / "Pulumi.probe.yaml",
        extra_env=extra_env or {},
    )

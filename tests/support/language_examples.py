"""The README's TypeScript and YAML examples (examples/), run as another team would run them.

Each example is copied outside this repository, gets its dependencies (`npm install` for
TypeScript) and the package (`pulumi package add` of this checkout's plugin), and runs
through the real CLI with the language hosts scripts/setup put beside it. Its stacks run
with a throwaway HOME (short_home), so the lab's default directories (`~/.nexus-nested-vm/stacks/<stack>`,
`~/.cache/nexus-nested-vm/images`) are the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nexus_provider import VERSION
from tests.support.nexus_consumer import LAUNCHER, output_of
from tests.support.pulumi_cli import REPO, PulumiCli, toolchain_bin

EXAMPLES = REPO / "examples"
# What the engine warns on every run when a language host is not beside the `pulumi` binary.
AMBIENT_HOST_WARNING = "from $PATH"
# Everything a user's copy of an example does not have yet (what .gitignore leaves out).
NOT_COPIED = shutil.ignore_patterns("node_modules", "sdks", "bin", "Pulumi.*.yaml", "package-lock.json")


def ensure_language_hosts() -> None:
    """The Node.js and YAML hosts beside the CLI: `scripts/setup --langs`, which waits for a
    build of them that scripts/test started in the background, or builds them itself."""
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "scripts" / "setup"), "--langs"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    print(f"language hosts ready after {time.monotonic() - started:.0f} s")
    for host in ("pulumi-language-nodejs", "pulumi-language-yaml"):
        assert os.access(toolchain_bin() / host, os.X_OK), host


@dataclass
class Example:
    """One example project outside the repository, with the `nexus` package added."""

    language: str
    project: Path
    pulumi_home: Path
    # Seconds each preparation step took (reported by the tests).
    timings: dict[str, float]

    def stack(self, folder: Path, home: Path, name: str, config: dict[str, Any]) -> PulumiCli:
        """A stack of this example on its own backend in `folder`, run with HOME `home`."""
        cli = PulumiCli(
            project_dir=self.project,
            backend_dir=folder / "backend",
            stack=name,
            config_file=self.project / f"Pulumi.{name}.yaml",
            extra_env={
                "PULUMI_HOME": str(self.pulumi_home),
                "HOME": str(home),
                # npm keeps its cache in the real home, should anything run it.
                "npm_config_cache": str(Path.home() / ".npm"),
            },
        )
        cli.init({f"{self.name()}:{key}": value for key, value in config.items()})
        return cli

    def name(self) -> str:
        return str(yaml.safe_load((self.project / "Pulumi.yaml").read_text())["name"])


@contextmanager
def short_home() -> Iterator[Path]:
    """A throwaway HOME with a short path: the lab's QMP socket in its default state
    directory must fit a Unix socket's path (pytest's tmp_path is too long for that)."""
    home = Path(tempfile.mkdtemp(prefix="nexus-home-", dir="/tmp"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def prepare_example(language: str, folder: Path, pulumi_home: Path) -> Example:
    """Copy examples/<language> into `folder`, install its dependencies, add the package."""
    project = folder / language
    shutil.copytree(EXAMPLES / language, project, ignore=NOT_COPIED)
    assert REPO not in project.parents
    timings: dict[str, float] = {}
    if (project / "package.json").exists():
        timings["npm install"] = timed(["npm", "install", "--no-audit", "--no-fund"], project)
    cli = PulumiCli(
        project_dir=project,
        backend_dir=folder / "backend",
        stack="unused",
        config_file=project / "Pulumi.unused.yaml",
        extra_env={"PULUMI_HOME": str(pulumi_home)},
    )
    started = time.monotonic()
    added = cli.run("package", "add", str(LAUNCHER), timeout=900)
    timings["pulumi package add"] = time.monotonic() - started
    assert "Successfully generated an SDK for the nexus package" in added.stdout, output_of(added)
    assert AMBIENT_HOST_WARNING not in output_of(added), output_of(added)
    if language == "typescript":
        package = json.loads((project / "package.json").read_text())
        assert package["dependencies"]["@pulumi/nexus"] == "file:sdks/nexus", package
    else:
        assert yaml.safe_load((project / "Pulumi.yaml").read_text())["packages"] == {
            "nexus": f"nexus@{VERSION}"
        }
    return Example(language, project, pulumi_home, timings)


def timed(argv: list[str], cwd: Path) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return time.monotonic() - started


def tsc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The example's own TypeScript compiler (node_modules/.bin/tsc), checking types only."""
    return subprocess.run(
        [str(project / "node_modules" / ".bin" / "tsc"), "--noEmit", "--pretty", "false", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

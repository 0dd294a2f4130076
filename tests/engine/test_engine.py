"""The real Pulumi engine, language host and the nexus provider plugin, end to end.

A throwaway project on a temporary file backend declares, through the package's generated
SDK, the nexus:host:StateDir resource, which makes a directory; preview, up, a second up,
refresh and destroy run through the CLI that scripts/setup installed, and the test checks
what each did on disk. The
project's own program, too, where preview alone shows it: a bad stack setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.pulumi_cli import REPO, PulumiCli, project_view, scratch_program, toolchain_bin

pytestmark = pytest.mark.engine

PROGRAM = """
import pulumi
import pulumi_nexus as nexus

target = pulumi.Config().require("target")
made = nexus.host.StateDir("probe", state_dir=target, stack=pulumi.get_stack())
pulumi.export("path", made.id)
"""


@pytest.fixture
def cli(tmp_path: Path) -> PulumiCli:
    return scratch_program(tmp_path, "engine-probe", PROGRAM, extra_env={"PYTHONPATH": str(REPO)})


def pins() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / "toolchain" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_toolchain_is_the_pinned_one(cli: PulumiCli) -> None:
    pinned = pins()
    assert cli.run("version").stdout.strip() == f"v{pinned['PULUMI_VERSION']}"
    for name in ("pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python"):
        assert os.access(toolchain_bin() / name, os.X_OK), name
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert f"pulumi=={pinned['PYTHON_SDK_VERSION']}" in requirements
    assert f"pulumi-command=={pinned['COMMAND_PLUGIN_VERSION']}" in requirements
    assert f"pulumi-docker=={pinned['DOCKER_PLUGIN_VERSION']}" in requirements
    # The language host is built against the CLI's own pkg/v3 and sdk/v3.
    host_mod = (REPO / "toolchain/python-host/go.mod").read_text()
    cli_mod = (REPO / "toolchain/pulumi-cli/go.mod").read_text()
    assert f"pulumi/sdk/v3 v{pinned['PULUMI_VERSION']}" in host_mod
    assert f"pulumi/pkg/v3 v{pinned['PULUMI_VERSION']}" in host_mod
    assert f"pulumi/pkg/v3 v{pinned['PULUMI_VERSION']}" in cli_mod


def test_plugins_are_installed_at_the_pinned_versions(cli: PulumiCli) -> None:
    pinned = pins()
    listed = {
        (plugin["name"], plugin["kind"], plugin["version"])
        for plugin in json.loads(cli.run("plugin", "ls", "--json").stdout)
    }
    assert ("command", "resource", pinned["COMMAND_PLUGIN_VERSION"]) in listed, listed
    assert ("docker", "resource", pinned["DOCKER_PLUGIN_VERSION"]) in listed, listed


def test_the_program_runs_on_the_pinned_language_host(cli: PulumiCli) -> None:
    """`pulumi about` asks the language host for its version and the interpreter it uses."""
    cli.init({"engine-probe:target": "/nonexistent"})
    about = json.loads(cli.run("about", "--json", "--stack", cli.stack).stdout)
    language = next(plugin for plugin in about["plugins"] if plugin["name"] == "python")
    assert language["version"] == pins()["PYTHON_HOST_VERSION"], about["plugins"]
    # Pulumi.yaml's `runtime.options.virtualenv` reaches the host without any shim.
    assert about["runtime"]["executable"].startswith(str(REPO / ".venv")), about["runtime"]


def test_preview_up_noop_refresh_destroy(cli: PulumiCli, tmp_path: Path) -> None:
    target = tmp_path / "made-by-pulumi"
    cli.init({"engine-probe:target": str(target)})

    preview = cli.preview()
    assert "+ 2 to create" in preview.stdout, preview.stdout
    assert "nexus:host:StateDir" in preview.stdout
    assert not target.exists(), "preview must not change anything"

    first = cli.up()
    assert "2 created" in first.stdout, first.stdout
    assert target.is_dir()
    assert cli.outputs()["path"] == str(target)

    second = cli.up()
    assert "2 unchanged" in second.stdout, second.stdout
    assert "created" not in second.stdout.replace("2 unchanged", "")

    refreshed = cli.refresh()
    assert refreshed.returncode == 0
    assert target.is_dir()

    destroyed = cli.destroy()
    assert "2 deleted" in destroyed.stdout, destroyed.stdout
    assert not target.exists()
    assert cli.resources() == []


def test_preview_refuses_a_missing_build_context_naming_the_key_without_a_traceback(tmp_path: Path) -> None:
    """The project's own program: a stack setting that points at nothing on this machine
    stops preview with the key, the value and what is allowed, before anything is made."""
    project = project_view(tmp_path / "project")
    cli = PulumiCli(
        project_dir=project,
        backend_dir=tmp_path / "backend",
        stack="checks",
        config_file=project / "Pulumi.checks.yaml",
    )
    missing = tmp_path / "no-such-context"
    cli.init(
        {
            "nexus:paths": {"stateDir": str(tmp_path / "state"), "cacheDir": str(tmp_path / "cache")},
            "nexus:playground": {"buildContext": str(missing)},
        }
    )
    result = cli.run("preview", *cli.stack_args(), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        f"nexus:playground.buildContext: got '{missing}', which does not exist; "
        "allowed: a directory on this machine with a Dockerfile in it"
    ) in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "state").exists()

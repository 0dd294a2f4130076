"""pulumi-command's real plugin through the real engine: a local.Command, and a
remote.Command plus a remote.CopyToRemote against an OpenSSH server on loopback.

This is the path the guest layers take for one-shot steps and file copies into the VM.
Preview, up, a no-op up, refresh and destroy run through the CLI scripts/setup installed;
the test checks what each did on disk, and that the SSH key never reaches the state in
plain text.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pulumi_cli import PulumiCli, scratch_program
from tests.support.sshd import Sshd, running_sshd

pytestmark = pytest.mark.engine

# Values reach the commands through the environment or shlex.quote, never pasted raw.
PROGRAM = """
import shlex
from pathlib import Path

import pulumi
import pulumi_command as command

config = pulumi.Config()
local_marker = config.require("localMarker")
payload = config.require("payload")
remote_dir = config.require("remoteDir")
key = Path(config.require("keyFile")).read_text()

made_here = command.local.Command(
    "probe-local",
    create='printf "%s" "$CONTENT" > "$MARKER"',
    delete='rm -f "$MARKER"',
    environment={"MARKER": local_marker, "CONTENT": "made by local.Command"},
)

connection = command.remote.ConnectionArgs(
    host="127.0.0.1",
    port=config.require_int("port"),
    user=config.require("user"),
    private_key=pulumi.Output.secret(key),
    dial_error_limit=3,
    per_dial_timeout=5,
)
made_there = command.remote.Command(
    "probe-remote",
    connection=connection,
    create=f"mkdir -p {shlex.quote(remote_dir)} && uname -s > {shlex.quote(remote_dir + '/uname')}",
    delete=f"rm -rf {shlex.quote(remote_dir)}",
)
copied = command.remote.CopyToRemote(
    "probe-copy",
    connection=connection,
    source=pulumi.FileAsset(payload),
    remote_path=remote_dir + "/copied",
    opts=pulumi.ResourceOptions(depends_on=[made_here, made_there]),
)
pulumi.export("remoteStdout", made_there.stdout)
"""

# A space and a `$` in the paths: quoting mistakes would show as files in the wrong place.
AWKWARD = "dir with space $HOME"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with running_sshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
def cli(tmp_path: Path) -> PulumiCli:
    return scratch_program(tmp_path, "command-probe", PROGRAM)


def test_local_and_remote_commands_through_the_engine(cli: PulumiCli, sshd: Sshd, tmp_path: Path) -> None:
    local_marker = tmp_path / AWKWARD / "local-marker"
    local_marker.parent.mkdir()
    payload = tmp_path / AWKWARD / "payload"
    payload.write_text("copied by remote.CopyToRemote")
    remote_dir = tmp_path / "remote" / AWKWARD
    cli.init(
        {
            "command-probe:localMarker": str(local_marker),
            "command-probe:payload": str(payload),
            "command-probe:remoteDir": str(remote_dir),
            "command-probe:keyFile": str(sshd.private_key),
            "command-probe:port": str(sshd.port),
            "command-probe:user": sshd.user,
        }
    )

    preview = cli.preview()
    assert "+ 4 to create" in preview.stdout, preview.stdout
    assert "command:local:Command" in preview.stdout
    assert "command:remote:Command" in preview.stdout
    assert not local_marker.exists(), "preview must not change anything"

    first = cli.up()
    assert "4 created" in first.stdout, first.stdout
    assert local_marker.read_text() == "made by local.Command"
    assert (remote_dir / "uname").read_text().strip() == os.uname().sysname
    assert (remote_dir / "copied").read_text() == "copied by remote.CopyToRemote"

    second = cli.up()
    assert "4 unchanged" in second.stdout, second.stdout

    assert cli.refresh().returncode == 0
    state = cli.run("stack", "export", "--stack", cli.stack).stdout
    assert "OPENSSH PRIVATE KEY" not in state, "the SSH key must be a secret in the state"

    destroyed = cli.destroy()
    assert "4 deleted" in destroyed.stdout, destroyed.stdout
    assert not local_marker.exists()
    assert not remote_dir.exists()
    assert cli.resources() == []

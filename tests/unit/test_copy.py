"""scripts/lab cp: endpoint parsing, the commands' argv, and real copies through the same scripts.

The VM's ssh is stood in for by a shell that parses the remote line exactly as the guest's shell
would (`eval` of the one word ssh sends), so the quoting is tested for real."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nexus_components.cli.copy import copy
from nexus_components.cli.transfer import (
    Endpoint,
    Layers,
    base_name,
    copy_commands,
    in_layer,
    parse_endpoint,
)
from nexus_components.core.errors import NexusError

# What sshd does with the one command word: hands it to the login shell.
FAKE_SSH = ["sh", "-c", 'shift; eval "$1"', "fake-ssh"]
TRICKY = "my $HOME dir; `touch pwned` 'x'"


def test_endpoints_name_a_layer_or_a_host_path() -> None:
    assert parse_endpoint("vm:/srv/a b") == Endpoint("vm", "/srv/a b")
    assert parse_endpoint("playground:/work") == Endpoint("playground", "/work")
    assert parse_endpoint("inner:/tmp/x") == Endpoint("inner", "/tmp/x")
    assert parse_endpoint("./local:file") == Endpoint("host", "./local:file")
    assert parse_endpoint("other:/x") == Endpoint("host", "other:/x")
    with pytest.raises(NexusError, match="no path after vm:"):
        parse_endpoint("vm:")


def test_windows_host_paths_are_host_paths_not_layers() -> None:
    assert parse_endpoint(r"C:\work\project") == Endpoint("host", r"C:\work\project")
    assert base_name(r"C:\work\my project") == "my project"


def test_base_name_ignores_trailing_slashes() -> None:
    assert base_name("/a/b/") == "b" and base_name("b") == "b"


def test_the_commands_are_argv_lists_with_the_paths_as_their_own_words() -> None:
    layers = Layers(
        vm_ssh=["ssh", "u@h"], container="nexus-playground", inner_script="/s/connect-inner-vm.sh"
    )
    send, receive = copy_commands(Endpoint("host", f"/h/{TRICKY}"), Endpoint("playground", "/work"), layers)
    assert send[:3] == ["sh", "-c", send[2]] and send[-1] == f"/h/{TRICKY}"
    assert receive[:3] == ["ssh", "u@h", "--"]
    assert receive[3].startswith("docker exec -i nexus-playground sh -c ")
    inner = in_layer("inner", ["cat", TRICKY], layers)
    assert inner[0] == "/s/connect-inner-vm.sh" and len(inner) == 2


def test_a_layer_that_is_not_up_is_refused() -> None:
    with pytest.raises(NexusError, match="no playground container"):
        in_layer("playground", ["true"], Layers(vm_ssh=["ssh"]))
    with pytest.raises(NexusError, match="no inner VM"):
        in_layer("inner", ["true"], Layers(vm_ssh=["ssh"]))


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_a_folder_with_a_space_and_a_dollar_round_trips_with_its_modes(tmp_path: Path) -> None:
    source = tmp_path / "src" / TRICKY
    (source / "sub dir").mkdir(parents=True)
    (source / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (source / "run.sh").chmod(0o755)
    (source / "sub dir" / "secret $x").write_text("s")
    (source / "sub dir" / "secret $x").chmod(0o600)
    layers = Layers(vm_ssh=FAKE_SSH)
    away = tmp_path / "vm side"
    away.mkdir()
    # In: into an existing folder, the source keeps its name.
    copy(Endpoint("host", str(source)), Endpoint("vm", str(away)), layers)
    assert _tree(away / TRICKY) == _tree(source)
    # Out: to a new name.
    back = tmp_path / "back" / "again"
    copy(Endpoint("vm", str(away / TRICKY)), Endpoint("host", str(back)), layers)
    assert _tree(back) == _tree(source)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert not [p for p in (tmp_path / "back").iterdir() if p.name.startswith(".nexus-cp")]


def test_a_single_file_is_copied_to_a_new_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    os.chmod(tmp_path / "a", 0o640)
    copy(Endpoint("host", str(tmp_path / "a")), Endpoint("vm", str(tmp_path / "b")), Layers(vm_ssh=FAKE_SSH))
    assert (tmp_path / "b").read_text() == "x" and stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o640


def test_a_missing_source_is_reported_naming_it(tmp_path: Path) -> None:
    with pytest.raises(NexusError, match="could not read vm:"):
        copy(Endpoint("vm", str(tmp_path / "nope")), Endpoint("host", str(tmp_path / "x")), Layers(FAKE_SSH))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_the_copy_belongs_to_the_receiving_user_not_the_sender(tmp_path: Path) -> None:
    (tmp_path / "theirs").write_text("x")
    os.chown(tmp_path / "theirs", 1000, 1000)  # as the VM's login user's file would be
    copy(Endpoint("vm", str(tmp_path / "theirs")), Endpoint("host", str(tmp_path / "mine")), Layers(FAKE_SSH))
    assert (tmp_path / "mine").stat().st_uid == os.getuid()

"""Unit tests for nexus_components.core.ssh and nexus_components.host.paths.

Quoting is checked by splitting the generated strings the way the remote shell (or the user's
terminal) would; the key pair, the connect script and the ssh_config block are exercised with
the real ssh-keygen, /bin/sh and `ssh -G` where installed.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from nexus_components.core.errors import ConfigError
from nexus_components.core.ssh import SshTarget, connect_script, generate_key_pair, ssh_config_entry
from nexus_components.host.paths import (
    MAX_MOUNTS,
    STATE_FORMAT,
    StateDirMarker,
    VmPaths,
    check_state_dir,
    make_state_dir,
    remove_stack_files,
)

KEY = Path("/home/lab/.nexus-nested-vm/stacks/lab/ssh/id_ed25519")
TARGET = SshTarget(host="127.0.0.1", port=2222, user="ubuntu", private_key=KEY)
SPACED_TARGET = SshTarget(
    host="127.0.0.1", port=2200, user="ubuntu", private_key=Path("/tmp/my vms/id_ed25519")
)


# --- SshTarget.argv -----------------------------------------------------------------------------


def test_argv_without_command() -> None:
    assert TARGET.argv() == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "ConnectTimeout=10",
        "-i",
        str(KEY),
        "-p",
        "2222",
        "ubuntu@127.0.0.1",
    ]


def test_argv_puts_options_before_destination_and_one_quoted_command_after() -> None:
    command = ["sh", "-c", "echo hi; id", "file with space", "$HOME", "semi;colon"]
    argv = TARGET.argv(command, connect_timeout=3)
    destination = argv.index("ubuntu@127.0.0.1")
    options = argv[1:destination]
    assert set(options[0::2]) == {"-o", "-i", "-p"}
    assert "ConnectTimeout=3" in options
    assert argv[destination + 1 :] == ["--", argv[-1]]
    # The remote sshd hands the one string to the user's shell: it must split back into our words.
    assert shlex.split(argv[-1]) == command


def test_argv_remote_command_is_one_word_per_argument() -> None:
    argv = TARGET.argv(["touch", "/tmp/a b; reboot"])
    assert shlex.split(argv[-1]) == ["touch", "/tmp/a b; reboot"]


def test_interactive_command_round_trips_a_key_path_with_a_space() -> None:
    line = SPACED_TARGET.interactive_command()
    assert shlex.split(line) == [
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-i",
        "/tmp/my vms/id_ed25519",
        "-p",
        "2200",
        "ubuntu@127.0.0.1",
    ]


# --- connect_script and ssh_config_entry --------------------------------------------------------


def test_connect_script_content() -> None:
    script = connect_script(SPACED_TARGET)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[-1] == "exec " + SPACED_TARGET.interactive_command() + ' "$@"'
    assert script.endswith("\n")


def test_connect_script_runs_ssh_with_its_arguments_intact(tmp_path: Path) -> None:
    # A stand-in `ssh` on PATH prints the arguments it got, one per line.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_ssh = bin_dir / "ssh"
    fake_ssh.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    fake_ssh.chmod(0o755)
    script = tmp_path / "connect-ssh.sh"
    script.write_text(connect_script(SPACED_TARGET))
    script.chmod(0o755)

    result = subprocess.run(
        [str(script), "uname -a", "x"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert result.stdout.splitlines() == [
        *shlex.split(SPACED_TARGET.interactive_command())[1:],
        "uname -a",
        "x",
    ]


def test_ssh_config_entry_content() -> None:
    entry = ssh_config_entry("nexus-lab", SPACED_TARGET)
    assert entry.splitlines() == [
        "Host nexus-lab",
        "  HostName 127.0.0.1",
        "  Port 2200",
        "  User ubuntu",
        '  IdentityFile "/tmp/my vms/id_ed25519"',
        "  IdentitiesOnly yes",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  LogLevel ERROR",
    ]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client is not installed")
def test_ssh_reads_the_config_entry(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(ssh_config_entry("nexus-lab", SPACED_TARGET))
    result = subprocess.run(
        ["ssh", "-F", str(config), "-G", "nexus-lab"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    settings: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" ")
        settings.setdefault(name, value)
    assert settings["hostname"] == "127.0.0.1"
    assert settings["port"] == "2200"
    assert settings["user"] == "ubuntu"
    assert settings["identityfile"] == "/tmp/my vms/id_ed25519"
    assert settings["identitiesonly"] == "yes"
    assert settings["stricthostkeychecking"] == "false"
    assert settings["userknownhostsfile"] == "/dev/null"
    assert settings["loglevel"] == "ERROR"


# --- generate_key_pair --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_generate_key_pair_for_real(tmp_path: Path) -> None:
    private = tmp_path / "state dir" / "ssh" / "id_ed25519"
    generate_key_pair(private, "nexus-lab@test")

    public = private.with_name("id_ed25519.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    kind, blob, comment = public.read_text().split()
    assert kind == "ssh-ed25519"
    assert comment == "nexus-lab@test"
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True, timeout=30
    )
    assert derived.stdout.split()[:2] == [kind, blob]


# --- VmPaths ------------------------------------------------------------------------------------


def test_all_files_covers_every_property_naming_a_file(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "vm")
    named = {
        getattr(paths, name)
        for name, member in vars(VmPaths).items()
        if isinstance(member, property) and isinstance(getattr(paths, name), Path)
    }
    dirs = set(paths.all_dirs())
    assert dirs == {paths.state_dir, paths.ssh_dir}
    shares = set(paths.virtiofs_files())
    assert len(shares) == 5 * MAX_MOUNTS and paths.virtiofs_socket(0) in shares
    assert set(paths.all_files()) == (named | shares) - dirs
    assert len(paths.all_files()) == len(set(paths.all_files())) == 18 + 5 * MAX_MOUNTS
    assert set(paths.runtime_files()) <= set(paths.all_files())
    assert all(path.is_relative_to(paths.state_dir) for path in paths.all_files())


def test_qmp_address_is_the_socket_or_localhost_tcp_on_windows(tmp_path: Path) -> None:
    assert VmPaths(tmp_path).qmp_address == str(tmp_path / "qmp.sock")
    assert VmPaths(tmp_path, qmp_tcp_port=4444).qmp_address == ("127.0.0.1", 4444)


def _populate(paths: VmPaths) -> None:
    paths.ssh_dir.mkdir(parents=True)
    for path in paths.all_files():
        if path == paths.qmp_socket:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(str(path))
        else:
            path.write_bytes(b"x")
    assert all(path.exists() for path in paths.all_files())


def test_remove_stack_files_removes_everything(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "vm")
    _populate(paths)
    assert remove_stack_files(paths) == []
    assert not paths.state_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_remove_stack_files_of_a_half_made_stack(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "vm")
    paths.state_dir.mkdir()
    paths.overlay_disk.write_bytes(b"x")
    assert remove_stack_files(paths) == []
    assert not paths.state_dir.exists()


def test_remove_stack_files_twice_is_fine(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "vm")
    assert remove_stack_files(paths) == []
    assert not paths.state_dir.exists()


def test_remove_stack_files_keeps_a_state_dir_with_a_foreign_file(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "vm")
    _populate(paths)
    foreign = paths.state_dir / "notes.txt"
    foreign.write_text("mine")

    assert remove_stack_files(paths) == [paths.state_dir]
    assert foreign.read_text() == "mine"
    assert sorted(p.name for p in paths.state_dir.iterdir()) == ["notes.txt"]
    assert not paths.ssh_dir.exists()


# --- the state directory's marker -------------------------------------------------------------


def test_make_state_dir_creates_parents_privately_and_destroy_removes_exactly_those(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "made" / "by-up" / "state")
    created = make_state_dir(paths, stack="lab")
    assert created == (tmp_path / "made", tmp_path / "made" / "by-up", paths.state_dir)
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in created)
    assert StateDirMarker.read(paths) == StateDirMarker("lab", created)
    paths.overlay_disk.write_bytes(b"x")

    assert remove_stack_files(paths) == []
    assert list(tmp_path.iterdir()) == [], "the parents up created are gone too"


def test_an_empty_directory_the_user_made_is_used_but_neither_chmodded_nor_deleted(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "mine")
    paths.state_dir.mkdir(mode=0o755)
    paths.state_dir.chmod(0o755)
    assert make_state_dir(paths, stack="lab") == ()
    assert stat.S_IMODE(paths.state_dir.stat().st_mode) == 0o755
    paths.serial_log.write_text("boot\n")
    assert remove_stack_files(paths) == []
    assert paths.state_dir.is_dir() and list(paths.state_dir.iterdir()) == []


def test_a_rerun_after_an_interrupted_create_keeps_the_recorded_parents(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "parent" / "state")
    first = make_state_dir(paths, stack="lab")
    assert make_state_dir(paths, stack="lab") == first
    remove_stack_files(paths)
    assert list(tmp_path.iterdir()) == []


def test_a_users_non_empty_directory_is_refused_and_left_untouched(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o755)
    (project / "serial.log").write_text("my own notes\n")
    (project / "README.md").write_text("mine\n")
    paths = VmPaths(project)
    with pytest.raises(ConfigError) as caught:
        make_state_dir(paths, stack="lab")
    message = str(caught.value)
    assert message.startswith(f"nexus:paths.stateDir: {project} already exists and holds files")
    assert "README.md, serial.log" in message
    assert "next step: choose a new or empty directory for nexus:paths.stateDir" in message
    assert (project / "serial.log").read_text() == "my own notes\n"
    assert stat.S_IMODE(project.stat().st_mode) == 0o755
    assert not paths.marker.exists()


def test_a_directory_of_another_stack_is_refused(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "state")
    make_state_dir(paths, stack="linux")
    with pytest.raises(
        ConfigError, match=r"nexus:paths.stateDir: .* belongs to the stack 'linux', not 'mac'"
    ):
        check_state_dir(paths, stack="mac")
    check_state_dir(paths, stack="linux")


def test_a_lab_made_before_markers_existed_asks_for_the_upgrade(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "old")
    paths.ssh_dir.mkdir(parents=True)
    for path in (paths.overlay_disk, paths.seed_iso, paths.serial_log, paths.pid_file):
        path.write_bytes(b"x")
    with pytest.raises(ConfigError) as caught:
        check_state_dir(paths, stack="lab")
    assert "was made by an earlier version of nexus-nested-vm" in str(caught.value)
    assert "next step: run `scripts/upgrade-stack lab` once" in str(caught.value)


def test_a_lab_of_the_dynamic_providers_asks_for_the_upgrade_and_is_left_as_it_is(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path / "state")
    paths.state_dir.mkdir()
    # The marker as the dynamic providers' version wrote it: no format.
    old = {"written_by": "nexus-nested-vm", "stack": "lab", "created_dirs": [str(paths.state_dir)]}
    paths.marker.write_text(json.dumps(old))
    paths.overlay_disk.write_bytes(b"disk")
    for check in (check_state_dir, make_state_dir):
        with pytest.raises(ConfigError, match=r"^nexus:paths.stateDir: the lab in .* earlier version"):
            check(paths, stack="lab")
    assert json.loads(paths.marker.read_text()) == old and paths.overlay_disk.read_bytes() == b"disk"

    upgraded = StateDirMarker.read(paths)
    assert upgraded is not None and upgraded.format == 1
    dataclasses.replace(upgraded, format=STATE_FORMAT).write(paths)
    assert make_state_dir(paths, stack="lab") == (paths.state_dir,)


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_a_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    state_dir = blocker if where == "itself" else blocker / "state"
    with pytest.raises(ConfigError) as caught:
        check_state_dir(VmPaths(state_dir), stack="lab")
    assert str(caught.value).startswith(
        f"nexus:paths.stateDir: {str(state_dir)!r} cannot be a directory: {blocker} is a file"
    )
    with pytest.raises(ConfigError):
        make_state_dir(VmPaths(state_dir), stack="lab")
    assert blocker.read_text() == "a file"

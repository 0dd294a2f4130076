"""nexus:host: the lab on a remote Linux server over SSH, with the reference program.

The "server" is this machine seen as another one: a user of its own with its own home,
reached only through an sshd of its own on 127.0.0.2 (tests/support/remote_server.py). The
program's side runs with a HOME of its own too, so what each side keeps can be listed.

One lab, in order: bad `nexus:host` settings refused at preview, naming the key -> up (VM
under TCG, no playground), with an image URL only this side has a route to (through an HTTP
proxy the server's sessions do not have), so this side sends the image -> QEMU runs as the
server's user, the lab's files are under its home, this side has only the key pair and
scripts -> connect-ssh.sh reaches the VM through the server, and tunnel.sh brings its SSH
port here -> kill -9 of QEMU on the server: preview shows the VM's update, up heals it ->
destroy: no process, session or file of the lab left on the server, nothing on this side;
the server's image cache stays.
"""

from __future__ import annotations

import filecmp
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nexus_components.core.ssh import SshTarget
from tests.e2e.test_lab import free_port, lab_config, lab_stack
from tests.support.debian_image import IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving_as_proxy
from tests.support.processes import running
from tests.support.pulumi_cli import PulumiCli
from tests.support.remote_server import RemoteServer, remote_server

pytestmark = [pytest.mark.engine, pytest.mark.vm]

# A host no resolver knows (RFC 6761): reached only through this side's proxy.
IMAGE_URL = f"http://nexus-images.invalid/{IMAGE_NAME}"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def host_setting(server: RemoteServer, **changes: Any) -> dict[str, Any]:
    return {
        "ssh": f"{server.user}@{server.address}:{server.port}",
        "keyFile": str(server.private_key),
        "knownHostsFile": str(server.known_hosts),
        **changes,
    }


def port_is_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def preview_output(cli: PulumiCli) -> str:
    result = cli.run("preview", *cli.stack_args(), "--diff", check=False)
    return result.stdout + result.stderr


def test_a_lab_on_a_remote_host_goes_up_heals_and_is_destroyed_there(tmp_path: Path) -> None:
    laptop_home = tmp_path / "laptop-home"
    laptop_home.mkdir()
    with serving_as_proxy(ensure_test_image()) as proxy, remote_server(tmp_path / "server") as server:
        cli = lab_stack(tmp_path, "remote")
        # A user's proxy setting, with loopback left out of it as usual (the engine's gRPC too).
        cli.extra_env.update(HOME=str(laptop_home), http_proxy=proxy, no_proxy="127.0.0.1,localhost")
        config = lab_config(tmp_path, IMAGE_URL, free_port(), free_port())
        # The server's defaults: the stack's directory and the image cache under its home.
        del config["nexus:paths"]
        config["nexus:host"] = host_setting(server, ssh=f"{server.user}@{server.address}:{free_port()}")
        cli.init(config)
        home_before = files_under(server.home)  # useradd's skeleton and the authorized key

        # Bad settings, each refused before anything is made, naming the key.
        output = preview_output(cli)
        assert "nexus:host: could not reach" in output, output
        cli.set_config("nexus:host.ssh", f"{server.user}@{server.address}:{server.port}")
        cli.set_config("nexus:vm.qemuImgBinary", "qemu-img-not-there")
        output = preview_output(cli)
        assert "'qemu-img-not-there' was not found on PATH (config key nexus:vm.qemuImgBinary)" in output, (
            output
        )
        assert f"on {server.user}@{server.address}:{server.port}" in output, output
        cli.set_config("nexus:vm.qemuImgBinary", "qemu-img")
        assert server.processes() == [] or all("sshd" in line for line in server.processes())
        assert not (server.home / ".nexus-nested-vm").exists()

        # Up: everything of the lab is on the server. The server has no route to the image's URL,
        # so this side downloads it and sends it through SSH as it comes, keeping none of it.
        done = cli.up()
        label = f"{server.user}@{server.address}:{server.port}"
        assert f"[image] {label} cannot reach {IMAGE_URL}; sending the image from this machine" in done.stdout
        assert f"[image] received {IMAGE_NAME}: " in done.stdout, done.stdout
        # The server's own way into the VM is not the user's: the ready line names theirs.
        assert "s: log in from your machine with connect-ssh.sh or the sshCommand output" in done.stdout
        outputs = cli.outputs()
        pid = int(outputs["vmPid"])
        state_dir = Path(outputs["stateDir"])
        assert state_dir.is_relative_to(server.home), state_dir
        owner = subprocess.run(["ps", "-o", "uid=", "-p", str(pid)], capture_output=True, text=True)
        assert int(owner.stdout) == server.uid, "QEMU does not run as the server's user"
        assert (state_dir / "disk.qcow2").is_file()
        (cached,) = (server.home / ".cache" / "nexus-nested-vm" / "images").rglob(IMAGE_NAME)
        assert filecmp.cmp(cached, ensure_test_image() / IMAGE_NAME, shallow=False)
        local_dir = laptop_home / ".nexus-nested-vm" / "stacks" / "remote"
        assert files_under(laptop_home) == sorted(
            str(p.relative_to(laptop_home))
            for p in (
                local_dir / ".nexus-nested-vm",
                local_dir / "connect-ssh.sh",
                local_dir / "tunnel.sh",
                local_dir / "ssh" / "id_ed25519",
                local_dir / "ssh" / "id_ed25519.pub",
            )
        ), files_under(laptop_home)

        # The connect script reaches the VM through the server (the forward is on its loopback).
        connect = Path(outputs["connectScript"])
        assert connect.is_relative_to(laptop_home)
        answer = subprocess.run(
            [str(connect), "cat", "/etc/hostname"], capture_output=True, text=True, timeout=120, check=False
        )
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == "nexus-remote"  # the guest's host name: the VM's default name

        # tunnel.sh brings the server's forwards to this side: here the VM's SSH port, on a port
        # of this side's choosing (the "server" is this machine, whose port is taken by QEMU).
        here = free_port()
        tunnel = subprocess.Popen(
            [outputs["tunnelScript"], f"{here}:{outputs['sshPort']}"],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            through = SshTarget("127.0.0.1", here, "nexus", Path(outputs["privateKeyPath"]))
            deadline = time.monotonic() + 60
            while not port_is_taken(here):
                assert tunnel.poll() is None and time.monotonic() < deadline, "tunnel.sh never listened"
                time.sleep(0.2)
            hostname = subprocess.run(
                [*through.argv(connect_timeout=30), "cat", "/etc/hostname"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert hostname.stdout.strip() == "nexus-remote", hostname.stderr
        finally:
            tunnel.terminate()
            tunnel.communicate(timeout=30)

        # Drift on the server: QEMU killed there is seen by preview, and up starts it again.
        os.kill(pid, signal.SIGKILL)
        output = preview_output(cli)
        assert "nexus:host:QemuVm" in output and "update" in output, output
        cli.up()
        new_pid = int(cli.outputs()["vmPid"])
        assert new_pid != pid and running(new_pid)
        again = subprocess.run(
            [str(connect), "true"], capture_output=True, text=True, timeout=120, check=False
        )
        assert again.returncode == 0, again.stderr

        # Destroy: nothing of the lab left on either side but the server's image cache.
        cli.destroy()
        assert not running(new_pid)
        assert server.processes() == [], server.processes()
        assert not state_dir.exists()
        assert files_under(laptop_home) == []
        kept = (".cache/nexus-nested-vm/images/", ".cache/nexus-nested-vm/remote/", ".ssh/known_hosts")
        left = [name for name in files_under(server.home) if not name.startswith(kept)]
        assert left == home_before, left

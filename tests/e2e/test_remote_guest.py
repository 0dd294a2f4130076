"""nexus:host with the guest layers: Docker, the playground container and its scripts, for a
lab on a remote server (the "server" of tests/support/remote_server.py, as in
test_remote_host.py).

Docker in the VM is reached over `ssh://` through the server; the container's image is a
root-file-system tarball on this side, copied into the VM through the server; the
container's web page reaches this side through tunnel.sh, and connect-playground.sh opens a
shell in it through the server; destroy leaves nothing on either side.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_lab import free_port, lab_config, lab_stack
from tests.e2e.test_remote_host import files_under, host_setting, port_is_taken
from tests.support.debian_image import GUEST_LAYERS, IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.playground_rootfs import ensure_busybox_rootfs
from tests.support.remote_server import remote_server
from tests.support.terminal import Terminal

pytestmark = [pytest.mark.engine, pytest.mark.vm, pytest.mark.guest]


GREETING = "hello from a container on the server"


def test_the_guest_layers_of_a_lab_on_a_remote_host_are_reached_through_the_server(tmp_path: Path) -> None:
    laptop_home = tmp_path / "laptop-home"
    laptop_home.mkdir()
    serve = 'printf "%s" "$GREETING" > /srv/www/env.txt && exec busybox httpd -f -p 80 -h /srv/www'
    with (
        serving(ensure_test_image(recipe=GUEST_LAYERS), IMAGE_NAME) as image_url,
        remote_server(tmp_path / "server") as server,
    ):
        cli = lab_stack(tmp_path, "remote-guest")
        cli.extra_env["HOME"] = str(laptop_home)
        http_port = free_port()
        config = lab_config(
            tmp_path,
            image_url,
            free_port(),
            http_port,
            vm={"memoryMiB": 2048, "diskSize": "10G"},
            playground={
                "enabled": True,
                "rootfsTarball": str(ensure_busybox_rootfs()),
                "command": ["sh", "-c", serve],
                "env": {"GREETING": GREETING},
                "ports": [{"vm": 80, "container": 80}],
                "readyTimeoutSeconds": 900,
            },
        )
        del config["nexus:paths"]
        config["nexus:host"] = host_setting(server)
        cli.init(config)
        home_before = files_under(server.home)
        try:
            cli.up()
            outputs = cli.outputs()
            assert outputs["playgroundContainer"] == "nexus-playground"
            assert outputs["dockerVersion"], outputs
            # Only the keys and scripts are on this side; the VM and its Docker are the server's.
            local_dir = laptop_home / ".nexus-nested-vm" / "stacks" / "remote-guest"
            assert {Path(name).name for name in files_under(laptop_home)} == {
                ".nexus-nested-vm",
                "connect-ssh.sh",
                "connect-playground.sh",
                "tunnel.sh",
                "id_ed25519",
                "id_ed25519.pub",
            }, files_under(laptop_home)
            assert Path(outputs["playgroundShellScript"]) == local_dir / "connect-playground.sh"

            # The container's web page, from this side: tunnel.sh -> the server's forward -> the
            # VM's port 80 -> the container.
            here = free_port()
            tunnel = subprocess.Popen(
                [outputs["tunnelScript"], f"{here}:{http_port}"], stderr=subprocess.PIPE, text=True
            )
            try:
                deadline = time.monotonic() + 60
                while not port_is_taken(here):
                    assert tunnel.poll() is None and time.monotonic() < deadline, "tunnel.sh never listened"
                    time.sleep(0.2)
                with urllib.request.urlopen(f"http://127.0.0.1:{here}/env.txt", timeout=60) as page:
                    assert page.read().decode() == GREETING
            finally:
                tunnel.terminate()
                tunnel.communicate(timeout=30)

            # A shell in the container, as its user would open one: a terminal, through the server.
            shell = Terminal([outputs["playgroundShellScript"]], tmp_path, {**os.environ, "TERM": "xterm"})
            try:
                shell.type("cat /srv/www/env.txt; echo; echo shell-ends-$((6*7)); exit\r")
                shell.wait_for("shell-ends-42", 120)
                assert GREETING in shell.output(), shell.output()
                assert shell.finish(60) == 0
            finally:
                shell.close()
        finally:
            gone = cli.destroy(check=False)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert server.processes() == [], server.processes()
        assert files_under(laptop_home) == []
        kept = (".cache/nexus-nested-vm/images/", ".cache/nexus-nested-vm/remote/", ".ssh/known_hosts")
        assert [name for name in files_under(server.home) if not name.startswith(kept)] == home_before

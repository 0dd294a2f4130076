"""What a lab on a remote host (nexus:host) costs against the same lab on this machine.

The same host-only lab (the x86_64 test image under TCG, 1 GiB, no playground), in the same
run: first on this machine, then on a "server" that is this machine seen as another one (a
user of its own with its own home, reached through its own sshd on 127.0.0.2:
tests/support/remote_server.py). Each side's image cache starts empty, and the image comes
from the same loopback HTTP server.

  up       `pulumi up` until the VM answers SSH with cloud-init done (download included)
  ready    the VM's own boot as QemuVm measured it (`vmReadySeconds`)
  preview  `pulumi preview` of the lab that is up (median of 3): every drift check, plus
           the SSH steps to the server for a remote lab
  destroy  `pulumi destroy`

The ratios (remote / local) are the cost of SSH, of copying the package's modules to the
server once and of each step's own python3 there; the server's loopback makes it the
cost of the mechanism, not of a network. Figures only: nothing here asserts a time.

Run (root: the server's user is made with useradd): .venv/bin/python -m bench.remote_host
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.test_lab import free_port, lab_config, lab_stack
from tests.support.debian_image import IMAGE_NAME, ensure_test_image
from tests.support.file_server import serving
from tests.support.pulumi_cli import PulumiCli
from tests.support.remote_server import remote_server

PREVIEWS = 3


def timed(cli: PulumiCli, *args: str) -> float:
    started = time.monotonic()
    cli.run(*args, *cli.stack_args())
    return time.monotonic() - started


def one_lab(cli: PulumiCli, config: dict[str, Any]) -> dict[str, float]:
    cli.init(config)
    up = timed(cli, "up", "--yes", "--skip-preview")
    ready = float(cli.outputs()["vmReadySeconds"])
    preview = statistics.median(timed(cli, "preview") for _ in range(PREVIEWS))
    destroy = timed(cli, "destroy", "--yes", "--skip-preview")
    return {"up": up, "ready": ready, "preview": preview, "destroy": destroy}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nexus-bench-remote-") as scratch:
        tmp = Path(scratch)
        with serving(ensure_test_image(), IMAGE_NAME) as url:
            local_dir = tmp / "local"
            local = lab_stack(local_dir, "local")
            here = one_lab(local, lab_config(local_dir, url, free_port(), free_port()))
            with remote_server(tmp / "server") as server:
                remote_dir = tmp / "remote"
                remote = lab_stack(remote_dir, "remote")
                remote.extra_env["HOME"] = str(remote_dir / "home")
                (remote_dir / "home").mkdir(parents=True)
                config = lab_config(remote_dir, url, free_port(), free_port())
                del config["nexus:paths"]
                config["nexus:host"] = {
                    "ssh": f"{server.user}@{server.address}:{server.port}",
                    "keyFile": str(server.private_key),
                    "knownHostsFile": str(server.known_hosts),
                }
                there = one_lab(remote, config)
    print(f"{'step':<8} {'local s':>9} {'remote s':>9} {'remote/local':>13}")
    for step in ("up", "ready", "preview", "destroy"):
        print(f"{step:<8} {here[step]:>9.1f} {there[step]:>9.1f} {there[step] / here[step]:>13.2f}")


if __name__ == "__main__":
    main()

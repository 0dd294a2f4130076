"""The lab's SSH banner, read from the moment the plugin starts (see host/ssh_banner.py).

The engine starts the default provider with the stack's `nexus:` settings in its environment
(PULUMI_CONFIG: one JSON object of the keys without their namespace, each value JSON text),
and the plugin's own imports then take about 0.4 s. A preview's drift check of the running VM
waits for its SSH banner (a fifth of a second under TCG); read from the start, it is there by
the time the Lab gets to the VM. Only a hint: the drift check takes the answer for its own
port while it is fresh, or reads again. Standard library only, like ssh_banner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nexus_components.host import ssh_banner

# nexus:network.sshPort's default and the address the host reaches it on (config.py, settings.py).
DEFAULT_SSH_PORT = 2222
SSH_HOST = "127.0.0.1"


def ssh_port(pulumi_config: str | None) -> int | None:
    """nexus:network.sshPort in the engine's PULUMI_CONFIG; None without settings or for a bad one."""
    if not pulumi_config:
        return None
    try:
        settings = json.loads(pulumi_config)
        if settings.get("host", '"local"') not in ('"local"', "local"):
            return None  # the VM is on a remote host (nexus:host): its port is the server's
        network: Any = settings.get("network", "{}")
        if isinstance(network, str):
            network = json.loads(network)
        port = network.get("sshPort", DEFAULT_SSH_PORT)
    except (ValueError, AttributeError):
        return None  # the Lab's own checks name what is wrong
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return port


def start(environ: Mapping[str, str]) -> None:
    port = ssh_port(environ.get("PULUMI_CONFIG"))
    if port is not None:
        ssh_banner.read_early(SSH_HOST, port)

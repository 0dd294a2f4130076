"""What the playground container needs from the VM, checked before its old self is deleted.

pulumi-docker replaces the container delete-first (its name and VM ports are unique in
the VM), so a new container that cannot start would leave the lab without one. What can
be seen from the VM beforehand is checked here: every VM port it publishes is free, or
held by a container this product made (the current one, deleted just before the new one
is made; a leftover of an interrupted run, removed by the before-create hook), and every
device it is given exists. The commands are fixed argument lists; the answers are read by
pure functions. No Pulumi import; unit-tested directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .playground import DISK_LABEL
from .settings import PublishedPort

# Every listening TCP and UDP socket in the VM with the program holding it (root sees all).
LISTENERS = ("sudo", "-n", "ss", "--no-header", "--listening", "--numeric", "--processes", "--tcp", "--udp")
LISTENERS_AS_USER = LISTENERS[2:]
# Docker's own relay for a published port: whose port it is, `docker inspect` says.
DOCKER_PROXY = "docker-proxy"

# One JSON object per running container: id, name, this product's label (empty: not ours)
# and the VM ports it publishes.
_CONTAINER_TEMPLATE = (
    '{"id":{{json .Id}},"name":{{json .Name}},'
    '"ours":{{json (index .Config.Labels "' + DISK_LABEL + '")}},'
    '"ports":{{json .HostConfig.PortBindings}}}'
)
RUNNING_CONTAINERS = (
    "sh",
    "-c",
    'ids=$(docker ps --quiet) || exit; [ -z "$ids" ] || '
    'exec docker inspect --type container --format "$1" $ids',
    "sh",
    _CONTAINER_TEMPLATE,
)


@dataclass(frozen=True)
class WantedPort:
    vm: int
    protocol: str
    key: str  # the config key that asks for it, for the error


def wanted_ports(ports: Sequence[PublishedPort]) -> list[WantedPort]:
    return [WantedPort(p.vm, p.protocol, f"nexus:playground.ports[{i}].vm") for i, p in enumerate(ports)]


def devices_missing(paths: Sequence[str]) -> list[str]:
    """Prints each of `paths` that does not exist in the VM, one a line."""
    return ["sh", "-c", 'for path; do [ -e "$path" ] || printf "%s\\n" "$path"; done', "sh", *paths]


PortKey = tuple[int, str]  # (VM port, protocol)
_PROCESS = re.compile(r'\("([^"]*)",pid=(\d+)')


def listeners(ss_output: str) -> dict[PortKey, list[str]]:
    """`ss` lines -> the programs holding each port ("sshd (pid 600)"); Docker's relays are
    left out, as the containers behind them are judged by `containers_publishing`."""
    held: dict[PortKey, list[str]] = {}
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] not in ("tcp", "udp"):
            continue
        port = fields[4].rpartition(":")[2]
        if not port.isdigit():
            continue
        processes = _PROCESS.findall(" ".join(fields[6:]))
        if any(name == DOCKER_PROXY for name, _ in processes):
            continue
        names = [f"{name} (pid {pid})" for name, pid in processes] or ["a socket of no process it can see"]
        holders = held.setdefault((int(port), fields[0]), [])
        holders.extend(name for name in names if name not in holders)
    return held


def containers_publishing(inspect_output: str) -> dict[PortKey, list[str]]:
    """RUNNING_CONTAINERS' answer -> the containers this product did not make, by the VM
    ports they publish ("container web (1a2b3c4d5e6f)")."""
    held: dict[PortKey, list[str]] = {}
    for line in inspect_output.splitlines():
        if not line.strip().startswith("{"):
            continue
        container = json.loads(line)
        if container.get("ours"):
            continue
        shown = f"container {str(container['name']).lstrip('/')} ({str(container['id'])[:12]})"
        bindings: Mapping[str, list[Mapping[str, str]] | None] = container.get("ports") or {}
        for port_protocol, hosts in bindings.items():
            _, _, protocol = port_protocol.partition("/")
            for host in hosts or []:
                vm_port = host.get("HostPort", "")
                if vm_port.isdigit():
                    holders = held.setdefault((int(vm_port), protocol or "tcp"), [])
                    if shown not in holders:
                        holders.append(shown)
    return held


def port_clashes(wanted: Sequence[WantedPort], *held: Mapping[PortKey, list[str]]) -> list[str]:
    """One line per wanted VM port that something else holds, naming its key and holders."""
    clashes = []
    for port in wanted:
        holders = [holder for by_port in held for holder in by_port.get((port.vm, port.protocol), [])]
        if holders:
            clashes.append(f"{port.key}: VM port {port.vm}/{port.protocol} is in use by {', '.join(holders)}")
    return clashes

"""The SSH banner read early (host/ssh_banner.py) and the plugin's start of it (early_banner.py)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from nexus_components.host import ssh_banner
from nexus_provider import early_banner


@pytest.fixture
def sshd() -> Iterator[tuple[int, list[int]]]:
    """A loopback server that greets like sshd; the list counts the connections it took."""
    accepted: list[int] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


def test_an_early_read_is_taken_once_and_not_started_twice(sshd: tuple[int, list[int]]) -> None:
    port, accepted = sshd
    ssh_banner.read_early("127.0.0.1", port)
    ssh_banner.read_early("127.0.0.1", port)  # the Lab, after the plugin's start: the same read
    assert ssh_banner.take("127.0.0.1", port) == ssh_banner.GREETS
    assert len(accepted) == 1
    assert ssh_banner.take("127.0.0.1", port) is None  # used once: the next check reads anew


def test_a_read_that_is_no_longer_fresh_is_not_taken(
    sshd: tuple[int, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = sshd
    monkeypatch.setattr(ssh_banner, "FRESH_SECONDS", -1.0)
    ssh_banner.read_early("127.0.0.1", port)
    assert ssh_banner.take("127.0.0.1", port) is None


def test_nothing_listening_is_closed_not_silent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert ssh_banner.read("127.0.0.1", port, timeout=2) == ssh_banner.CLOSED


def test_a_read_the_vm_cuts_short_leaves_no_connection_on_its_port() -> None:
    """QEMU exits while the read waits for the banner (a destroy right after the plugin's
    start): the port is free at once, for a listener without SO_REUSEADDR too."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ssh_banner.read_early("127.0.0.1", port)
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()  # the VM's side goes first, as when its QEMU exits
    assert ssh_banner.take("127.0.0.1", port) == ssh_banner.CLOSED
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def engine_config(**settings: object) -> str:
    """PULUMI_CONFIG as the engine gives it to the plugin: each value JSON text."""
    return json.dumps({key: json.dumps(value) for key, value in settings.items()})


@pytest.mark.parametrize(
    ("pulumi_config", "port"),
    [
        (engine_config(network={"sshPort": 2345, "forwards": []}), 2345),
        (engine_config(vm={"cpus": 2}), early_banner.DEFAULT_SSH_PORT),  # sshPort's default
        (engine_config(network={"sshPort": "2345"}), None),  # bad: the Lab's check names it
        (engine_config(network={"sshPort": 70000}), None),
        (engine_config(network={"sshPort": True}), None),
        (json.dumps({"network": "not json"}), None),
        ("", None),  # not started by the engine, or no settings
    ],
)
def test_the_ssh_port_comes_from_the_settings_the_engine_hands_the_plugin(
    pulumi_config: str, port: int | None
) -> None:
    assert early_banner.ssh_port(pulumi_config) == port


def test_the_plugins_start_reads_the_banner_of_the_stacks_port(sshd: tuple[int, list[int]]) -> None:
    port, accepted = sshd
    early_banner.start({"PULUMI_CONFIG": engine_config(network={"sshPort": port})})
    assert ssh_banner.take(early_banner.SSH_HOST, port) == ssh_banner.GREETS and accepted == [1]

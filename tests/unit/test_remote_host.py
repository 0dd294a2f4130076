"""nexus:host's pure parts (settings, ssh argv, the code bundle, errors carried back), and its
transport for real: the server's end run as a program, and steps over a throwaway sshd."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from nexus_components.config import load_config
from nexus_components.core import download
from nexus_components.core.errors import ConfigError, DownloadError, HostToolError, NexusError, VmError
from nexus_components.core.progress import progress_to
from nexus_components.host import lifecycles, remote, remote_call
from nexus_components.host.hostfacts import available_memory_mib
from nexus_components.host.remote import OnHost, RemoteHost, load_host
from nexus_components.lab_settings import lab_arguments
from nexus_components.placement import refuse_what_a_remote_host_lacks
from nexus_provider.early_banner import ssh_port
from tests.support.file_server import ProxyRequests, serving_as_proxy
from tests.support.processes import processes_where
from tests.support.sshd import running_sshd

REPO = Path(__file__).resolve().parents[2]


def test_local_or_unset_is_this_machine(tmp_path: Path) -> None:
    assert load_host(None, home=tmp_path, base_dir=tmp_path) is None
    assert load_host("local", home=tmp_path, base_dir=tmp_path) is None


def test_a_server_address_with_and_without_a_port(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("key")
    host = load_host({"ssh": "lab@build-1.example", "keyFile": "id"}, home=tmp_path, base_dir=tmp_path)
    assert host == RemoteHost("lab", "build-1.example", 22, str(key), None)
    host = load_host({"ssh": "lab@[fd00::5]:2200"}, home=tmp_path, base_dir=tmp_path)
    assert host is not None and (host.server, host.port) == ("fd00::5", 2200)


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ({"ssh": "build-1"}, "nexus:host.ssh: got 'build-1'; allowed: user@server or user@server:port"),
        ({"ssh": "lab@srv; rm -rf ~"}, "nexus:host.ssh: got 'lab@srv; rm -rf ~'"),
        ({"ssh": "lab@srv:70000"}, "nexus:host.ssh: got port 70000; allowed: 1 to 65535"),
        (
            {"ssh": "lab@srv", "keyFile": "~/no-such-key"},
            "nexus:host.keyFile: got '~/no-such-key', which is not a file",
        ),
    ],
)
def test_bad_host_settings_name_the_key(tmp_path: Path, setting: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_host(setting, home=tmp_path, base_dir=tmp_path)
    assert words in str(refused.value)


def test_the_schema_refuses_unknown_keys_and_other_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nexus:host.user: unknown key; allowed keys here: keyFile"):
        load_config({"host": {"ssh": "a@b", "user": "x"}}, stack="dev", home=tmp_path)
    with pytest.raises(ConfigError, match=r"nexus:host: got 'remote'; allowed: 'local', or \{ssh"):
        load_config({"host": "remote"}, stack="dev", home=tmp_path)


def test_values_reach_the_server_as_words_never_as_shell() -> None:
    host = RemoteHost("lab", "srv", 2200, "/keys/my key", None)
    argv = host.ssh_argv(["sh", "-c", 'echo "$1"', "sh", "a b; $(reboot)"])
    assert argv[-2:] == ["--", shlex.join(["sh", "-c", 'echo "$1"', "sh", "a b; $(reboot)"])]
    assert shlex.split(argv[-1])[-1] == "a b; $(reboot)"
    assert argv[argv.index("-i") + 1] == "/keys/my key" and argv[argv.index("-p") + 1] == "2200"


def test_the_jump_through_the_server_doubles_percent_signs() -> None:
    proxy = RemoteHost("lab", "srv", 22, "/keys/100%.key", None).proxy_command()
    assert "/keys/100%%.key" in proxy and proxy[-2:] == ("-W", "%h:%p")


def test_the_bundle_holds_the_package_and_pure_python_dependencies_only() -> None:
    digest, data = remote.code_bundle()
    with tarfile.open(fileobj=io.BytesIO(data)) as bundle:
        names = bundle.getnames()
    assert "nexus_components/host/remote_call.py" in names
    assert "requests/__init__.py" in names and "certifi/cacert.pem" in names
    assert "pycdlib/pycdlib.py" in names and "qemu/qmp/qmp_client.py" in names and "yaml/__init__.py" in names
    assert not [name for name in names if name.endswith((".so", ".pyc"))]
    assert len(digest) == 16 and remote.code_dir().endswith(digest)


def test_an_error_on_the_server_comes_back_as_the_same_class_saying_where() -> None:
    host = RemoteHost("lab", "srv", 22)
    error = remote.rebuild_error(
        {"kind": "VmError", "what": "QEMU exited", "hint": "look", "command": ["qemu"], "output": "boom"},
        host,
    )
    assert isinstance(error, VmError)
    assert str(error).startswith("QEMU exited (on lab@srv:22)") and "next step: look" in str(error)
    assert type(remote.rebuild_error({"kind": "SystemExit", "what": "x"}, host)) is NexusError


def test_the_users_key_is_placed_in_the_stacks_directory_and_its_path_given_back(tmp_path: Path) -> None:
    request = {
        "props": {"state_dir": str(tmp_path), "private_key": "/laptop/key"},
        "files": {"private_key": "K"},
    }
    originals = remote_call.place_user_files(request)
    placed = Path(request["props"]["private_key"])
    assert placed == tmp_path / "ssh" / "id_ed25519" and placed.read_text() == "K"
    assert placed.stat().st_mode & 0o777 == 0o600
    answer = remote_call.restore_user_files({"id": "x", "outs": dict(request["props"])}, originals)
    assert answer["outs"]["private_key"] == "/laptop/key"


def server_end(resource: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """remote_call as the server runs it: a program reading a JSON line on stdin, whose caller
    keeps stdin open until the answer came."""
    step = subprocess.Popen(
        [sys.executable, "-m", "nexus_components.host.remote_call", resource, method],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert step.stdin is not None and step.stdout is not None
    step.stdin.write(json.dumps(request) + "\n")
    step.stdin.flush()
    answer: dict[str, Any] = json.loads(step.stdout.read())
    step.stdin.close()
    assert step.wait(30) == 0
    return answer


def test_a_step_whose_caller_is_gone_is_interrupted_on_the_server(tmp_path: Path) -> None:
    """A `pulumi` killed mid-step (a second Ctrl-C, a dropped connection): the caller's ssh is
    gone, and the step on the server stops instead of running on with nobody to answer."""
    stalled = socket.create_server(("127.0.0.1", 0))  # accepts, never answers: a download hangs
    url = f"http://127.0.0.1:{stalled.getsockname()[1]}/stalled.qcow2"
    props = {"url": url, "sha256": "a" * 64, "cache_dir": str(tmp_path / "cache"), "qemu_img": "qemu-img"}
    with running_sshd(tmp_path / "sshd") as sshd:
        host = RemoteHost(sshd.user, sshd.host, sshd.port, str(sshd.private_key), str(tmp_path / "kh"))
        caller = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import json, sys; from nexus_components.host import remote; "
                "remote.call(remote.RemoteHost(*json.loads(sys.argv[1])), 'BaseImage', 'create', "
                "{'props': json.loads(sys.argv[2])})",
                json.dumps([host.user, host.server, host.port, host.key_file, host.known_hosts_file]),
                json.dumps(props),
            ],
            cwd=REPO,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not server_steps(sshd.port):
                assert caller.poll() is None and time.monotonic() < deadline, "the step never ran"
                time.sleep(0.2)
            os.killpg(caller.pid, signal.SIGKILL)  # the caller and its ssh, at once
            caller.wait()
            deadline = time.monotonic() + 20
            while server_steps(sshd.port):
                assert time.monotonic() < deadline, f"the step ran on: {server_steps(sshd.port)}"
                time.sleep(0.2)
        finally:
            if caller.poll() is None:
                os.killpg(caller.pid, signal.SIGKILL)
            remote.close(host)
            stalled.close()


def server_steps(sshd_port: int) -> list[int]:
    """The "server's" remote_call processes (the server is this machine) of a session of the
    sshd on `sshd_port`: its sessions say so in SSH_CONNECTION."""
    session = re.compile(rb"(?:^|\0)SSH_CONNECTION=\S+ \d+ \S+ %d(?:\0|$)" % sshd_port)
    return processes_where(
        lambda proc: (
            b"nexus_components.host.remote_call" in (proc / "cmdline").read_bytes()
            and session.search((proc / "environ").read_bytes()) is not None
        )
    )


def check_of_a_folder_not_ours(tmp_path: Path) -> dict[str, str]:
    """The Host check's request for a state directory holding someone else's file."""
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    return {
        "state_dir": str(tmp_path / "theirs"),
        "stack": "dev",
        "cache_dir": str(tmp_path / "cache"),
        "image_url": "https://example.invalid/x.img",
        "disk_size": "4G",
        "qemu_img": "qemu-img",
    }


def test_the_servers_end_runs_a_step_and_answers_json(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    made = server_end("StateDir", "create", {"props": {"state_dir": str(state), "stack": "dev"}})
    assert made["result"]["id"] == str(state) and state.is_dir()
    error = server_end("Host", "check", check_of_a_folder_not_ours(tmp_path))["error"]
    assert error["kind"] == "ConfigError" and "nexus:paths.stateDir" in error["what"]


def test_steps_over_ssh_ship_the_code_relay_progress_and_raise_the_servers_error(tmp_path: Path) -> None:
    home = tmp_path / "server-home"
    home.mkdir()
    with running_sshd(tmp_path / "sshd") as sshd:
        host = RemoteHost(
            sshd.user, sshd.host, sshd.port, str(sshd.private_key), str(tmp_path / "known_hosts")
        )
        state_dir = OnHost("StateDir", lifecycles.StateDir())
        lab = tmp_path / "lab"
        said: list[str] = []
        with progress_to(said.append):
            made = state_dir.create({"host": host.as_props(), "state_dir": str(lab), "stack": "dev"})
            assert lab.is_dir() and made.id == str(lab)
            assert not state_dir.diff(made.outs, dict(made.outs)).changes
            (lab / "notes.txt").write_text("the user's")
            state_dir.delete(made.outs)
        # The server's progress line came through as it was said; the user's file was kept.
        assert said == [f"[state] kept {lab}: it holds files nexus-nested-vm did not create"]
        assert (lab / "notes.txt").read_text() == "the user's"
        # The code is on the "server", under its home's cache, once.
        shipped = Path(os.path.expanduser("~")) / remote.code_dir()
        assert (shipped / ".complete").is_file()
        with pytest.raises(HostToolError, match=r"the step Nope\.create failed"):
            remote.call(host, "Nope", "create", {})
        with pytest.raises(ConfigError, match=rf"\(on {sshd.user}@{sshd.host}:{sshd.port}\)"):
            remote.call(host, remote.HOST, "check", check_of_a_folder_not_ours(tmp_path))
        # The memory scripts/fleet bounds a server's labs by: this machine's, as the "server" is it.
        there = remote.call(host, remote.HOST, "memory", {})["available_mib"]
        here = available_memory_mib()
        assert here is not None and abs(there - here) < here / 4, (there, here)
        remote.close(host)
    wrong = RemoteHost(
        sshd.user, "127.0.0.1", sshd.port, str(sshd.private_key), str(tmp_path / "known_hosts")
    )
    with pytest.raises(HostToolError, match=r"nexus:host: could not reach"):
        remote.call(wrong, remote.HOST, "facts", {})


def image_props(host: RemoteHost, url: str, sha256: str | None, cache_dir: Path) -> dict[str, Any]:
    """A BaseImage's properties for a lab on `host`."""
    return {
        "host": host.as_props(),
        "url": url,
        "sha256": sha256,
        "cache_dir": str(cache_dir),
        "qemu_img": "qemu-img",
        "disk_size": "4G",
    }


def test_a_server_without_a_route_to_the_image_has_it_sent_from_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = images / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    (images / "SHA256SUMS").write_text(f"{digest}  tiny.qcow2\n")
    url = "http://nexus-images.invalid/tiny.qcow2"
    server_cache = tmp_path / "server-cache"
    base_image = OnHost("BaseImage", lifecycles.BaseImage())
    with serving_as_proxy(images) as proxy, running_sshd(tmp_path / "sshd") as sshd:
        # This machine's route to the URL; the server's sessions start without it.
        monkeypatch.setenv("http_proxy", proxy)
        host = RemoteHost(
            sshd.user, sshd.host, sshd.port, str(sshd.private_key), str(tmp_path / "known_hosts")
        )
        props = image_props(host, url, None, server_cache)
        said: list[str] = []
        with progress_to(said.append):
            made = base_image.create(props)
        # Neither side has a route to this one: both reasons are given.
        monkeypatch.delenv("http_proxy")
        with pytest.raises(DownloadError, match=r"neither \S+ nor this machine can reach") as neither:
            base_image.create({**props, "url": "http://nexus-images.invalid/other.qcow2"})
        remote.close(host)
    cached = download.cached_image_path(server_cache, download.ImageSource(url))
    assert made.outs["path"] == str(cached) and cached.read_bytes() == image.read_bytes()
    assert made.id == digest and made.outs["virtual_size"] == 64 << 20
    assert said[0] == f"[image] {host.label} cannot reach {url}; sending the image from this machine"
    assert any(line.startswith("[image] received tiny.qcow2: ") for line in said), said
    assert str(neither.value).count("nexus-images.invalid") >= 2, neither.value
    assert "could not fetch" in str(neither.value) and f"(on {host.label})" in str(neither.value)


def test_an_image_sent_from_this_machine_that_broke_off_goes_on_from_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    raw, image = tmp_path / "data.raw", images / "data.qcow2"
    raw.write_bytes(os.urandom(5 << 20))  # incompressible: the qcow2 holds every byte
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(image)], check=True)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    url = "http://nexus-images.invalid/data.qcow2"
    server_cache = tmp_path / "server-cache"
    source = download.ImageSource(url, digest)
    base_image = OnHost("BaseImage", lifecycles.BaseImage())
    asked = ProxyRequests(cut_after_once=(2 << 20) + 4321)
    with serving_as_proxy(images, asked) as proxy, running_sshd(tmp_path / "sshd") as sshd:
        monkeypatch.setenv("http_proxy", proxy)  # this machine's route to the URL only
        host = RemoteHost(
            sshd.user, sshd.host, sshd.port, str(sshd.private_key), str(tmp_path / "known_hosts")
        )
        props = image_props(host, url, digest, server_cache)
        with pytest.raises(DownloadError, match="broke off") as broke:
            base_image.create(props)
        said: list[str] = []
        with progress_to(said.append):
            made = base_image.create(props)
        remote.close(host)
    assert "goes on from where it stopped" in broke.value.hint
    cached = download.cached_image_path(server_cache, source)
    assert made.outs["path"] == str(cached) and cached.read_bytes() == image.read_bytes()
    # The second copy asked the source for the rest only, after what the server kept.
    first, second = asked.ranges
    assert first is None and second is not None, asked.ranges
    kept = int(second.removeprefix("bytes=").rstrip("-"))
    assert 0 < kept <= (2 << 20) + 4321, kept
    assert (
        f"[image] {host.label} kept {kept / (1 << 20):.1f} MiB of an earlier copy; sending the rest" in said
    )
    assert any(", resumed at " in line for line in said if line.startswith("[image] received data.qcow2")), (
        said
    )
    assert download.partial_size(server_cache, source) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_tunnel_script_brings_a_servers_port_here_and_refuses_a_bad_pair(tmp_path: Path) -> None:
    # Something listening on the "server's" loopback, as QEMU's forwards do there.
    listener = socket.create_server(("127.0.0.1", 0))
    server_port = listener.getsockname()[1]
    here = free_port()
    with running_sshd(tmp_path / "sshd") as sshd:
        host = RemoteHost(sshd.user, sshd.host, sshd.port, str(sshd.private_key), str(tmp_path / "kh"))
        script = tmp_path / "tunnel.sh"
        script.write_text(remote.tunnel_script(host, [8080, 8443]))
        script.chmod(0o755)
        assert "default_ports='8080:8080 8443:8443'" in script.read_text()
        bad = subprocess.run([str(script), "80:x"], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "got '80:x'; allowed: PORT, or LOCAL:SERVER" in bad.stderr
        tunnel = subprocess.Popen(
            [str(script), f"{here}:{server_port}"], stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client = socket.create_connection(("127.0.0.1", here), timeout=5)
                    break
                except OSError:
                    assert tunnel.poll() is None and time.monotonic() < deadline, "the tunnel never opened"
                    time.sleep(0.2)
            accepted, _ = listener.accept()
            with client, accepted:
                client.sendall(b"through the server")
                assert accepted.recv(100) == b"through the server"
        finally:
            tunnel.terminate()
            said = tunnel.communicate(timeout=30)[1]
            listener.close()
        assert f"127.0.0.1:{here} here -> port {server_port} on {host.label}" in said, said


def test_mounts_on_a_remote_host_are_refused_naming_the_key(tmp_path: Path) -> None:
    settings = {"host": {"ssh": "lab@srv"}, "mounts": [{"host": str(tmp_path), "vm": "/srv/x"}]}
    config = load_config(settings, stack="dev", home=tmp_path)
    refused = r"nexus:mounts: not available with a remote nexus:host \(lab@srv:22\)"
    with pytest.raises(ConfigError, match=refused):
        refuse_what_a_remote_host_lacks(config)


def test_local_is_no_lab_argument_and_a_remote_lab_reads_no_local_banner() -> None:
    arguments, _ = lab_arguments({"host": "local", "vm": {"cpus": 2}}, ["host", "vm"])
    assert "host" not in arguments
    assert ssh_port(json.dumps({"host": json.dumps({"ssh": "a@b"})})) is None
    assert ssh_port(json.dumps({"host": '"local"'})) == 2222


def test_a_remote_labs_paths_are_the_servers_and_this_machine_keeps_the_defaults(tmp_path: Path) -> None:
    settings = {"host": {"ssh": "lab@srv"}, "paths": {"stateDir": "/srv/labs/alice"}}
    config = load_config(settings, stack="Alice", home=tmp_path)
    assert config.state_dir == config.key_dir == tmp_path / ".nexus-nested-vm" / "stacks" / "alice"
    assert config.cache_dir == tmp_path / ".cache" / "nexus-nested-vm" / "images"


def test_a_known_hosts_file_may_be_new_but_its_folder_must_exist(tmp_path: Path) -> None:
    host = load_host(
        {"ssh": "lab@srv", "knownHostsFile": "new_known_hosts"}, home=tmp_path, base_dir=tmp_path
    )
    assert host is not None and host.known_hosts_file == str(tmp_path / "new_known_hosts")
    with pytest.raises(
        ConfigError, match=r"nexus:host.knownHostsFile: got 'nowhere/known_hosts', which is not"
    ):
        load_host(
            {"ssh": "lab@srv", "knownHostsFile": "nowhere/known_hosts"}, home=tmp_path, base_dir=tmp_path
        )


def test_a_resource_moved_to_another_host_is_made_anew_without_asking_either(tmp_path: Path) -> None:
    # No server answers at these addresses: a diff that tried to reach one would fail.
    olds = {"state_dir": str(tmp_path), "stack": "dev", "host": RemoteHost("a", "192.0.2.1").as_props()}
    news = {**olds, "host": RemoteHost("a", "192.0.2.2").as_props()}
    moved = OnHost("StateDir", lifecycles.StateDir()).diff(olds, news)
    assert moved.changes and moved.replaces == ["host"] and moved.delete_before_replace
    back_here = OnHost("StateDir", lifecycles.StateDir()).diff(olds, {**olds, "host": None})
    assert back_here.replaces == ["host"]


def test_a_delete_with_nothing_to_do_makes_no_call() -> None:
    # The image stays in the server's cache; no server answers at this address.
    image = {"url": "https://example.invalid/x.img", "host": RemoteHost("a", "192.0.2.1").as_props()}
    OnHost("BaseImage", lifecycles.BaseImage()).delete(image)


def test_closing_the_shared_connection_lets_a_step_under_way_finish(tmp_path: Path) -> None:
    # Stacks on one server share the connection: one stack's destroy must not cut another's step.
    with running_sshd(tmp_path / "sshd") as sshd:
        host = RemoteHost(
            sshd.user, sshd.host, sshd.port, str(sshd.private_key), str(tmp_path / "known_hosts")
        )
        subprocess.run(host.ssh_argv(["true"]), check=True, capture_output=True)
        under_way = subprocess.Popen(
            host.ssh_argv(["sh", "-c", "sleep 2; echo finished"]), stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)
        remote.close(host)
        assert under_way.communicate(timeout=30)[0].strip() == "finished" and under_way.returncode == 0
        deadline = time.monotonic() + 10
        while host.control_path().exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not host.control_path().exists(), "the connection is closed once nothing uses it"

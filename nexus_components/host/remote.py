"""The lab on another machine (`nexus:host`): the host layer's steps run on a server over SSH.

Agentless, as Ansible is: nothing of ours runs on the server between steps. Each step of a
host resource (its create, diff, update, read or delete) is one SSH command there,
`python3 -m nexus_components.host.remote_call`, which runs the same lifecycle code a local
lab runs. So a remote lab downloads, makes its disk and seed, starts QEMU, waits for it and
checks drift exactly as a local one does, on the server's files, processes and ports. A
server that cannot reach the image's source has it sent from this machine (`send_image`).

    this machine: the resource's step --ssh--> server: remote_call
        request: JSON on stdin; progress: `[step] ...` lines on stderr, relayed as they come;
        answer: one JSON document on stdout

The package's modules are copied to the server once per version of them, into
`~/.cache/nexus-nested-vm/remote/<digest>/`; a step that finds them missing copies them and
runs again. The server needs sshd, python3 (3.10 or later), QEMU and qemu-img.
No Pulumi import; the parts that need no server are unit-tested directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib
import io
import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from nexus_components.core import download, errors
from nexus_components.core.errors import (
    ConfigError,
    DownloadError,
    HostToolError,
    NexusError,
    SourceUnreachable,
)
from nexus_components.core.lifecycle import Created, Diff, Lifecycle, Props, in_preview
from nexus_components.core.progress import relay
from nexus_components.core.runner import CONTROL_PERSIST_SECONDS, SSH_UNREACHABLE, TIMED_OUT, output_tail

KEY = "nexus:host"
# `user@server` or `user@server:port`; the server a DNS name, IPv4 address or [IPv6] address.
SSH_ADDRESS = re.compile(
    r"^(?P<user>[A-Za-z_][A-Za-z0-9_.-]{0,31})@(?P<server>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?\Z"
)
SSH_ADDRESS_RULE = "user@server or user@server:port"
HOST_RULE = "'local', or {ssh: user@server[:port], keyFile, knownHostsFile} for a server"
SCHEMA: dict[str, Any] = {
    "type": ["string", "object"],
    "description": HOST_RULE,
    "if": {"type": "string"},
    "then": {"const": "local", "description": HOST_RULE},
    "else": {
        "additionalProperties": False,
        "required": ["ssh"],
        "properties": {
            "ssh": {"type": "string", "description": SSH_ADDRESS_RULE},
            "keyFile": {"type": "string", "minLength": 1},
            "knownHostsFile": {"type": "string", "minLength": 1},
        },
    },
}
PACKAGE = Path(__file__).resolve().parents[1]
# Relative to the server user's home: the copies of the package's modules, one per version.
CODE_ROOT = PurePosixPath(".cache/nexus-nested-vm/remote")
# The pseudo-resource whose steps ask the server itself (remote_call.HOST_STEPS).
HOST = "Host"
# remote_call's exit status when the package's modules are not on the server (yet).
CODE_MISSING = 97
CONNECT_TIMEOUT_SECONDS = 15
# Runs a step: $1 the code's folder under $HOME, then the resource and the method.
RUN_STEP = (
    'code="$HOME/$1"; shift; test -f "$code/.complete" || exit 97; '
    'PYTHONPATH="$code" exec python3 -m nexus_components.host.remote_call "$@"'
)
# Unpacks the package's modules from stdin; a second copy made at the same time loses quietly.
SHIP_CODE = (
    'code="$HOME/$1"; part="$code.part.$$"; rm -rf "$part" && mkdir -p "$part" && '
    'tar -xzf - -C "$part" && touch "$part/.complete" && '
    '{ mv -T "$part" "$code" 2>/dev/null || rm -rf "$part"; }'
)


@dataclass(frozen=True)
class RemoteHost:
    """The server a lab runs on, reached with the user's own OpenSSH client."""

    user: str
    server: str
    port: int = 22
    key_file: str | None = None
    known_hosts_file: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.server}:{self.port}"

    def as_props(self) -> Props:
        """As the host resources' `host` input (nested values go by their schema names)."""
        return {
            "user": self.user,
            "server": self.server,
            "port": self.port,
            "keyFile": self.key_file,
            "knownHostsFile": self.known_hosts_file,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, Any] | None) -> RemoteHost | None:
        if not props:
            return None
        return cls(
            user=props["user"],
            server=props["server"],
            port=int(props.get("port") or 22),
            key_file=props.get("keyFile"),
            known_hosts_file=props.get("knownHostsFile"),
        )

    def control_path(self) -> Path:
        key = f"server:{self.label}:{self.key_file}".encode()
        return Path(tempfile.gettempdir()) / f"nexus-host-{hashlib.sha256(key).hexdigest()[:16]}"

    def ssh_argv(self, command: Sequence[str]) -> list[str]:
        """ssh to the server running `command`, every word quoted (a value is data, never shell).

        The server's host key is checked against the user's known hosts (a new server is
        accepted on first use and remembered); the connection is shared between steps.
        """
        argv = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_SECONDS}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.control_path()}",
            "-o",
            f"ControlPersist={CONTROL_PERSIST_SECONDS}",
            "-p",
            str(self.port),
        ]
        if self.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
        if self.key_file:
            argv += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        return [*argv, f"{self.user}@{self.server}", "--", shlex.join(command)]

    def proxy_command(self) -> tuple[str, ...]:
        """ssh's ProxyCommand that reaches the VM's forwards through the server (a jump host).

        ssh expands `%` tokens in it, so a literal `%` in a value is doubled.
        """
        argv = ["ssh", "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR", *self._reach()]
        argv = [arg.replace("%", "%%") for arg in [*argv, f"{self.user}@{self.server}"]]
        return (*argv, "-W", "%h:%p")

    def tunnel_argv(self) -> list[str]:
        """ssh to the server for port forwards only: its own connection, ended by Ctrl-C."""
        options = ["ExitOnForwardFailure=yes", "StrictHostKeyChecking=accept-new", "ServerAliveInterval=15"]
        return ["ssh", "-N", *(arg for option in options for arg in ("-o", option)), *self._reach()]

    def _reach(self) -> list[str]:
        """The server's port, known hosts and key, as the user's own ssh is given them."""
        argv = ["-p", str(self.port)]
        if self.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
        if self.key_file:
            argv += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        return argv


# The script's body: each PORT or LOCAL:SERVER argument (default: the lab's TCP forwards, each
# on its own port) becomes an `ssh -L` from this machine's loopback to the server's, where QEMU
# listens.
TUNNEL_SCRIPT_BODY = r"""
[ $# -gt 0 ] || set -- $default_ports
count=$#
for pair do
  local_port=${pair%%:*} server_port=${pair#*:}
  case "$local_port:$server_port" in
    *[!0-9:]* | :* | *: | *:*:*)
      echo "tunnel.sh: got '$pair'; allowed: PORT, or LOCAL:SERVER (two port numbers: 18080:8080)" >&2
      exit 2 ;;
  esac
  set -- "$@" -L "127.0.0.1:$local_port:127.0.0.1:$server_port"
  echo "tunnel.sh: 127.0.0.1:$local_port here -> port $server_port on $server" >&2
done
shift "$count"
echo "tunnel.sh: forwarding until Ctrl-C" >&2
"""


def tunnel_script(host: RemoteHost, ports: Sequence[int]) -> str:
    """A script that brings a lab's forwarded ports from its server to this machine: they listen
    on the server's loopback, as a local lab's listen on this machine's."""
    target = f"{host.user}@{host.server}"
    return (
        "#!/bin/sh\n"
        "# Written by nexus-nested-vm: brings the lab's forwarded ports from its server to this machine.\n"
        "# Usage: tunnel.sh                   each forwarded TCP port on the same port here\n"
        "#        tunnel.sh PORT ...          these ports, each on the same port here\n"
        "#        tunnel.sh LOCAL:SERVER ...  the server's port SERVER on port LOCAL here\n"
        f"default_ports={shlex.quote(' '.join(f'{port}:{port}' for port in ports))}\n"
        f"server={shlex.quote(host.label)}\n"
        + TUNNEL_SCRIPT_BODY.lstrip("\n")
        + f'exec {shlex.join(host.tunnel_argv())} "$@" {shlex.quote(target)}\n'
    )


def load_host(raw: Any, *, home: Path, base_dir: Path) -> RemoteHost | None:
    """`nexus:host` (already schema-valid): None for `local`, else the server to run the lab on."""
    if raw is None or raw == "local":
        return None
    address = raw["ssh"]
    found = SSH_ADDRESS.match(address)
    if found is None:
        raise ConfigError(
            f"{KEY}.ssh: got {address!r}; allowed: {SSH_ADDRESS_RULE}",
            hint=f"set {KEY}.ssh to e.g. lab@build-server or lab@10.0.0.5:2200",
        )
    port = int(found["port"] or 22)
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"{KEY}.ssh: got port {port}; allowed: 1 to 65535", hint=f"fix the port in {KEY}.ssh"
        )
    files: dict[str, str | None] = {}
    for name in ("keyFile", "knownHostsFile"):
        value = raw.get(name)
        if value is None:
            files[name] = None
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        # The key must be there; a known-hosts file is made by ssh on first use, in a folder that is.
        usable = path.is_file() if name == "keyFile" else path.parent.is_dir() and not path.is_dir()
        if not usable:
            allowed = (
                "a file" if name == "keyFile" else "a file, or a new file's name in a folder that exists"
            )
            raise ConfigError(
                f"{KEY}.{name}: got {value!r}, which is not "
                + ("a file" if name == "keyFile" else "a file or a new file's name")
                + f" on this machine; allowed: {allowed} (absolute, ~/..., or relative to the project)",
                hint=f"check the path, or remove {KEY}.{name}"
                + (
                    " to use your SSH agent and ~/.ssh keys"
                    if name == "keyFile"
                    else " to use ~/.ssh/known_hosts"
                ),
            )
        files[name] = str(path)
    return RemoteHost(
        user=found["user"],
        server=found["server"].strip("[]"),
        port=port,
        key_file=files["keyFile"],
        known_hosts_file=files["knownHostsFile"],
    )


# Pure-Python packages the host layer imports, copied beside it: a server's python3 often has
# none of them (requests for downloads, pycdlib for the seed ISO, qemu.qmp for QMP, PyYAML for
# cloud-config). Compiled modules are left out; each of these falls back to Python code.
SHIPPED_DEPENDENCIES = (
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset_normalizer",
    "pycdlib",
    "qemu.qmp",
    "yaml",
)
SKIPPED_SUFFIXES = (".so", ".pyd", ".pyc")


def _bundle_files() -> list[tuple[str, Path]]:
    """(name in the bundle, file here) for the package and the dependencies it ships."""
    roots = [(PurePosixPath(PACKAGE.name), PACKAGE)] + [
        (PurePosixPath(*name.split(".")), Path(importlib.import_module(name).__file__ or "").parent)
        for name in SHIPPED_DEPENDENCIES
    ]
    found: list[tuple[str, Path]] = []
    for prefix, root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in SKIPPED_SUFFIXES:
                found.append((str(prefix / path.relative_to(root).as_posix()), path))
    return found


@functools.cache
def code_bundle() -> tuple[str, bytes]:
    """The package's modules as a gzipped tarball, and the digest that names their copy."""
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as bundle:
        for name, path in _bundle_files():
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data + b"\0")
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode, entry.mtime = len(data), 0o644, 0
            bundle.addfile(entry, io.BytesIO(data))
    return digest.hexdigest()[:16], buffer.getvalue()


def code_dir() -> str:
    return str(CODE_ROOT / code_bundle()[0])


def ship_code(host: RemoteHost) -> None:
    argv = host.ssh_argv(["sh", "-c", SHIP_CODE, "sh", code_dir()])
    result = subprocess.run(argv, input=code_bundle()[1], capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise _unreachable_or(
            host,
            result.returncode,
            argv,
            (result.stdout + result.stderr).decode(errors="replace"),
            what=f"could not copy nexus-nested-vm's modules to {host.label}",
            hint=f"check that the server has tar and that ~/{CODE_ROOT} is writable there",
        )


def _unreachable_or(
    host: RemoteHost, status: int, argv: Sequence[str], output: str, *, what: str, hint: str
) -> NexusError:
    if status == SSH_UNREACHABLE:
        return HostToolError(
            f"{KEY}: could not reach {host.label} over SSH",
            command=argv,
            output=output_tail(output),
            hint=f"check {KEY}.ssh, that sshd runs there and that your key "
            + (f"({host.key_file}) " if host.key_file else "")
            + f"is authorized: ssh -p {host.port} {host.user}@{host.server} true",
        )
    return HostToolError(
        f"{what} (exit status {status})", command=argv, output=output_tail(output), hint=hint
    )


def call(
    host: RemoteHost, resource: str, method: str, request: Mapping[str, Any], *, timeout: float = 7200
) -> Any:
    """One step on the server; its progress is relayed as it comes, its error raised here."""
    payload = json.dumps(request).encode() + b"\n"
    return _call(host, resource, method, lambda: [payload], timeout)


def _call(
    host: RemoteHost, resource: str, method: str, payload: Callable[[], Iterable[bytes]], timeout: float
) -> Any:
    """A step whose stdin is what `payload()` gives (called again for the second attempt)."""
    for attempt in (1, 2):
        status, stdout, stderr, argv = _run_step(host, resource, method, payload(), timeout)
        if status == CODE_MISSING and attempt == 1:
            ship_code(host)
            continue
        break
    if status != 0:
        raise _unreachable_or(
            host,
            status,
            argv,
            stderr,
            what=f"the step {resource}.{method} failed on {host.label}",
            hint="the output above says why; python3 (3.10 or later) must be installed on the server",
        )
    try:
        reply = json.loads(stdout)
    except json.JSONDecodeError as error:
        raise HostToolError(
            f"the step {resource}.{method} on {host.label} answered something that is not JSON",
            command=argv,
            output=output_tail(stdout + stderr),
            hint="check that the server's login shell prints nothing for non-interactive commands",
        ) from error
    if "error" in reply:
        raise rebuild_error(reply["error"], host)
    return reply["result"]


def send_image(host: RemoteHost, props: Props, unreachable: NexusError) -> Any:
    """BaseImage's create on a server that cannot reach the image's source: this machine reads
    it (downloads it, or reads its file) and sends the bytes through SSH as they come, writing
    nothing here; the server caches and checks them as it checks a download."""
    source = download.ImageSource(url=props["url"], sha256=props.get("sha256"))
    relay(f"[image] {host.label} cannot reach {source.url}; sending the image from this machine")
    # What an earlier copy that broke off left there: only the rest is sent.
    held = int(call(host, "BaseImage", "partial", {"props": props, "preview": False}, timeout=60))

    def payload() -> Iterator[bytes]:
        expected = download.expected_digest(source)
        with download.source_chunks(source, start=held) as (chunks, total, start):
            if start:
                kept = f"{start / (1 << 20):.1f} MiB"
                relay(f"[image] {host.label} kept {kept} of an earlier copy; sending the rest")
            request = {"props": props, "expected": expected, "total": total, "start": start, "preview": False}
            yield json.dumps(request).encode() + b"\n"
            yield from chunks

    try:
        return _call(host, "BaseImage", "receive", payload, timeout=7200)
    except SourceUnreachable as here:
        raise DownloadError(
            f"neither {host.label} nor this machine can reach {source.url}: "
            f"there, {unreachable.what}; here, {here.what}",
            hint=f"check the network, or set {source.url_key} to an image this machine or the server "
            "can read (a path or file:// URL is looked up on the server first, then here)",
        ) from here
    except OSError as error:  # the download here broke off (requests' errors are OSErrors)
        raise DownloadError(
            f"sending {source.url} from this machine to {host.label} broke off: {error}",
            hint="re-run `pulumi up`: the copy goes on from where it stopped",
        ) from error


def rebuild_error(parts: Mapping[str, Any], host: RemoteHost) -> NexusError:
    """The server's error as the same class, with the same words, saying where it happened."""
    kind = getattr(errors, str(parts.get("kind")), None)
    cls = kind if isinstance(kind, type) and issubclass(kind, NexusError) else NexusError
    return cls(
        f"{parts['what']} (on {host.label})",
        hint=parts.get("hint") or "",
        command=parts.get("command") or (),
        output=parts.get("output") or "",
    )


def _run_step(
    host: RemoteHost, resource: str, method: str, payload: Iterable[bytes], timeout: float
) -> tuple[int, str, str, list[str]]:
    argv = host.ssh_argv(["sh", "-c", RUN_STEP, "sh", code_dir(), resource, method])
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    other_lines: list[str] = []

    def relay_progress() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("["):
                relay(line)
            else:
                other_lines.append(line)

    # In the caller's context: that is where progress_to says the lines go.
    reader = threading.Thread(target=contextvars.copy_context().run, args=(relay_progress,), daemon=True)
    reader.start()
    ran_out = threading.Event()

    def end() -> None:
        ran_out.set()
        process.kill()

    # The reader owns stderr, so no communicate(): stdin written, stdout read, bounded by a timer.
    timer = threading.Timer(timeout, end)
    timer.start()
    chunks = iter(payload)
    # Open until the answer came (remote_call: its end closing interrupts the step), except
    # for an image's bytes, which end with it.
    keep_open = method != "receive"
    try:
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(BrokenPipeError):  # ssh ended early: its status says why
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.flush()
            if not keep_open:
                process.stdin.close()
        stdout = process.stdout.read().decode(errors="replace")
        process.wait()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        timer.cancel()
        reader.join(timeout=5)
        if isinstance(chunks, Generator):
            chunks.close()  # a source still open (a download cut short) is closed now
    if ran_out.is_set():
        other_lines.append(f"(ended after {timeout:.0f} s)")
        return TIMED_OUT, stdout, "\n".join(other_lines), argv
    return process.returncode, stdout, "\n".join(other_lines), argv


# The properties whose value names a file on the user's machine that a step on the server reads
# (the stack's private key: the VM's readiness check and the disk's growth log in with it).
USER_FILE_PROPS: dict[str, tuple[str, ...]] = {"QemuVm": ("private_key",)}


class OnHost(Lifecycle):
    """A host resource's lifecycle, run here or on the server its `host` property names."""

    def __init__(self, name: str, local: Lifecycle) -> None:
        self.name = name
        self.local = local
        self.has_update = local.has_update

    def _remote(self, method: str, about: Props, **parts: Any) -> tuple[RemoteHost | None, Any]:
        host = RemoteHost.from_props(about.get("host"))
        if host is None:
            return None, None
        request: dict[str, Any] = {**parts, "preview": in_preview()}
        # Only the steps that log into the VM need the key; a file gone from here is not sent
        # (SshKey makes it again before the VM's next create or update).
        files = {
            name: Path(about[name]).read_text()
            for name in USER_FILE_PROPS.get(self.name, ())
            if method in ("create", "update") and about.get(name) and Path(about[name]).is_file()
        }
        if files:
            request["files"] = files
        return host, call(host, self.name, method, request)

    def create(self, props: Props) -> Created:
        host = RemoteHost.from_props(props.get("host"))
        if host is None:
            return self.local.create(props)
        try:
            _, answer = self._remote("create", props, props=props)
        except SourceUnreachable as unreachable:
            if self.name != "BaseImage":
                raise
            answer = send_image(host, props, unreachable)
        return Created(answer["id"], answer["outs"])

    def diff(self, olds: Props, news: Props) -> Diff:
        if RemoteHost.from_props(olds.get("host")) != RemoteHost.from_props(news.get("host")):
            # Another machine: everything is made anew there (and deleted here, or there).
            return Diff(True, ["host"], delete_before_replace=True)
        host, answer = self._remote("diff", news, olds=olds, news=news)
        if host is None:
            return self.local.diff(olds, news)
        return Diff(answer["changes"], list(answer["replaces"]), bool(answer["delete_before_replace"]))

    def update(self, olds: Props, news: Props) -> Props:
        host, answer = self._remote("update", news, olds=olds, news=news)
        return self.local.update(olds, news) if host is None else dict(answer)

    def read(self, id_: str, props: Props) -> Props:
        host, answer = self._remote("read", props, id=id_, props=props)
        return self.local.read(id_, props) if host is None else dict(answer)

    def delete(self, props: Props) -> None:
        if type(self.local).delete is Lifecycle.delete:
            return  # nothing to delete (the image stays in the server's cache): no call
        host, _ = self._remote("delete", props, props=props)
        if host is None:
            self.local.delete(props)
        elif self.name == DELETED_LAST:
            close(host)


# The stack's directory on the server goes last: then the shared connection is closed, so
# destroy leaves no session of ours on the server.
DELETED_LAST = "StateDir"


def close(host: RemoteHost) -> None:
    """Ends the shared connection to the server (ssh's master and the server's session) as soon
    as no step uses it. Other stacks on the same server share it: `stop`, unlike `exit`, lets
    their steps under way finish, and their next step opens a new one."""
    path = host.control_path()
    if not path.exists():
        return
    argv = ["ssh", "-o", f"ControlPath={path}", "-O", "stop", f"{host.user}@{host.server}"]
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(argv, capture_output=True, timeout=30, check=False)

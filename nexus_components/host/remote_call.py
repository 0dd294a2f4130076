"""The server's end of a remote host: one step of one host resource, run on this machine.

`remote.py` on the user's machine runs `python3 -m nexus_components.host.remote_call
RESOURCE METHOD` over SSH, with the package's modules copied here. The request (the step's
properties, whether the engine previews, the user's files the step reads) comes as one JSON
document on stdin's first line; progress lines go to stderr as they are said; the answer is
one JSON document on stdout: `{"result": ...}` or, for an error of ours, `{"error": {...}}`
with its parts, so the user's machine raises the same error with the same words.

The caller keeps stdin open until the answer came: stdin ending first means the caller is
gone (a `pulumi` killed, a second Ctrl-C, a dropped connection), and the step is interrupted
as a signal interrupts a local one, instead of running on with nobody to answer.

Standard library and the host layer's own modules only: the server needs python3, not our
dependencies (a download over http(s) needs `requests`, see download.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from nexus_components.core.errors import NexusError
from nexus_components.core.lifecycle import Created, Diff, Lifecycle, Props, previewing
from nexus_components.core.ssh import SshTarget
from nexus_components.host import lifecycles
from nexus_components.host.hostfacts import (
    available_memory_mib,
    check_lab_files,
    detect_host,
    find_qemu_img,
)
from nexus_components.host.paths import VmPaths
from nexus_components.host.remote import HOST
from nexus_components.host.settings import VmConfig


class ServerQemuVm(lifecycles.QemuVm):
    """The VM on the server: the SSH command that reaches it from here is not the user's
    (theirs jumps through this server), so the ready line points to theirs."""

    def login_hint(self, target: SshTarget) -> str:
        return "log in from your machine with connect-ssh.sh or the sshCommand output"


# The host resources whose steps run where QEMU runs (SshKey stays on the user's machine).
LIFECYCLES: dict[str, Callable[[], Lifecycle]] = {
    "StateDir": lifecycles.StateDir,
    "BaseImage": lifecycles.BaseImage,
    "OverlayDisk": lifecycles.OverlayDisk,
    "CloudInitSeed": lifecycles.CloudInitSeed,
    "QemuVm": ServerQemuVm,
}
METHODS = ("create", "diff", "update", "read", "delete")
# BaseImage's create from the image's bytes, sent by the user's machine when this one cannot
# reach the source: the request's JSON on stdin's first line, then the bytes to its end. Before
# it, PARTIAL asks how many bytes an earlier copy that broke off left here, to go on from.
RECEIVE = "receive"
PARTIAL = "partial"
IMAGE_STEPS = (RECEIVE, PARTIAL)
# The host itself: what it offers (before anything is declared), what its files allow, and
# the memory it has for a fleet's labs (scripts/fleet).
HOST_STEPS = ("facts", "check", "memory")
# Where the user's files a step reads are kept on the server, by property: in the stack's own
# directory, under the names VmPaths gives them, so destroy removes them with the rest.
USER_FILES: dict[str, Callable[[VmPaths], Path]] = {
    # The stack's private key: the VM's readiness check logs in with it.
    "private_key": lambda paths: paths.ssh_private_key,
}


def run_step(lifecycle: Lifecycle, method: str, request: Mapping[str, Any], rest: BinaryIO) -> Any:
    """One call of the lifecycle, its answer as plain JSON values; `rest` is stdin after the request."""
    if isinstance(lifecycle, lifecycles.BaseImage) and method == PARTIAL:
        return lifecycle.partial(request["props"])
    if method in ("create", RECEIVE):
        made: Created = (
            lifecycle.receive(
                request["props"],
                _chunks(rest),
                request["expected"],
                total=request.get("total"),
                start=request.get("start", 0),
            )
            if isinstance(lifecycle, lifecycles.BaseImage) and method == RECEIVE
            else lifecycle.create(request["props"])
        )
        return {"id": made.id, "outs": made.outs}
    if method == "diff":
        found: Diff = lifecycle.diff(request["olds"], request["news"])
        return {
            "changes": found.changes,
            "replaces": found.replaces,
            "delete_before_replace": found.delete_before_replace,
        }
    if method == "update":
        return lifecycle.update(request["olds"], request["news"])
    if method == "read":
        return lifecycle.read(request["id"], request["props"])
    lifecycle.delete(request["props"])
    return None


def host_step(method: str, request: Mapping[str, Any]) -> Any:
    if method == "facts":
        vm = VmConfig(**request["vm"])
        facts = detect_host(vm)
        return {
            "home": str(Path.home()),
            "host": dataclasses.asdict(facts),
            "qemu_img": find_qemu_img(vm, facts.os),
        }
    if method == "memory":
        return {"available_mib": available_memory_mib()}
    check_lab_files(
        Path(request["state_dir"]),
        stack=request["stack"],
        cache_dir=Path(request["cache_dir"]),
        image_url=request["image_url"],
        disk_size=request["disk_size"],
        qemu_img=request["qemu_img"],
    )
    return None


def place_user_files(request: dict[str, Any]) -> dict[str, str]:
    """Write the user's files into the stack's directory here and point the properties at them.

    Returns the properties' values on the user's machine, put back into the answer so the
    state keeps them (a server path would read as a change at the next diff).
    """
    files: Mapping[str, str] = request.get("files") or {}
    originals: dict[str, str] = {}
    if not files:
        return originals
    for part in ("props", "olds", "news"):
        props: Props | None = request.get(part)
        if props is None:
            continue
        paths = VmPaths(Path(props["state_dir"]))
        for name, content in files.items():
            target = USER_FILES[name](paths)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Written private from the start: it may be a private key.
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(content)
            originals.setdefault(name, props[name])
            props[name] = str(target)
    return originals


def restore_user_files(answer: Any, originals: Mapping[str, str]) -> Any:
    props = answer.get("outs") if isinstance(answer, dict) and "outs" in answer else answer
    if isinstance(props, dict):
        for name, value in originals.items():
            if name in props:
                props[name] = value
    return answer


def error_parts(error: NexusError) -> dict[str, Any]:
    return {
        "kind": type(error).__name__,
        "what": error.what,
        "hint": error.hint,
        "command": error.command,
        "output": error.output,
    }


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(1 << 20):
        yield chunk


# After the interrupt, how long the step may take to unwind before the process ends anyway.
UNWIND_SECONDS = 30


def stop_when_the_caller_goes(stdin: BinaryIO, answered: threading.Event) -> None:
    def watch() -> None:
        # The descriptor, not the buffered reader: a thread blocked holding the reader's lock
        # would abort the interpreter's exit.
        while os.read(stdin.fileno(), 1 << 16):
            pass
        if answered.is_set():
            return
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(UNWIND_SECONDS)
        os._exit(130)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    resource, method = argv
    if resource == HOST:
        known = method in HOST_STEPS
    else:
        known = resource in LIFECYCLES and (
            method in METHODS or (resource == "BaseImage" and method in IMAGE_STEPS)
        )
    if not known:
        print(f"remote_call: unknown step {resource}.{method}", file=sys.stderr)
        return 2
    stdin = sys.stdin.buffer
    request = json.loads(stdin.readline())
    answered = threading.Event()
    if method != RECEIVE:  # the image's bytes end with stdin
        stop_when_the_caller_goes(stdin, answered)
    try:
        if resource == HOST:
            reply: dict[str, Any] = {"result": host_step(method, request)}
        else:
            originals = place_user_files(request)
            with previewing(bool(request.get("preview"))):
                answer = run_step(LIFECYCLES[resource](), method, request, stdin)
            reply = {"result": restore_user_files(answer, originals)}
    except NexusError as error:
        reply = {"error": error_parts(error)}
    except KeyboardInterrupt:
        return 130  # nobody waits for an answer
    answered.set()
    json.dump(reply, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

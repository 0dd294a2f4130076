"""`scripts/lab cp SRC DST`: copy a file or a folder between this machine and a layer of the lab.

    scripts/lab cp ./project vm:/home/ubuntu/        into the VM's folder
    scripts/lab cp playground:/work/out ./out        out of the container, named ./out
    scripts/lab cp vm:/etc/hostname inner:/tmp/      between two layers

Recursive, modes kept (tar through a pipe; see transfer.py), in either direction. A destination
that is an existing folder receives the source inside it; otherwise it becomes the copy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from nexus_components.cli.stack import LabOutputs
from nexus_components.cli.transfer import Endpoint, Layers, copy_commands, parse_endpoint
from nexus_components.core.errors import NexusError


def add_parser(subparsers: Any) -> None:
    command = subparsers.add_parser(
        "cp",
        help="copy a file or folder in or out of the VM, the playground container or the inner VM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("source", help="a path on this machine, or vm:PATH, playground:PATH, inner:PATH")
    command.add_argument("destination", help="the same forms as the source")
    command.set_defaults(run=run)


def layers_of(outputs: LabOutputs, *needed: str) -> Layers:
    return Layers(
        vm_ssh=outputs.vm_target().argv(connect_timeout=30),
        container=outputs.require("playgroundContainer", layer="playground container")
        if "playground" in needed
        else None,
        inner_script=outputs.require("innerVmShellScript", layer="inner VM") if "inner" in needed else None,
    )


def copy(source: Endpoint, destination: Endpoint, layers: Layers) -> None:
    send, receive = copy_commands(source, destination, layers)
    sender = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sender.stdout is not None
    try:
        received = subprocess.run(receive, stdin=sender.stdout, capture_output=True, check=False)
    finally:
        sender.stdout.close()
        sent_err = sender.stderr.read() if sender.stderr else b""
        sender.wait()
    if sender.returncode != 0:
        raise NexusError(
            f"could not read {source}",
            command=send,
            output=sent_err.decode(errors="replace").strip(),
            hint="check the path and that the layer is up",
        )
    if received.returncode != 0:
        raise NexusError(
            f"could not write {destination}",
            command=receive,
            output=(received.stderr or received.stdout).decode(errors="replace").strip(),
            hint="check that the destination's folder is writable by the layer's user",
        )


def run(args: argparse.Namespace, outputs: LabOutputs) -> int:
    source, destination = parse_endpoint(args.source), parse_endpoint(args.destination)
    layers = layers_of(outputs, source.layer, destination.layer)
    copy(source, destination, layers)
    print(f"copied {source} -> {destination}", file=sys.stderr)
    return 0

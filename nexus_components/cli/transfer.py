"""`scripts/lab cp`'s pure part: where each side of a copy is, and the two commands (argv lists)
whose pipe carries it: a `tar` that packs the source, a `tar` that unpacks it at the destination.

tar keeps the modes (and, run as root, the owners) of a whole tree. No user value is ever part
of a shell string: the fixed scripts below take the paths as their positional arguments
(`sh -c SCRIPT sh PATH...`); where a remote shell reads the line (ssh joins its arguments into
one), every word is quoted with shlex.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from nexus_components.core.errors import NexusError

LAYERS = ("vm", "playground", "inner")

# Packs $1 (a file or a folder) as one entry, ./<its name>, so the receiver knows what arrives.
SEND = 'set -eu; src=$1; [ -e "$src" ] || { echo "no such file or folder: $src" >&2; exit 2; }; ' + (
    'cd "$(dirname -- "$src")"; exec tar -cf - "./$(basename -- "$src")"'
)
# Unpacks into $1 when it is a folder (cp's `cp -r SRC DIR/`); else $1 becomes the copy of the
# source, named $2 inside the archive: unpacked beside $1 in a fresh folder, then renamed.
RECEIVE = (
    "set -eu; dst=$1; name=$2; "
    'if [ -d "$dst" ]; then exec tar -C "$dst" --no-same-owner -xpf -; fi; '
    'parent=$(dirname -- "$dst"); mkdir -p -- "$parent"; '
    'tmp=$(mktemp -d "$parent/.nexus-cp.XXXXXX"); '
    'tar -C "$tmp" --no-same-owner -xpf - && mv -- "$tmp/$name" "$dst" && rmdir -- "$tmp" '
    '|| { rm -rf -- "$tmp"; exit 1; }'
)


@dataclass(frozen=True)
class Endpoint:
    layer: str  # "host" or one of LAYERS
    path: str

    def __str__(self) -> str:
        return self.path if self.layer == "host" else f"{self.layer}:{self.path}"


def parse_endpoint(text: str) -> Endpoint:
    """`vm:/path`, `playground:/path`, `inner:/path`, or a path on this machine (anything else,
    including Windows paths such as C:\\work, whose drive letter is no layer's name)."""
    layer, colon, path = text.partition(":")
    if colon and layer in LAYERS:
        if not path:
            raise NexusError(f"{text!r}: no path after {layer}:", hint=f"write {layer}:/some/path")
        return Endpoint(layer, path)
    if not text:
        raise NexusError("an empty path", hint="write a path on this machine or vm:/path")
    return Endpoint("host", text)


def base_name(path: str) -> str:
    """The name the copied entry has in the archive (as `basename` in the sending shell)."""
    stripped = path.rstrip("/\\") or path
    for separator in ("/", "\\"):
        stripped = stripped.rsplit(separator, 1)[-1]
    return stripped


@dataclass(frozen=True)
class Layers:
    """How to run a command in each layer that is up (from the stack's outputs)."""

    vm_ssh: Sequence[str]  # ssh ... user@host, without a command
    container: str | None = None
    inner_script: str | None = None


def in_layer(layer: str, command: Sequence[str], layers: Layers, *, stdin: bool = False) -> list[str]:
    """`command` (an argv) run in `layer`; on the host as it is."""
    if layer == "host":
        return list(command)
    if layer == "vm":
        return [*layers.vm_ssh, "--", shlex.join(command)]
    if layer == "playground":
        if layers.container is None:
            raise NexusError("the stack has no playground container", hint="enable nexus:playground")
        docker = ["docker", "exec", *(["-i"] if stdin else []), layers.container, *command]
        return [*layers.vm_ssh, "--", shlex.join(docker)]
    if layer == "inner":
        if layers.inner_script is None:
            raise NexusError("the stack has no inner VM", hint="enable nexus:innerVm")
        # The script execs ssh with "$@": one word, quoted for the inner VM's shell.
        return [layers.inner_script, shlex.join(command)]
    raise ValueError(f"unknown layer {layer!r}")


def copy_commands(source: Endpoint, destination: Endpoint, layers: Layers) -> tuple[list[str], list[str]]:
    """(the packing command, the unpacking command): the first's stdout feeds the second's stdin."""
    send = in_layer(source.layer, ["sh", "-c", SEND, "sh", source.path], layers)
    receive = in_layer(
        destination.layer,
        ["sh", "-c", RECEIVE, "sh", destination.path, base_name(source.path)],
        layers,
        stdin=True,
    )
    return send, receive

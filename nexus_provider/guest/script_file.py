"""nexus:guest:ScriptFile, a helper script beside the stack."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.guest import lifecycles

from ..spec import ResourceSpec, absolute_path, prop


@dataclass(frozen=True)
class ScriptFileArgs:
    path: str = absolute_path("Where the script goes (in the stack's directory); a new path replaces it.")
    content: str = prop("The script, written with mode 0755.")


@dataclass(frozen=True)
class ScriptFileState:
    pass


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:ScriptFile",
    description="A generated helper script in the stack's directory (connect-playground.sh, "
    "connect-inner-vm.sh): written again when its content changes or it was deleted, removed on destroy.",
    inputs=ScriptFileArgs,
    outputs=ScriptFileState,
    lifecycle=lifecycles.ScriptFile(),
)

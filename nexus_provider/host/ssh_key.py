"""nexus:host:SshKey, the key pair the stack logs into its VM with."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.core.lifecycle import Props
from nexus_components.host import lifecycles

from ..spec import Failure, ResourceSpec, absolute_path, prop


@dataclass(frozen=True)
class SshKeyArgs:
    state_dir: str = absolute_path(
        "The stack's directory, where a generated pair is written (`ssh/id_ed25519` and `.pub`, mode 0600)."
    )
    comment: str = prop("The comment of a generated key, e.g. `nexus-<stack>`.")
    private_key_file: str | None = prop(
        "Your own private key instead of a generated one (with `publicKeyFile`); it is never deleted."
    )
    public_key_file: str | None = prop("The public half of `privateKeyFile`.")


@dataclass(frozen=True)
class SshKeyState:
    private_key_path: str = prop(
        "The private key's file: the VM is reached with it (the path, never the key)."
    )
    public_key: str = prop("The public key, in OpenSSH format, as the VM's cloud-init seed authorises it.")
    generated: bool = prop("Whether the pair was generated here (and so is deleted with the stack).")


def _both_or_neither(props: Props) -> list[Failure]:
    if bool(props.get("private_key_file")) == bool(props.get("public_key_file")):
        return []
    given, missing = (
        ("privateKeyFile", "publicKeyFile")
        if props.get("private_key_file")
        else ("publicKeyFile", "privateKeyFile")
    )
    return [Failure(missing, f"missing while {given} is set; allowed: both key files, or neither")]


RESOURCE = ResourceSpec(
    pulumi_type="nexus:host:SshKey",
    description="The stack's SSH key pair: an ed25519 pair generated in the stack's directory, or "
    "your own pair, which is used as it is and never deleted.",
    inputs=SshKeyArgs,
    outputs=SshKeyState,
    lifecycle=lifecycles.SshKey(),
    checks=_both_or_neither,
)

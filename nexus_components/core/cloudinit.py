"""Render the NoCloud cloud-init seed (user-data, meta-data) for the lab VM.

Pure functions, no Pulumi: the program feeds the rendered text into the seed ISO and
into resource inputs, so the same stack config always gives the same bytes.

Nothing here builds shell strings. `runcmd` entries are argv lists, which cloud-init
quotes itself, so a username or package name is always data, never shell syntax.
Validation of the username/hostname belongs to the config layer, not here.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from nexus_components.core.errors import ConfigError, NexusError

# Guest architecture -> Ubuntu package that ships that qemu-system-* binary, so the
# guest can run its own (nested) VMs. qemu-system-aarch64 lives in qemu-system-arm.
_QEMU_PACKAGE = {
    "x86_64": "qemu-system-x86",
    "aarch64": "qemu-system-arm",
}

# Groups the lab user joins once the packages that create them are installed.
_LAB_GROUPS = ("docker", "kvm", "libvirt")


class _Argv(list[str]):
    """A runcmd argv list, written in YAML flow style (`- [usermod, -aG, ...]`) to read as a command."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Argv, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)

# cloud-init's last final-stage module prints this on the console, which is the serial
# port QEMU writes to a file: the host watches that file for READY_LINE instead of polling
# SSH while the guest boots.
READY_LINE = "nexus lab is ready:"
FINAL_MESSAGE = READY_LINE + " cloud-init $VERSION finished after $UPTIME seconds"
USER_DATA_KEY = "nexus:guest.userData"


@dataclass(frozen=True)
class CloudInitSpec:
    username: str  # already validated by config (^[a-z_][a-z0-9_-]{0,31}$)
    ssh_public_key: str  # one OpenSSH public key line
    hostname: str
    guest_arch: str  # "x86_64" or "aarch64"
    install_packages: bool = True  # False -> no package step (fast test stacks)
    extra_packages: tuple[str, ...] = ()
    extra_runcmd: tuple[tuple[str, ...], ...] = ()  # argv lists, run after the seed's runcmd
    extra_user_data: Mapping[str, Any] = field(default_factory=dict)  # deep-merged last


def seed_packages(guest_arch: str) -> list[str]:
    """Packages of the seed document: Docker, QEMU/KVM tooling and libvirt."""
    try:
        qemu = _QEMU_PACKAGE[guest_arch]
    except KeyError:
        raise NexusError(
            f"unsupported guest architecture {guest_arch!r} for the cloud-init package list",
            hint="use one of: " + ", ".join(sorted(_QEMU_PACKAGE)),
        ) from None
    # libvirt-daemon-system (not bare libvirt-daemon) ships the libvirtd unit and the
    # libvirt group; cpu-checker gives `kvm-ok` to see whether nested KVM works.
    return ["docker.io", qemu, "qemu-utils", "cpu-checker", "libvirt-daemon-system", "libvirt-clients"]


def render_user_data(spec: CloudInitSpec) -> str:
    """The `#cloud-config` document for `spec`."""
    user: dict[str, Any] = {
        "name": spec.username,
        # Only groups that exist in the stock image: cloud-init fails user creation on
        # an unknown group, and docker/libvirt appear only after the package step.
        "groups": ["sudo"],
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "shell": "/bin/bash",
        "lock_passwd": True,
        "ssh_authorized_keys": [spec.ssh_public_key.strip()],
    }
    doc: dict[str, Any] = {
        "hostname": spec.hostname,
        # Puts the hostname in /etc/hosts so sudo doesn't stall resolving it.
        "manage_etc_hosts": True,
        "users": [user],
        "disable_root": True,
        "ssh_pwauth": False,
    }
    runcmd: list[_Argv] = []
    if spec.install_packages:
        doc["package_update"] = True
        doc["packages"] = _dedupe([*seed_packages(spec.guest_arch), *spec.extra_packages])
        # runcmd runs in the final stage, after packages created the groups. One usermod
        # per group so a missing group doesn't stop the others; "--" keeps a name that
        # starts with "-" from being read as an option.
        runcmd += [_Argv(["usermod", "-aG", group, "--", spec.username]) for group in _LAB_GROUPS]
        runcmd += [
            _Argv(["systemctl", "enable", "--now", "docker"]),
            _Argv(["systemctl", "enable", "--now", "libvirtd"]),
        ]
    runcmd += [_Argv(argv) for argv in spec.extra_runcmd]
    if runcmd:
        doc["runcmd"] = runcmd
    doc["final_message"] = FINAL_MESSAGE

    merged = merge_user_data(doc, spec.extra_user_data)
    try:
        body = yaml.dump(merged, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{USER_DATA_KEY} holds a value that cannot be written as YAML: {exc}",
            hint=f"use only strings, numbers, booleans, lists and mappings in {USER_DATA_KEY}",
        ) from exc
    return "#cloud-config\n" + body


def render_meta_data(*, instance_id: str, hostname: str) -> str:
    """NoCloud meta-data: the instance id decides whether cloud-init runs again."""
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)


def instance_id_for(user_data: str, hostname: str) -> str:
    """Content-derived instance id: it changes iff the seed content changes.

    cloud-init runs its once-per-instance modules only for a new instance id, so a
    changed seed must change the id while an unchanged one must keep it.
    """
    # NUL separator: ("ab", "c") and ("a", "bc") must not hash alike.
    digest = hashlib.sha256(f"{user_data}\0{hostname}".encode()).hexdigest()
    return "nexus-" + digest[:16]


def merge_user_data(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge `extra` into a copy of `base`; neither input is modified.

    Mappings merge recursively, lists append the items of `extra` not already present
    (exact-equality dedupe), and any other value from `extra` replaces the base value.
    A list or mapping meeting a different kind of value is a ConfigError: silently
    replacing e.g. the generated `runcmd` list with a string would drop the lab setup.
    """
    return _merge_dicts(copy.deepcopy(base), extra, path=())


def _merge_dicts(base: dict[str, Any], extra: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key, value in extra.items():
        key_path = (*path, str(key))
        if key not in base:
            base[key] = _plain(value)
            continue
        current = base[key]
        if isinstance(current, dict) and isinstance(value, Mapping):
            base[key] = _merge_dicts(current, value, key_path)
        elif isinstance(current, list) and _is_sequence(value):
            for item in value:
                plain = _plain(item)
                if plain not in current:
                    current.append(plain)
        elif isinstance(current, (dict, list)) or isinstance(value, Mapping) or _is_sequence(value):
            key = ".".join([USER_DATA_KEY, *key_path])
            merged = isinstance(current, (dict, list))
            effect = "merged into the one the lab generates" if merged else "it replaces the generated value"
            raise ConfigError(
                f"{key}: got {value!r} ({_kind(value)}); allowed: {_kind(current)}, {effect}",
                hint=f"give {key} {_kind(current)} value or remove it",
            )
        else:
            base[key] = _plain(value)
    return base


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if _is_sequence(value):
        return "a list"
    return f"a {type(value).__name__}"


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _plain(value: Any) -> Any:
    """Deep copy into dict/list so yaml.safe_dump accepts it (it rejects tuples, Mapping views)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if _is_sequence(value):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))

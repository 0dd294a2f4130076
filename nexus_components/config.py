"""The stack configuration: one JSON Schema, checked before any resource is registered.

Pulumi hands us the `nexus:` namespace as a mapping of top-level keys (`image`, `vm`,
`network`, `guest`, `paths`) to structured objects. `load_config` validates the whole
document with `jsonschema`, then applies the checks a schema cannot express (unique
ports, a resolvable home directory) and returns frozen dataclasses with every default
filled in. Errors name the key (`nexus:vm.memoryMiB`), the bad value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ConfigError
from .guest.settings import (
    INNER_VM_SCHEMA,
    PLAYGROUND_SCHEMA,
    InnerVmConfig,
    PlaygroundConfig,
    load_inner_vm,
    load_playground,
)
from .paths import VmPaths

NAMESPACE = "nexus"

UBUNTU_2404_AMD64 = (
    "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img"
)
UBUNTU_2404_ARM64 = (
    "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-arm64.img"
)

ARCHES = ("x86_64", "aarch64")
ACCELERATORS = ("auto", "kvm", "hvf", "whpx", "tcg")

# Values that end up as QEMU option values or file names: no commas (QEMU's option
# separator), no whitespace, no shell metacharacters, no path separators.
# Patterns end in \Z, not $: Python's `$` also matches before a trailing newline, which
# YAML block scalars produce.
_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z"
# Executables and firmware files: a plain program name or a path. Commas would split
# QEMU's `file=` option; control characters and newlines have no business in a path.
_PATH = r"^[^\x00-\x1f,]+\Z"
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "image": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url": {
                    "type": "string",
                    "minLength": 1,
                    # A URL has no whitespace; anything without a scheme is a local path.
                    "pattern": r"^(https?://\S+|file://\S+|(?![A-Za-z][A-Za-z0-9+.-]+://)[^\x00-\x1f]+)\Z",
                    "description": "http(s):// URL, file:// URL or local path of a qcow2 cloud image",
                },
                "sha256": {"type": "string", "pattern": r"^[0-9a-fA-F]{64}\Z"},
            },
        },
        "vm": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z][a-z0-9-]{0,30}\Z"},
                "arch": {"enum": list(ARCHES)},
                "cpus": {"type": "integer", "minimum": 1, "maximum": 64},
                "memoryMiB": {"type": "integer", "minimum": 512, "maximum": 262144},
                "diskSize": {"type": "string", "pattern": r"^[1-9][0-9]{0,5}[MGT]\Z"},
                "accelerator": {"enum": list(ACCELERATORS)},
                "machine": {"type": "string", "pattern": _TOKEN},
                "cpuModel": {"type": "string", "pattern": _TOKEN},
                "qemuBinary": {"type": "string", "minLength": 1, "pattern": _PATH},
                "qemuImgBinary": {"type": "string", "minLength": 1, "pattern": _PATH},
                "firmwareCode": {"type": "string", "minLength": 1, "pattern": _PATH},
                "firmwareVars": {"type": "string", "minLength": 1, "pattern": _PATH},
                "bootTimeoutSeconds": {"type": "integer", "minimum": 30, "maximum": 7200},
            },
        },
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                # QEMU's user networking forwards only from IPv4 host addresses.
                "bindAddress": {"enum": ["127.0.0.1", "0.0.0.0"]},
                "sshPort": _PORT,
                "qmpPort": _PORT,
                "forwards": {
                    "type": "array",
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["host", "guest"],
                        "properties": {
                            "host": _PORT,
                            "guest": _PORT,
                            "protocol": {"enum": ["tcp", "udp"]},
                        },
                    },
                },
            },
        },
        "guest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "username": {"type": "string", "pattern": r"^[a-z_][a-z0-9_-]{0,31}\Z"},
                "hostname": {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"},
                "sshPublicKeyFile": {"type": "string", "minLength": 1, "pattern": _PATH},
                "sshPrivateKeyFile": {"type": "string", "minLength": 1, "pattern": _PATH},
                "installPackages": {"type": "boolean"},
                "packages": {
                    "type": "array",
                    "maxItems": 200,
                    "items": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9+.:=~-]*\Z"},
                },
                "userData": {"type": "object"},
            },
        },
        "paths": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "stateDir": {"type": "string", "minLength": 1, "pattern": _PATH},
                "cacheDir": {"type": "string", "minLength": 1, "pattern": _PATH},
            },
        },
        # The guest layers (nexus_components/guest/settings.py).
        "playground": PLAYGROUND_SCHEMA,
        "innerVm": INNER_VM_SCHEMA,
    },
}

_ALLOWED_BY_KEYWORD: dict[str, Callable[[Any], str]] = {
    "enum": lambda schema: "one of " + ", ".join(repr(v) for v in schema["enum"]),
    "pattern": lambda schema: f"a string matching {schema['pattern']}",
    "minimum": lambda schema: f"at least {schema['minimum']}",
    "maximum": lambda schema: f"at most {schema['maximum']}",
    "type": lambda schema: f"a value of type {schema['type']}",
    "minLength": lambda schema: "a non-empty string",
    "maxItems": lambda schema: f"at most {schema['maxItems']} items",
    "maxLength": lambda schema: f"at most {schema['maxLength']} characters",
}


@dataclass(frozen=True)
class PortForward:
    host: int
    guest: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ImageConfig:
    url: str
    sha256: str | None


@dataclass(frozen=True)
class VmConfig:
    name: str
    arch: str
    cpus: int
    memory_mib: int
    disk_size: str
    accelerator: str
    machine: str | None
    cpu_model: str | None
    qemu_binary: str | None
    qemu_img_binary: str
    firmware_code: str | None
    firmware_vars: str | None
    boot_timeout_seconds: int


@dataclass(frozen=True)
class NetworkConfig:
    bind_address: str
    ssh_port: int
    forwards: tuple[PortForward, ...]
    # Only used on Windows, whose QEMU cannot put QMP on a UNIX socket.
    qmp_port: int = 4444

    @property
    def ssh_host(self) -> str:
        """Where the host reaches the forwarded SSH port."""
        return "127.0.0.1" if self.bind_address == "0.0.0.0" else self.bind_address

    def all_forwards(self) -> tuple[PortForward, ...]:
        """SSH first, then the extra forwards: the order QEMU gets them in."""
        return (PortForward(self.ssh_port, 22), *self.forwards)

    def keyed_forwards(self) -> list[tuple[str, PortForward]]:
        """Each forward with the config key that sets its host port, for error messages."""
        keys = ["nexus:network.sshPort"] + [
            f"nexus:network.forwards[{i}].host" for i in range(len(self.forwards))
        ]
        return list(zip(keys, self.all_forwards(), strict=True))


@dataclass(frozen=True)
class GuestConfig:
    username: str
    hostname: str
    ssh_public_key_file: str | None
    ssh_private_key_file: str | None
    install_packages: bool
    packages: tuple[str, ...]
    user_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NexusConfig:
    stack: str
    image: ImageConfig
    vm: VmConfig
    network: NetworkConfig
    guest: GuestConfig
    state_dir: Path
    cache_dir: Path
    playground: PlaygroundConfig = field(default_factory=PlaygroundConfig)
    inner_vm: InnerVmConfig = field(default_factory=InnerVmConfig)


def default_image_url(arch: str) -> str:
    return UBUNTU_2404_ARM64 if arch == "aarch64" else UBUNTU_2404_AMD64


def disk_size_bytes(size: str) -> int:
    """'20G' -> bytes, with QEMU's binary units."""
    units = {"M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(size[:-1]) * units[size[-1]]


def load_config(
    raw: Mapping[str, Any], *, stack: str, home: Path, project_dir: Path | None = None
) -> NexusConfig:
    """Validate the `nexus:` namespace and fill in the defaults (the seed's values)."""
    document = {key: value for key, value in raw.items() if value is not None}
    _validate(document)

    image = document.get("image", {})
    vm = document.get("vm", {})
    network = document.get("network", {})
    guest = document.get("guest", {})
    paths = document.get("paths", {})

    arch = vm.get("arch", "x86_64")
    # JSON Schema counts 2.0 as an integer; int() keeps "2.0" off QEMU's command line.
    forwards = tuple(
        PortForward(int(f["host"]), int(f["guest"]), f.get("protocol", "tcp"))
        for f in network.get("forwards", [{"host": 8080, "guest": 80}, {"host": 8443, "guest": 443}])
    )
    network_config = NetworkConfig(
        bind_address=network.get("bindAddress", "127.0.0.1"),
        ssh_port=int(network.get("sshPort", 2222)),
        qmp_port=int(network.get("qmpPort", 4444)),
        forwards=forwards,
    )
    _check_unique_host_ports(network_config)
    _check_key_pair(guest)

    name = vm.get("name", f"nexus-{_slug(stack)[:25]}".rstrip("-"))
    state_dir = _resolve_dir(
        "stateDir", paths.get("stateDir"), home / ".nexus-nested-vm" / "stacks" / _slug(stack), home
    )
    _check_socket_path_fits(state_dir)
    playground = load_playground(
        document.get("playground", {}), home=home, base_dir=project_dir or Path.cwd()
    )
    return NexusConfig(
        stack=stack,
        image=ImageConfig(url=image.get("url", default_image_url(arch)), sha256=_lower(image.get("sha256"))),
        vm=VmConfig(
            name=name,
            arch=arch,
            cpus=int(vm.get("cpus", 2)),
            memory_mib=int(vm.get("memoryMiB", 4096)),
            disk_size=vm.get("diskSize", "20G"),
            accelerator=vm.get("accelerator", "auto"),
            machine=vm.get("machine"),
            cpu_model=vm.get("cpuModel"),
            qemu_binary=vm.get("qemuBinary"),
            qemu_img_binary=vm.get("qemuImgBinary", "qemu-img"),
            firmware_code=vm.get("firmwareCode"),
            firmware_vars=vm.get("firmwareVars"),
            boot_timeout_seconds=int(vm.get("bootTimeoutSeconds", 900)),
        ),
        network=network_config,
        guest=GuestConfig(
            username=guest.get("username", "ubuntu"),
            hostname=guest.get("hostname", name),
            ssh_public_key_file=guest.get("sshPublicKeyFile"),
            ssh_private_key_file=guest.get("sshPrivateKeyFile"),
            install_packages=guest.get("installPackages", True),
            packages=tuple(guest.get("packages", [])),
            user_data=guest.get("userData", {}),
        ),
        state_dir=state_dir,
        cache_dir=_resolve_dir(
            "cacheDir", paths.get("cacheDir"), home / ".cache" / "nexus-nested-vm" / "images", home
        ),
        playground=playground,
        inner_vm=load_inner_vm(document.get("innerVm", {}), playground),
    )


def _validate(document: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(
            "invalid stack configuration:\n" + "\n".join("  " + _describe(e) for e in errors),
            hint="fix the keys above in stacks/Pulumi.<stack>.yaml "
            "or with `pulumi config set --path <key> <value>`",
        )


def _describe(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))  # type: ignore[union-attr]
        extra = sorted(set(error.instance) - set(known)) if isinstance(error.instance, dict) else []
        where = ", ".join(_key([*path, name]) for name in extra) or _key(path)
        return f"{where}: unknown key; allowed keys here: {', '.join(known)}"
    if error.validator == "required":
        return f"{_key(path)}: {error.message}"
    allowed: Callable[[Any], str] | None = _ALLOWED_BY_KEYWORD.get(str(error.validator))
    expectation = allowed(error.schema) if allowed else error.message
    return f"{_key(path)}: got {error.instance!r}; allowed: {expectation}"


def _key(path: list[Any]) -> str:
    if not path:
        return NAMESPACE
    head, *rest = path
    key = f"{NAMESPACE}:{head}"
    for part in rest:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def _check_unique_host_ports(network: NetworkConfig) -> None:
    seen: dict[tuple[str, int], str] = {}
    for key, forward in network.keyed_forwards():
        previous = seen.setdefault((forward.protocol, forward.host), key)
        if previous != key:
            raise ConfigError(
                f"{key}: host port {forward.host} is already used by {previous}",
                hint="give every forward its own host port",
            )


def _check_key_pair(guest: Mapping[str, Any]) -> None:
    given = [k for k in ("sshPublicKeyFile", "sshPrivateKeyFile") if k in guest]
    if len(given) == 1:
        missing = ({"sshPublicKeyFile", "sshPrivateKeyFile"} - set(given)).pop()
        raise ConfigError(
            f"nexus:guest.{given[0]} is set but nexus:guest.{missing} is not",
            hint="set both to use your own key pair, or neither to have a per-stack key generated",
        )


# sun_path holds 104 bytes on macOS (108 on Linux); QMP's socket lives in the state dir.
_MAX_SOCKET_PATH = 103


def _check_socket_path_fits(state_dir: Path) -> None:
    longest_dir = _MAX_SOCKET_PATH - len(VmPaths(state_dir).qmp_socket.name) - 1
    if len(str(state_dir).encode()) > longest_dir:
        raise ConfigError(
            f"nexus:paths.stateDir: {str(state_dir)!r} is too long for QEMU's control socket "
            f"({len(str(state_dir).encode())} bytes; allowed: at most {longest_dir})",
            hint="choose a shorter state directory (the default ~/.nexus-nested-vm/stacks/<stack> fits)",
        )


def _resolve_dir(key: str, value: str | None, default: Path, home: Path) -> Path:
    if value is None:
        return default
    path = Path(value)
    if ".." in path.parts:
        raise ConfigError(
            f"nexus:paths.{key}: got {value!r}; allowed: a path without '..' components",
            hint="give the directory's real absolute path",
        )
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    if not path.is_absolute():
        raise ConfigError(
            f"nexus:paths.{key}: got {value!r}; allowed: an absolute path or one starting with ~/",
            hint="a relative state or cache directory would depend on where pulumi runs",
        )
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "stack"


def _lower(value: str | None) -> str | None:
    return value.lower() if value else None

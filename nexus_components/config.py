"""The stack configuration: one JSON Schema, checked before any resource is registered.

Pulumi hands us the `nexus:` namespace as a mapping of top-level keys (`image`, `vm`,
`network`, `guest`, `paths`) to structured objects. `load_config` validates the whole
document with `jsonschema`, then applies the checks a schema cannot express (unique
ports, a resolvable home directory, files that must be on this machine, the memory an
inner VM leaves the VM) and returns frozen dataclasses with every default filled in.
Errors name the key (`nexus:vm.memoryMiB`), the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from nexus_components.core import cloudinit
from nexus_components.core.errors import ConfigError
from nexus_components.guest.settings import (
    INNER_VM_MIN_MEMORY_MIB,
    INNER_VM_SCHEMA,
    PLAYGROUND_SCHEMA,
    InnerVmConfig,
    PlaygroundConfig,
    Volume,
    load_inner_vm,
    load_playground,
)
from nexus_components.host import mounts as host_mounts
from nexus_components.host import remote
from nexus_components.host.hostfacts import host_os as this_host_os
from nexus_components.host.paths import VmPaths
from nexus_components.host.settings import (
    GUEST_SSH_PORT,
    GuestConfig,
    HostConfig,
    ImageConfig,
    NetworkConfig,
    PortForward,
    VmConfig,
    default_image_url,
)

NAMESPACE = "nexus"

ARCHES = ("x86_64", "aarch64")
ACCELERATORS = ("auto", "kvm", "hvf", "whpx", "tcg")
# running: QEMU runs the VM; suspended: its running state is saved in its disk and QEMU stopped.
VM_STATES = ("running", "suspended")

# Values that end up as QEMU option values or file names: no commas (QEMU's option
# separator), no whitespace, no shell metacharacters, no path separators.
# Patterns end in \Z, not $: Python's `$` also matches before a trailing newline, which
# YAML block scalars produce.
_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z"
_TOKEN_RULE = "a QEMU name: letters, digits, '.', '_', '+' and '-', starting with a letter or digit"
# Executables and firmware files: a plain program name or a path. Commas would split
# QEMU's `file=` option; control characters and newlines have no business in a path.
_PATH = r"^[^\x00-\x1f,]+\Z"
_PATH_RULE = "a file name or path without commas or control characters"
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
# What the VM needs for itself (its system, cloud-init, Docker, the playground container),
# hence the floor of nexus:vm.memoryMiB. An inner VM's QEMU takes its guest's RAM, plus its
# own overhead, on top of that: so the inner VM must leave the VM at least this much too.
VM_MIN_MEMORY_MIB = 512
VM_DEFAULT_MEMORY_MIB = 4096
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
                    "description": "an http:// or https:// URL or a file:// URL (without spaces), "
                    "or a local file path, of a qcow2 cloud image",
                },
                "sha256": {
                    "type": "string",
                    "pattern": r"^[0-9a-fA-F]{64}\Z",
                    "description": "a SHA-256 digest: 64 hexadecimal digits, as `sha256sum` prints it",
                },
            },
        },
        "vm": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": r"^[a-z][a-z0-9-]{0,30}\Z",
                    "description": "lowercase letters, digits and '-', starting with a letter, "
                    "at most 31 characters",
                },
                "arch": {"enum": list(ARCHES)},
                "cpus": {"type": "integer", "minimum": 1, "maximum": 64},
                "memoryMiB": {"type": "integer", "minimum": VM_MIN_MEMORY_MIB, "maximum": 262144},
                "diskSize": {
                    "type": "string",
                    "pattern": r"^[1-9][0-9]{0,5}[MGT]\Z",
                    "description": "a size such as 20G: a whole number (up to 6 digits) and M, G or T",
                },
                "accelerator": {"enum": list(ACCELERATORS)},
                "machine": {"type": "string", "pattern": _TOKEN, "description": _TOKEN_RULE},
                "cpuModel": {"type": "string", "pattern": _TOKEN, "description": _TOKEN_RULE},
                "qemuBinary": {"type": "string", "minLength": 1, "pattern": _PATH, "description": _PATH_RULE},
                "qemuImgBinary": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _PATH,
                    "description": _PATH_RULE,
                },
                "firmwareCode": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _PATH,
                    "description": _PATH_RULE,
                },
                "firmwareVars": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _PATH,
                    "description": _PATH_RULE,
                },
                "bootTimeoutSeconds": {"type": "integer", "minimum": 30, "maximum": 7200},
                "state": {"enum": list(VM_STATES)},
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
                "username": {
                    "type": "string",
                    "pattern": r"^[a-z_][a-z0-9_-]{0,31}\Z",
                    "description": "a Linux user name: lowercase letters, digits, '_' and '-', "
                    "starting with a letter or '_', at most 32 characters",
                },
                "hostname": {
                    "type": "string",
                    "pattern": r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z",
                    "description": "a host name: lowercase letters, digits and '-' (not first or last), "
                    "at most 63 characters",
                },
                "sshPublicKeyFile": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _PATH,
                    "description": _PATH_RULE,
                },
                "sshPrivateKeyFile": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _PATH,
                    "description": _PATH_RULE,
                },
                "installPackages": {"type": "boolean"},
                "packages": {
                    "type": "array",
                    "maxItems": 200,
                    "items": {
                        "type": "string",
                        "pattern": r"^[a-z0-9][a-z0-9+.:=~-]*\Z",
                        "description": "a package name (lowercase letters, digits and + . : = ~ -), "
                        "optionally with =version",
                    },
                },
                "userData": {"type": "object"},
            },
        },
        "paths": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "stateDir": {"type": "string", "minLength": 1, "pattern": _PATH, "description": _PATH_RULE},
                "cacheDir": {"type": "string", "minLength": 1, "pattern": _PATH, "description": _PATH_RULE},
            },
        },
        # The guest layers (nexus_components/guest/settings.py).
        "playground": PLAYGROUND_SCHEMA,
        "innerVm": INNER_VM_SCHEMA,
        # Host folders shared into the VM and the container (nexus_components/host/mounts.py).
        "mounts": host_mounts.SCHEMA,
        # Where the lab runs: this machine, or a server over SSH (nexus_components/host/remote.py).
        "host": remote.SCHEMA,
    },
}

_ALLOWED_BY_KEYWORD: dict[str, Callable[[Any], str]] = {
    "enum": lambda schema: "one of " + ", ".join(repr(v) for v in schema["enum"]),
    # Users read what is allowed in words; the regex is only the fallback.
    "pattern": lambda schema: schema.get("description") or f"a string matching {schema['pattern']}",
    "minimum": lambda schema: f"at least {schema['minimum']}",
    "maximum": lambda schema: f"at most {schema['maximum']}",
    "type": lambda schema: (
        schema["description"] if isinstance(schema["type"], list) else f"a value of type {schema['type']}"
    ),
    "const": lambda schema: schema.get("description") or repr(schema["const"]),
    "minLength": lambda schema: "a non-empty string",
    "maxItems": lambda schema: f"at most {schema['maxItems']} items",
    "maxLength": lambda schema: f"at most {schema['maxLength']} characters",
}


@dataclass(frozen=True)
class NexusConfig(HostConfig):
    """The whole lab: the host layer's settings and the guest layers' above them."""

    playground: PlaygroundConfig = field(default_factory=PlaygroundConfig)
    inner_vm: InnerVmConfig = field(default_factory=InnerVmConfig)
    mounts: tuple[host_mounts.Mount, ...] = ()


def load_config(
    raw: Mapping[str, Any],
    *,
    stack: str,
    home: Path,
    project_dir: Path | None = None,
    host_os: str | None = None,
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
    host = remote.load_host(document.get("host"), home=home, base_dir=project_dir or Path.cwd())
    # A lab on a remote host: nexus:paths are the server's (placement.py); here, only its key
    # pair, connect scripts and the guest layers' downloads, in this machine's default places.
    state_dir, cache_dir = (
        lab_directories(paths, stack, home) if host is None else default_directories(stack, home)
    )
    playground = load_playground(
        document.get("playground", {}),
        home=home,
        base_dir=project_dir or Path.cwd(),
        vm_ports_in_use={
            ("tcp", GUEST_SSH_PORT): "the VM's sshd listens on (nexus:network.sshPort forwards to it)"
        },
    )
    mounts = host_mounts.load_mounts(
        document.get("mounts", []),
        home=home,
        base_dir=project_dir or Path.cwd(),
        host_os=host_os or this_host_os(),
        playground_enabled=playground.enabled,
        container_paths_in_use={
            v.target: f"nexus:playground.volumes[{i}].target" for i, v in enumerate(playground.volumes)
        },
        inner_vm_enabled=bool(document.get("innerVm", {}).get("enabled", False)),
    )
    # A mount's container path is a bind mount of its VM path, like any other playground volume.
    playground = dataclasses.replace(
        playground,
        volumes=playground.volumes
        + tuple(Volume(m.vm, m.container, m.read_only) for m in mounts if m.container),
    )
    config = NexusConfig(
        stack=stack,
        image=ImageConfig(url=image.get("url", default_image_url(arch)), sha256=_lower(image.get("sha256"))),
        vm=VmConfig(
            name=name,
            arch=arch,
            cpus=int(vm.get("cpus", 2)),
            memory_mib=int(vm.get("memoryMiB", VM_DEFAULT_MEMORY_MIB)),
            disk_size=vm.get("diskSize", "20G"),
            accelerator=vm.get("accelerator", "auto"),
            machine=vm.get("machine"),
            cpu_model=vm.get("cpuModel"),
            qemu_binary=vm.get("qemuBinary"),
            qemu_img_binary=vm.get("qemuImgBinary", "qemu-img"),
            firmware_code=vm.get("firmwareCode"),
            firmware_vars=vm.get("firmwareVars"),
            boot_timeout_seconds=int(vm.get("bootTimeoutSeconds", 900)),
            state=vm.get("state", "running"),
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
        cache_dir=cache_dir,
        host=host,
        playground=playground,
        inner_vm=dataclasses.replace(
            load_inner_vm(
                document.get("innerVm", {}),
                playground,
                guest_username=guest.get("username", "ubuntu"),
                home=home,
                base_dir=project_dir or Path.cwd(),
            ),
            shares=host_mounts.inner_shares(mounts),
        ),
        mounts=mounts,
    )
    _check_user_data(config)
    _check_inner_vm_memory(config.vm, config.inner_vm)
    return config


def lab_directories(paths: Mapping[str, Any], stack: str, home: Path) -> tuple[Path, Path]:
    """(the stack's directory, the image cache) from nexus:paths, for a machine whose home is
    `home`: this one's, or the server's for a lab on a remote host."""
    default_state, default_cache = default_directories(stack, home)
    state_dir = _resolve_dir("stateDir", paths.get("stateDir"), default_state, home)
    _check_socket_path_fits(state_dir)
    _check_not_a_shared_root(state_dir, home, paths.get("stateDir"))
    return state_dir, _resolve_dir("cacheDir", paths.get("cacheDir"), default_cache, home)


def default_directories(stack: str, home: Path) -> tuple[Path, Path]:
    """(the stack's directory, the image cache) without nexus:paths, under a home: this machine's,
    or the server's for a lab on a remote host."""
    return home / ".nexus-nested-vm" / "stacks" / _slug(stack), home / ".cache" / "nexus-nested-vm" / "images"


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


# Directories other programs or people share: a stack's files must not be scattered into
# them, and destroy must never be able to remove them. Compared after normalisation.
_SHARED_ROOTS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/local",
    "/var",
    "/var/tmp",
    "/Applications",
    "/Library",
    "/System",
    "/Users",
    "/Volumes",
    "/private",
    "/private/tmp",
    "/private/var",
)
_SHARED_HOME_FOLDERS = (".", "Desktop", "Documents", "Downloads", ".cache", ".config", ".local", ".ssh")


def _check_not_a_shared_root(state_dir: Path, home: Path, given: str | None) -> None:
    normal = Path(os.path.normpath(state_dir))
    shared = {Path(root) for root in _SHARED_ROOTS}
    shared |= {Path(os.path.normpath(home / folder)) for folder in _SHARED_HOME_FOLDERS}
    shared |= set(Path(os.path.normpath(home)).parents)
    # Any root (C:\ on Windows) and the top-level system folders under it.
    top_level_system = len(normal.parts) == 2 and normal.name.lower() in ("users", "windows", "program files")
    if normal in shared or normal == Path(normal.anchor) or top_level_system:
        raise ConfigError(
            f"nexus:paths.stateDir: got {given or str(state_dir)!r}"
            + (f" ({state_dir})" if given and given != str(state_dir) else "")
            + ", a directory other programs share; "
            "allowed: a directory of this stack's own, such as ~/.nexus-nested-vm/stacks/<stack>",
            hint="unset nexus:paths.stateDir to use the default, or name a new directory "
            "(destroy removes the state directory with everything the stack made in it)",
        )


def _check_inner_vm_memory(vm: VmConfig, inner_vm: InnerVmConfig) -> None:
    """An inner VM given the VM's memory runs the VM out of it once its guest uses it (the
    OOM killer ends its QEMU, or the VM stalls), long after preview; refuse it up front."""
    at_most = vm.memory_mib - VM_MIN_MEMORY_MIB
    if not inner_vm.enabled or inner_vm.memory_mib <= at_most:
        return
    left = vm.memory_mib - inner_vm.memory_mib
    lower = (
        f"lower nexus:innerVm.memoryMiB to {at_most} or less, or "
        if at_most >= INNER_VM_MIN_MEMORY_MIB
        else ""
    )
    raise ConfigError(
        f"nexus:innerVm.memoryMiB: got {inner_vm.memory_mib}, which leaves "
        + (f"{left} MiB" if left > 0 else "nothing")
        + f" of nexus:vm.memoryMiB ({vm.memory_mib}) to the VM itself; allowed: at most "
        f"nexus:vm.memoryMiB minus the {VM_MIN_MEMORY_MIB} MiB the VM needs for itself, here {at_most}",
        hint=lower + f"raise nexus:vm.memoryMiB to {inner_vm.memory_mib + VM_MIN_MEMORY_MIB} or more",
    )


def _check_user_data(config: NexusConfig) -> None:
    """Render the seed once with a stand-in key, so a clashing userData fails at preview."""
    guest = config.guest
    cloudinit.render_user_data(
        cloudinit.CloudInitSpec(
            username=guest.username,
            ssh_public_key="ssh-ed25519 AAAA preview",
            hostname=guest.hostname,
            guest_arch=config.vm.arch,
            install_packages=guest.install_packages,
            extra_packages=guest.packages,
            extra_user_data=guest.user_data,
        )
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

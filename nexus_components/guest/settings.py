"""The guest layers' stack settings: `nexus:playground` and `nexus:innerVm`.

The JSON Schema fragments here are mounted into the one schema in `config.py`, which
validates the whole document and reports errors by key; `load_playground` and
`load_inner_vm` then fill in the defaults (the seed's values) and check what a schema
cannot express. No Pulumi import: unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_components.core.errors import ConfigError

DEFAULT_CONTAINER_NAME = "nexus-playground"
DEFAULT_IMAGE = "ubuntu:24.04"
RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
INNER_ACCELERATORS = ("auto", "kvm", "tcg")
INNER_VM_MIN_MEMORY_MIB = 64

_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
# Every pattern carries a description: errors say what is allowed in words (config.py).
# A container path or VM path: absolute, no control characters, no `:` (docker's volume
# separator) and no `,` (QEMU's option separator).
_ABS_PATH = r"^/[^\x00-\x1f:,]*\Z"
_ABS_PATH_RULE = "an absolute path in the container, without ':', ',' or control characters"
_HOST_PATH = r"^[^\x00-\x1f]+\Z"
_HOST_PATH_RULE = "a path on this machine without control characters"
# Docker's own rules for container and volume names.
_DOCKER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z"
_DOCKER_NAME_RULE = (
    "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 characters"
)
# repository[:tag][@digest], optionally with a registry host[:port]; no whitespace.
_IMAGE_REF = r"^[a-z0-9][a-z0-9._/:@-]*[a-zA-Z0-9_.-]*[a-zA-Z0-9]\Z"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*\Z"
# The same rules as nexus:image.url and nexus:guest.username/hostname (config.py).
_IMAGE_URL = r"^(https?://\S+|file://\S+|(?![A-Za-z][A-Za-z0-9+.-]+://)[^\x00-\x1f]+)\Z"
_USERNAME = r"^[a-z_][a-z0-9_-]{0,31}\Z"
_HOSTNAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"

PLAYGROUND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "name": {
            "type": "string",
            "pattern": _DOCKER_NAME,
            "description": "a container name: " + _DOCKER_NAME_RULE,
        },
        # Where the image comes from: at most one of these (checked in load_playground).
        "image": {
            "type": "string",
            "maxLength": 255,
            "pattern": _IMAGE_REF,
            "description": "an image reference such as ubuntu:24.04 or registry.example:5000/team/lab:1 "
            "(a lowercase name, no spaces)",
        },
        "buildContext": {
            "type": "string",
            "minLength": 1,
            "pattern": _HOST_PATH,
            "description": _HOST_PATH_RULE,
        },
        "imageTarball": {
            "type": "string",
            "minLength": 1,
            "pattern": _HOST_PATH,
            "description": _HOST_PATH_RULE,
        },
        "rootfsTarball": {
            "type": "string",
            "minLength": 1,
            "pattern": _HOST_PATH,
            "description": _HOST_PATH_RULE,
        },
        "ports": {
            "type": "array",
            "maxItems": 32,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["vm", "container"],
                "properties": {"vm": _PORT, "container": _PORT, "protocol": {"enum": ["tcp", "udp"]}},
            },
        },
        "env": {
            "type": "object",
            "propertyNames": {
                "pattern": _ENV_NAME,
                "description": "an environment variable name: letters, digits and '_', "
                "not starting with a digit",
            },
            "additionalProperties": {"type": "string"},
        },
        "volumes": {
            "type": "array",
            "maxItems": 32,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["source", "target"],
                "properties": {
                    # An absolute VM path (bind mount) or a named volume.
                    "source": {
                        "type": "string",
                        "pattern": r"^(/[^\x00-\x1f:,]*|[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62})\Z",
                        "description": "an absolute VM path without ':', ',' or control characters, "
                        "or a volume name: " + _DOCKER_NAME_RULE,
                    },
                    "target": {"type": "string", "pattern": _ABS_PATH, "description": _ABS_PATH_RULE},
                    "readOnly": {"type": "boolean"},
                },
            },
        },
        "restart": {"enum": list(RESTART_POLICIES)},
        "command": {"type": "array", "maxItems": 64, "items": {"type": "string"}},
        "privileged": {"type": "boolean"},
        "devices": {
            "type": "array",
            "maxItems": 16,
            "items": {
                "type": "string",
                "pattern": r"^/dev/[^\x00-\x1f:,]+\Z",
                "description": "a device path under /dev/, without ':', ',' or control characters",
            },
        },
        "readyTimeoutSeconds": {"type": "integer", "minimum": 30, "maximum": 7200},
    },
}

INNER_VM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "name": {
            "type": "string",
            "pattern": r"^[a-z][a-z0-9-]{0,30}\Z",
            "description": "lowercase letters, digits and '-', starting with a letter, at most 31 characters",
        },
        "cpus": {"type": "integer", "minimum": 1, "maximum": 16},
        "memoryMiB": {"type": "integer", "minimum": INNER_VM_MIN_MEMORY_MIB, "maximum": 65536},
        "diskSize": {
            "type": "string",
            "pattern": r"^[1-9][0-9]{0,5}[MGT]\Z",
            "description": "a size such as 10G: a whole number (up to 6 digits) and M, G or T",
        },
        "accelerator": {"enum": list(INNER_ACCELERATORS)},
        # Boot media, paths inside the playground container (put them there with a volume).
        "kernel": {"type": "string", "pattern": _ABS_PATH, "description": _ABS_PATH_RULE},
        "initrd": {"type": "string", "pattern": _ABS_PATH, "description": _ABS_PATH_RULE},
        "kernelArgs": {
            "type": "string",
            "maxLength": 1024,
            "pattern": r"^[^\x00-\x1f]*\Z",
            "description": "a kernel command line without control characters",
        },
        "iso": {"type": "string", "pattern": _ABS_PATH, "description": _ABS_PATH_RULE},
        # A qcow2 or raw cloud image on this machine or at an http(s) URL, fetched into the
        # host's image cache like nexus:image, copied into the VM once per digest.
        "image": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": _IMAGE_URL,
                    "description": "an http:// or https:// URL or a file:// URL (without spaces), "
                    "or a path on this machine, of a qcow2 or raw cloud image",
                },
                "sha256": {
                    "type": "string",
                    "pattern": r"^[0-9a-fA-F]{64}\Z",
                    "description": "a SHA-256 digest: 64 hexadecimal digits, as `sha256sum` prints it",
                },
            },
        },
        # The login user and host name the image's cloud-init seed sets up.
        "username": {
            "type": "string",
            "pattern": _USERNAME,
            "description": "a Linux user name: lowercase letters, digits, '_' and '-', "
            "starting with a letter or '_', at most 32 characters",
        },
        "hostname": {
            "type": "string",
            "pattern": _HOSTNAME,
            "description": "a host name: lowercase letters, digits and '-' (not first or last), "
            "at most 63 characters",
        },
        # Ports of the inner VM reachable from the container (publish them with `ports`).
        "forwards": {
            "type": "array",
            "maxItems": 16,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["container", "guest"],
                "properties": {"container": _PORT, "guest": _PORT},
            },
        },
        "powerdownTimeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 600},
        "bootTimeoutSeconds": {"type": "integer", "minimum": 10, "maximum": 3600},
    },
}


@dataclass(frozen=True)
class PublishedPort:
    vm: int
    container: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Volume:
    source: str  # an absolute VM path (bind mount) or a named volume
    target: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


@dataclass(frozen=True)
class ImageSource:
    """Exactly one way the playground image is made."""

    kind: str  # "reference", "build", "image-tarball", "rootfs-tarball"
    value: str  # the reference, or an absolute host path
    key: str  # the config key it came from, for error messages


@dataclass(frozen=True)
class PlaygroundConfig:
    enabled: bool = True
    name: str = DEFAULT_CONTAINER_NAME
    source: ImageSource = ImageSource("reference", DEFAULT_IMAGE, "nexus:playground.image")
    ports: tuple[PublishedPort, ...] = (PublishedPort(80, 80), PublishedPort(443, 443))
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[Volume, ...] = ()
    restart: str = "unless-stopped"
    command: tuple[str, ...] = ()
    privileged: bool = False
    devices: tuple[str, ...] = ()
    ready_timeout_seconds: int = 900


@dataclass(frozen=True)
class PortToGuest:
    container: int
    guest: int


@dataclass(frozen=True)
class InnerShare:
    """A host folder of `nexus:mounts` shared on into the inner VM (its `innerVm` key): the inner
    QEMU serves the container's view of it over 9p, under `tag`."""

    tag: str  # the 9p mount tag, the same as the VM's for that mount (nexus<index>)
    source: str  # the mount's container path: what the inner QEMU serves
    path: str  # where the inner VM mounts it (a cloud image's seed does; a kernel's init must)
    read_only: bool = False


@dataclass(frozen=True)
class InnerImage:
    """`nexus:innerVm.image`: where the inner VM's cloud image comes from."""

    url: str  # an http(s) or file:// URL, or an absolute path on this machine
    sha256: str | None = None  # None: looked up in SHA256SUMS beside the image


@dataclass(frozen=True)
class InnerVmConfig:
    enabled: bool = False
    name: str = "inner"
    cpus: int = 1
    memory_mib: int = 1024
    disk_size: str = "10G"
    accelerator: str = "auto"
    kernel: str | None = None
    initrd: str | None = None
    kernel_args: str = "console=ttyS0"
    iso: str | None = None
    image: InnerImage | None = None
    username: str = "ubuntu"  # the image's login user (default: nexus:guest.username)
    hostname: str = ""  # default: the inner VM's name
    forwards: tuple[PortToGuest, ...] = ()
    powerdown_timeout_seconds: int = 60
    boot_timeout_seconds: int = 300
    shares: tuple[InnerShare, ...] = ()  # from nexus:mounts[*].innerVm (config.py)

    @property
    def guest_hostname(self) -> str:
        return self.hostname or self.name


_SOURCE_KEYS = {
    "image": "reference",
    "buildContext": "build",
    "imageTarball": "image-tarball",
    "rootfsTarball": "rootfs-tarball",
}


def load_playground(
    raw: Mapping[str, Any],
    *,
    home: Path,
    base_dir: Path,
    vm_ports_in_use: Mapping[tuple[str, int], str] | None = None,
) -> PlaygroundConfig:
    """Defaults and cross-key checks for an already schema-valid `nexus:playground`.

    `vm_ports_in_use`: (protocol, port) -> what already listens there in the VM, worded to
    follow "a VM tcp port" in an error ("the VM's sshd listens on"); none can be published.
    """
    given = [key for key in _SOURCE_KEYS if key in raw]
    if len(given) > 1:
        raise ConfigError(
            "nexus:playground: "
            + ", ".join(f"nexus:playground.{key}" for key in given)
            + " are all set; allowed: at most one image source",
            hint="keep the one the container should run from",
        )
    if given:
        key = given[0]
        kind = _SOURCE_KEYS[key]
        value = raw[key] if kind == "reference" else str(_host_path(raw[key], home, base_dir))
        source = ImageSource(kind, value, f"nexus:playground.{key}")
    else:
        source = PlaygroundConfig().source
    enabled = bool(raw.get("enabled", True))
    command = tuple(raw.get("command", ()))
    if source.kind == "rootfs-tarball" and not command:
        raise ConfigError(
            f"nexus:playground.command: not set; a root-file-system tarball ({source.value}) "
            "has no default command",
            hint="set nexus:playground.command to what the container runs, e.g. [sleep, infinity]",
        )
    ports = tuple(
        PublishedPort(int(p["vm"]), int(p["container"]), p.get("protocol", "tcp"))
        for p in raw.get("ports", [{"vm": 80, "container": 80}, {"vm": 443, "container": 443}])
    )
    _check_vm_ports_free(ports, vm_ports_in_use or {})
    volumes = tuple(
        Volume(v["source"], v["target"], bool(v.get("readOnly", False))) for v in raw.get("volumes", [])
    )
    _check_unique(
        [(f"nexus:playground.volumes[{i}].target", v.target) for i, v in enumerate(volumes)],
        "container path",
    )
    # Last, after the checks that need no file system. A disabled playground never reads
    # its source, so a stale path there must not block the stack.
    if enabled and given and source.kind != "reference":
        _check_source_on_this_machine(source, raw[given[0]], base_dir)
    return PlaygroundConfig(
        enabled=enabled,
        name=raw.get("name", DEFAULT_CONTAINER_NAME),
        source=source,
        ports=ports,
        env=dict(raw.get("env", {})),
        volumes=volumes,
        restart=raw.get("restart", "unless-stopped"),
        command=command,
        privileged=bool(raw.get("privileged", False)),
        devices=tuple(raw.get("devices", ())),
        ready_timeout_seconds=int(raw.get("readyTimeoutSeconds", 900)),
    )


BOOT_MEDIA = ("image", "kernel", "iso")


def load_inner_vm(
    raw: Mapping[str, Any],
    playground: PlaygroundConfig,
    *,
    guest_username: str = "ubuntu",
    home: Path | None = None,
    base_dir: Path | None = None,
) -> InnerVmConfig:
    """Defaults and cross-key checks for an already schema-valid `nexus:innerVm`."""
    image = raw.get("image")
    config = InnerVmConfig(
        enabled=bool(raw.get("enabled", False)),
        name=raw.get("name", "inner"),
        cpus=int(raw.get("cpus", 1)),
        memory_mib=int(raw.get("memoryMiB", 1024)),
        disk_size=raw.get("diskSize", "10G"),
        accelerator=raw.get("accelerator", "auto"),
        kernel=raw.get("kernel"),
        initrd=raw.get("initrd"),
        kernel_args=raw.get("kernelArgs", "console=ttyS0"),
        iso=raw.get("iso"),
        image=_inner_image(image, home or Path.home(), base_dir or Path.cwd()) if image else None,
        username=raw.get("username", guest_username),
        hostname=raw.get("hostname", ""),
        forwards=tuple(PortToGuest(int(f["container"]), int(f["guest"])) for f in raw.get("forwards", [])),
        powerdown_timeout_seconds=int(raw.get("powerdownTimeoutSeconds", 60)),
        boot_timeout_seconds=int(raw.get("bootTimeoutSeconds", 300)),
    )
    if not config.enabled:
        return config
    if not playground.enabled:
        raise ConfigError(
            "nexus:innerVm.enabled: got True; allowed: only with the playground container "
            "(nexus:playground.enabled is false)",
            hint="the inner VM runs inside the container: enable nexus:playground or disable nexus:innerVm",
        )
    if config.initrd and not config.kernel:
        raise ConfigError(
            f"nexus:innerVm.initrd: got {config.initrd!r} without nexus:innerVm.kernel",
            hint="set nexus:innerVm.kernel too (an initrd is only used with a kernel)",
        )
    media = {"image": image.get("url") if image else None, "kernel": config.kernel, "iso": config.iso}
    given = {key: value for key, value in media.items() if value}
    allowed = "exactly one boot medium: " + ", ".join(f"nexus:innerVm.{key}" for key in BOOT_MEDIA)
    if len(given) > 1:
        raise ConfigError(
            " and ".join(f"nexus:innerVm.{key}" for key in given)
            + (" are both set (" if len(given) == 2 else " are all set (")
            + ", ".join(f"{key}: {value!r}" for key, value in given.items())
            + f"); allowed: {allowed}",
            hint="keep the one the inner VM boots from: a cloud image (image), a kernel for a direct "
            "boot (kernel, with initrd and kernelArgs), or an installer ISO (iso)",
        )
    if not given:
        raise ConfigError(
            f"nexus:innerVm: enabled without a boot medium; allowed: {allowed}",
            hint="set nexus:innerVm.image.url to a cloud image (a path on this machine or an http(s) URL), "
            "or nexus:innerVm.kernel, or nexus:innerVm.iso",
        )
    _check_unique(
        [(f"nexus:innerVm.forwards[{i}].container", f.container) for i, f in enumerate(config.forwards)],
        "container port",
    )
    return config


def _inner_image(raw: Mapping[str, Any], home: Path, base_dir: Path) -> InnerImage:
    url = str(raw["url"])
    if "://" not in url:
        url = str(_host_path(url, home, base_dir))  # the download cache wants it absolute
    sha256 = raw.get("sha256")
    return InnerImage(url, sha256.lower() if sha256 else None)


def _check_vm_ports_free(ports: tuple[PublishedPort, ...], in_use: Mapping[tuple[str, int], str]) -> None:
    """Docker would fail `up` with "address already in use" (after deleting the old
    container) and no key named: each published VM port must be free of the VM's own
    listeners and of the other entries."""
    claimed = dict(in_use)
    for i, port in enumerate(ports):
        key = f"nexus:playground.ports[{i}].vm"
        mine = f"{key} already publishes"
        holder = claimed.setdefault((port.protocol, port.vm), mine)
        if holder != mine:
            raise ConfigError(
                f"{key}: got {port.vm}, a VM {port.protocol} port {holder}; "
                "allowed: a VM port nothing else in the VM listens on",
                hint=f"publish container port {port.container} on another VM port (forward a host port "
                "to that one with nexus:network.forwards to reach it from this machine)",
            )


def _check_unique(keyed: list[tuple[str, object]], what: str) -> None:
    seen: dict[object, str] = {}
    for key, value in keyed:
        previous = seen.setdefault(value, key)
        if previous != key:
            raise ConfigError(
                f"{key}: {what} is already used by {previous}", hint=f"give each its own {what}"
            )


# What a file-system image source must be, and the first step to fix one that is not.
_SOURCE_ON_THIS_MACHINE = {
    "build": (
        "a directory on this machine with a Dockerfile in it",
        "point {key} at the directory that holds your Dockerfile",
    ),
    "image-tarball": ("a tarball file on this machine", "point {key} at an existing `docker save` archive"),
    "rootfs-tarball": ("a tarball file on this machine", "point {key} at an existing root-file-system tar"),
}


def _check_source_on_this_machine(source: ImageSource, given: str, base_dir: Path) -> None:
    """A build context or tarball that is not there fails at preview, naming its key: else
    a build fails minutes into `up`, and a tarball's digest with a raw traceback."""
    path = Path(source.value)
    try:
        problem = _source_problem(source.kind, path)
    except OSError as error:  # e.g. a parent directory we may not search
        problem = f"which cannot be read ({error.strerror or error})"
    if not problem:
        return
    allowed, fix = _SOURCE_ON_THIS_MACHINE[source.kind]
    shown = repr(given) + ("" if given == source.value else f" ({path})")
    relative = given != "~" and not given.startswith("~/") and not Path(given).is_absolute()
    raise ConfigError(
        f"{source.key}: got {shown}, {problem}; allowed: {allowed}",
        hint=fix.format(key=source.key)
        + (f" (a relative path is taken from the project directory, {base_dir})" if relative else ""),
    )


def _source_problem(kind: str, path: Path) -> str:
    """What is wrong with a build context or tarball on this machine; '' when nothing is."""
    if not path.exists():
        return "which does not exist"
    if kind == "build":
        if not path.is_dir():
            return "which is a file, not a directory"
        return "" if (path / "Dockerfile").is_file() else "which has no Dockerfile"
    if path.is_dir():
        return "which is a directory, not a file"
    return "" if path.is_file() else "which is not a regular file"


def _host_path(value: str, home: Path, base_dir: Path) -> Path:
    """A host path as the user wrote it: `~/` expanded, relative to the project directory."""
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    path = Path(value)
    return path if path.is_absolute() else (base_dir / path).resolve()

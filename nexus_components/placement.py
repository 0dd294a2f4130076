"""Where the lab runs, and what that machine offers: this machine, or a server (`nexus:host`).

Both the reference program (before it declares anything) and the Lab (before it declares its
resources) ask here: which QEMU, which accelerator, which qemu-img, whether the state
directory is the stack's to use and the disk fits a cached image. For a lab on a remote host
the questions go to the server (one SSH step each, remote_call's `Host` steps), and the
stack's directory and image cache become the server's; the key pair and the connect scripts
stay on this machine (`key_dir`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_components.config import NexusConfig, lab_directories
from nexus_components.core.errors import ConfigError
from nexus_components.host import remote
from nexus_components.host.hostfacts import check_before_changes, detect_host, find_qemu_img, host_os
from nexus_components.host.qemu_argv import HostFacts
from nexus_components.host.shares import require_sftp_server, require_virtiofsd


@dataclass(frozen=True)
class Placement:
    config: NexusConfig  # its state_dir and cache_dir are on the machine that runs QEMU
    host: HostFacts
    qemu_img: str
    virtiofsd: str | None = None
    sftp_server: str | None = None


def place(config: NexusConfig, settings: Mapping[str, Any]) -> Placement:
    """The machine's facts and checks; `settings` is the `nexus:` document config came from."""
    if config.host is None:
        host = detect_host(config.vm)
        qemu_img = find_qemu_img(config.vm, host_os())
        check_before_changes(config, qemu_img)
        return Placement(
            config,
            host,
            qemu_img,
            require_virtiofsd(config.mounts),
            require_sftp_server(config.mounts, host_os()),
        )
    refuse_what_a_remote_host_lacks(config)
    server = config.host
    facts = remote.call(server, remote.HOST, "facts", {"vm": dataclasses.asdict(config.vm)})
    state_dir, cache_dir = lab_directories(settings.get("paths") or {}, config.stack, Path(facts["home"]))
    on_server = dataclasses.replace(
        config,
        state_dir=state_dir,
        cache_dir=cache_dir,
        local_dir=config.state_dir,
        local_cache=config.cache_dir,
    )
    remote.call(
        server,
        remote.HOST,
        "check",
        {
            "state_dir": str(state_dir),
            "stack": config.stack,
            "cache_dir": str(cache_dir),
            "image_url": config.image.url,
            "disk_size": config.vm.disk_size,
            "qemu_img": facts["qemu_img"],
        },
    )
    return Placement(on_server, HostFacts(**facts["host"]), facts["qemu_img"])


def refuse_what_a_remote_host_lacks(config: NexusConfig) -> None:
    """What a lab on a remote host cannot have yet, refused before anything is made."""
    if config.host and config.mounts:
        # The folders are on this machine; QEMU's file servers would run on the server.
        raise ConfigError(
            f"nexus:mounts: not available with a remote nexus:host ({config.host.label}) yet; "
            "allowed there: no mounts",
            hint="remove nexus:mounts and copy files in with scripts/lab cp, or run the lab here "
            "(nexus:host: local)",
        )

"""The lab's layers as Pulumi components, each depending on the one before it.

    NexusVm
      ├─ BaseImage       cloud image in the shared cache (first: it can refuse the disk size)
      ├─ StateDir        the stack's directory (deleted last)
      ├─ OverlayDisk     qcow2 on top of the base image
      ├─ CloudInitSeed   SSH key pair + NoCloud ISO
      └─ QemuVm          the QEMU process, ready when SSH and cloud-init are

Components only wire values together; the work happens in `providers.py`, which calls
the pure modules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import Resource

from nexus_components.core.ssh import SshTarget
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import HostFacts, VmFiles, build_qemu_argv, qmp_tcp_port

from . import providers
from .config import NexusConfig
from .host.settings import disk_size_bytes
from .host_inputs import base_image_inputs, cloud_init_seed_inputs, ssh_key_inputs

TYPE_PREFIX = "nexus:lab"


def _child(parent: pulumi.Resource) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent)


class _Dynamic(Resource):
    """A dynamic resource whose listed outputs become attributes."""

    def __init__(
        self,
        provider: pulumi.dynamic.ResourceProvider,
        name: str,
        inputs: dict[str, Any],
        outputs: tuple[str, ...],
        opts: pulumi.ResourceOptions,
    ) -> None:
        super().__init__(provider, name, {**inputs, **dict.fromkeys(outputs)}, opts)


class StateDir(pulumi.ComponentResource):
    def __init__(
        self, name: str, state_dir: Path, stack: str | None = None, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(f"{TYPE_PREFIX}:StateDir", name, None, opts)
        inputs = {"state_dir": str(state_dir), "stack": stack or pulumi.get_stack()}
        self.dir = _Dynamic(providers.StateDirProvider(), f"{name}-dir", inputs, (), _child(self))
        self.path = self.dir.id
        self.register_outputs({"path": self.path})


class BaseImage(pulumi.ComponentResource):
    def __init__(
        self, name: str, config: NexusConfig, qemu_img: str, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(f"{TYPE_PREFIX}:BaseImage", name, None, opts)
        self.image = _Dynamic(
            providers.BaseImageProvider(),
            f"{name}-download",
            base_image_inputs(config, qemu_img),
            ("path", "digest", "size"),
            _child(self),
        )
        self.path: pulumi.Output[str] = self.image.path  # type: ignore[attr-defined]
        self.digest: pulumi.Output[str] = self.image.digest  # type: ignore[attr-defined]
        self.register_outputs({"path": self.path, "digest": self.digest})


class OverlayDisk(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        config: NexusConfig,
        base: BaseImage,
        qemu_img: str,
        host: HostFacts,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{TYPE_PREFIX}:OverlayDisk", name, None, opts)
        inputs = {
            "state_dir": str(config.state_dir),
            "base_path": base.path,
            "base_digest": base.digest,
            "disk_size": config.vm.disk_size,
            "size_bytes": disk_size_bytes(config.vm.disk_size),
            "qemu_img": qemu_img,
            "qmp_tcp_port": qmp_tcp_port(config, host),
        }
        self.disk = _Dynamic(providers.OverlayDiskProvider(), f"{name}-qcow2", inputs, (), _child(self))
        self.id = self.disk.id
        self.register_outputs({"id": self.id})


class CloudInitSeed(pulumi.ComponentResource):
    def __init__(self, name: str, config: NexusConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:CloudInitSeed", name, None, opts)
        self.key = _Dynamic(
            providers.SshKeyProvider(),
            f"{name}-ssh-key",
            ssh_key_inputs(config),
            ("private_key_path", "public_key", "generated"),
            _child(self),
        )
        public_key = self.key.public_key  # type: ignore[attr-defined]
        self.seed = _Dynamic(
            providers.CloudInitSeedProvider(),
            f"{name}-iso",
            cloud_init_seed_inputs(config, public_key),
            ("instance_id",),
            _child(self),
        )
        self.private_key_path: pulumi.Output[str] = self.key.private_key_path  # type: ignore[attr-defined]
        self.instance_id: pulumi.Output[str] = self.seed.instance_id  # type: ignore[attr-defined]
        self.register_outputs({"privateKeyPath": self.private_key_path, "instanceId": self.instance_id})


class QemuVm(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        config: NexusConfig,
        host: HostFacts,
        disk: OverlayDisk,
        seed: CloudInitSeed,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{TYPE_PREFIX}:QemuVm", name, None, opts)
        paths = VmPaths(config.state_dir, qmp_tcp_port(config, host))
        files = VmFiles.of(paths)
        network = config.network
        inputs = {
            "name": config.vm.name,
            "state_dir": str(config.state_dir),
            "argv": build_qemu_argv(config, host, files),
            "accelerator": host.accelerator,
            "cpus": config.vm.cpus,
            "memory_mib": config.vm.memory_mib,
            "firmware_code": host.firmware_code if config.vm.arch == "aarch64" else None,
            "firmware_vars_template": host.firmware_vars_template if config.vm.arch == "aarch64" else None,
            "bind_address": network.bind_address,
            "ssh_host": network.ssh_host,
            "ssh_port": network.ssh_port,
            "forwards": [dataclasses.asdict(forward) for forward in network.forwards],
            "username": config.guest.username,
            "private_key": seed.private_key_path,
            "instance_id": seed.instance_id,
            "overlay_id": disk.id,
            "boot_timeout_seconds": config.vm.boot_timeout_seconds,
            "qmp_tcp_port": paths.qmp_tcp_port,
        }
        self.vm = _Dynamic(
            providers.QemuVmProvider(), f"{name}-qemu", inputs, ("pid", "ready_seconds"), _child(self)
        )
        self.pid: pulumi.Output[int] = self.vm.pid  # type: ignore[attr-defined]
        self.ready_seconds: pulumi.Output[float] = self.vm.ready_seconds  # type: ignore[attr-defined]
        self.register_outputs({"pid": self.pid, "readySeconds": self.ready_seconds})


@dataclasses.dataclass(frozen=True)
class NexusVmArgs:
    config: NexusConfig
    host: HostFacts
    qemu_img: str


class NexusVm(pulumi.ComponentResource):
    """The whole first layer of the lab: a running, reachable VM."""

    def __init__(self, name: str, args: NexusVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:NexusVm", name, None, opts)
        config = args.config
        # The image first: what only it can tell (its size) fails before the VM's own files exist.
        self.base_image = BaseImage(f"{name}-image", config, args.qemu_img, _child(self))
        self.state = StateDir(
            f"{name}-state",
            config.state_dir,
            config.stack,
            pulumi.ResourceOptions(parent=self, depends_on=[self.base_image]),
        )
        after_state = pulumi.ResourceOptions(parent=self, depends_on=[self.state])
        self.disk = OverlayDisk(
            f"{name}-disk", config, self.base_image, args.qemu_img, args.host, after_state
        )
        self.seed = CloudInitSeed(f"{name}-seed", config, after_state)
        self.qemu = QemuVm(f"{name}-vm", config, args.host, self.disk, self.seed, after_state)

        paths = VmPaths(config.state_dir)
        network = config.network
        self.outputs: dict[str, Any] = {
            "sshCommand": self.seed.private_key_path.apply(
                lambda key: SshTarget(
                    network.ssh_host, network.ssh_port, config.guest.username, Path(key)
                ).interactive_command()
            ),
            "sshPort": network.ssh_port,
            "privateKeyPath": self.seed.private_key_path,
            "vmPid": self.qemu.pid,
            "vmReadySeconds": self.qemu.ready_seconds,
            "serialLog": str(paths.serial_log),
            "connectScript": str(paths.connect_script),
            "accelerator": args.host.accelerator,
            "stateDir": str(config.state_dir),
        }
        self.register_outputs(self.outputs)

"""The guest layers as Pulumi components, on top of the host layer (the `nexus:index:Lab`).

    GuestLayers
      ├─ DockerEngine      nexus:guest:DockerDaemon: cloud-init and the daemon; the seed's checks
      ├─ Playground        the `nexus-playground` container (pulumi-docker over ssh://)
      │    ├─ image        registry reference / build context (pulumi-docker), or a tarball
      │    │               streamed into `docker load`/`import` (nexus:guest:TarballImage)
      │    ├─ preflight    the VM ports and devices a new container needs, checked
      │    │               before the old one is deleted (nexus:guest:ContainerPreflight)
      │    └─ presence     starts the container again when stopped by hand, has it created
      │                    anew when removed, clears a leftover of an interrupted up
      │                    before a new one (nexus:guest:ContainerPresence)
      ├─ InnerImage        the inner VM's cloud image: host cache, then copied into the VM
      │                    once per digest (nexus:guest:InnerImageCopy)
      └─ InnerVm           QEMU inside the container (nexus:guest:InnerQemu)

Why each part is what it is: the container and its image are pulumi-docker's, the
ecosystem's provider for exactly this; the engine's readiness, a tarball's image, the container's preflight
and presence and the inner VM are resources of the `nexus` provider plugin
(nexus_provider/guest/, their work in nexus_components/guest/lifecycles.py) because their `diff` must look
at the machine (no refresh needed, so a VM that is down or hung never blocks `up` or
`destroy`), and because the provider's process runs each step to its end when `up` is
interrupted (Ctrl-C), which a program-side hook could not.

The `nexus:index:Lab` component declares GuestLayers on its own host resources (`VmBelow`
is what it hands over).
Destroy runs inside out: the inner VM powers off, then the VM, whose shutdown stops the
container; what is stored on the VM's disk is deleted with it (`deleted_with`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker as docker

from nexus_components.config import NexusConfig
from nexus_components.core.ssh import SshTarget
from nexus_components.guest import engine, inner_image, playground, preflight
from nexus_components.guest import inner_vm as inner
from nexus_components.guest.settings import InnerVmConfig
from nexus_components.host.paths import VmPaths

from .declared import PackageResource
from .guest import (
    container_preflight,
    container_presence,
    docker_daemon,
    inner_image_copy,
    inner_qemu,
    script_file,
    tarball_image,
)

TYPE_PREFIX = "nexus:guest"


def _child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)


@dataclasses.dataclass(frozen=True)
class VmBelow:
    """What the guest layers take from the VM layer under them, whoever declared it."""

    private_key_path: pulumi.Output[str]
    public_key: pulumi.Output[str]
    vm_pid: pulumi.Output[int]
    instance_id: pulumi.Output[str]
    # The VM's disk: what is stored on it is deleted with it, and names its id.
    disk: pulumi.CustomResource
    # What the guest steps wait for: the running VM (and its disk).
    vm: pulumi.Resource
    after_vm: list[pulumi.Resource]
    # The stack's directory: the helper scripts in it are deleted before it.
    state: pulumi.Resource


@dataclasses.dataclass(frozen=True)
class GuestAccess:
    """How every guest layer reaches the VM: the forwarded SSH port and the stack's key."""

    ssh_host: str
    ssh_port: int
    username: str
    private_key_path: pulumi.Output[str]
    # nexus:vm.state: a suspended VM is not looked into.
    vm_state: str
    # A VM on a remote host is reached through the server (nexus:host).
    proxy_command: tuple[str, ...] = ()

    def props(self) -> dict[str, Any]:
        return {
            "ssh_host": self.ssh_host,
            "ssh_port": self.ssh_port,
            "username": self.username,
            "private_key": self.private_key_path,
            "vm_state": self.vm_state,
            # Unset for a local lab, so its inputs are as they were.
            **({"proxy_command": list(self.proxy_command)} if self.proxy_command else {}),
        }

    def target(self, private_key: str) -> SshTarget:
        return SshTarget(self.ssh_host, self.ssh_port, self.username, Path(private_key), self.proxy_command)


@dataclasses.dataclass(frozen=True)
class DockerEngineArgs:
    access: GuestAccess
    vm_pid: pulumi.Output[int]
    instance_id: pulumi.Output[str]
    timeout_seconds: int


class DockerEngine(pulumi.ComponentResource):
    """Docker in the VM, ready: cloud-init done and the daemon answering the login user."""

    def __init__(self, name: str, args: DockerEngineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:DockerEngine", name, None, opts)
        access = args.access
        inputs = {
            **access.props(),
            "docker_host": engine.docker_host(access.username, access.ssh_host, access.ssh_port),
            "vm_pid": args.vm_pid,
            "instance_id": args.instance_id,
            "timeout_seconds": args.timeout_seconds,
        }
        self.daemon = PackageResource(docker_daemon.RESOURCE, f"{name}-daemon", inputs, _child(self))
        self.docker_host: pulumi.Output[str] = self.daemon.id
        self.docker_version: pulumi.Output[str] = self.daemon.output("docker_version")
        self.kvm_usable: pulumi.Output[bool] = self.daemon.output("kvm_usable")
        self.kvm_verdict: pulumi.Output[str] = self.daemon.output("kvm_verdict")
        self.libvirt_version: pulumi.Output[str] = self.daemon.output("libvirt_version")
        self.ready_seconds: pulumi.Output[float] = self.daemon.output("ready_seconds")
        self.register_outputs(
            {
                "dockerHost": self.docker_host,
                "dockerVersion": self.docker_version,
                "kvmUsable": self.kvm_usable,
                "kvmVerdict": self.kvm_verdict,
                "libvirtVersion": self.libvirt_version,
            }
        )


@dataclasses.dataclass(frozen=True)
class PlaygroundArgs:
    config: NexusConfig
    access: GuestAccess
    engine: DockerEngine
    # The VM's disk: the container, its image and volumes are stored on it.
    vm_disk: pulumi.CustomResource


class Playground(pulumi.ComponentResource):
    """The `nexus-playground` container and the image it runs from."""

    def __init__(self, name: str, args: PlaygroundArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:Playground", name, None, opts)
        settings = args.config.playground
        inner_vm = args.config.inner_vm.enabled
        after_engine = [args.engine]
        self.provider = docker.Provider(
            f"{name}-docker",
            host=args.engine.docker_host,
            ssh_opts=args.access.private_key_path.apply(
                lambda key: playground.ssh_options(args.access.target(key))
            ),
            opts=_child(self, depends_on=after_engine),
        )
        # What lives on the VM's disk is deleted with it: destroy needs no SSH into the VM
        # for it, so a VM that hangs can still be powered off (the VM's shutdown stops them).
        on_disk = _child(self, depends_on=after_engine, deleted_with=args.vm_disk)
        # What is stored on the disk is made again on a new disk: it names the disk's id.
        disk_id = args.vm_disk.id
        on_docker = _child(self, provider=self.provider, depends_on=after_engine, deleted_with=args.vm_disk)
        image_id, self.digest = self._image(name, args, disk_id, on_docker, on_disk)
        # Runs before the container is replaced (delete-first): what the new one needs from
        # the VM is checked while the old one still runs.
        self.preflight = PackageResource(
            container_preflight.RESOURCE,
            f"{name}-preflight",
            {
                **args.access.props(),
                "container": settings.name,
                "ports": [dataclasses.asdict(port) for port in preflight.wanted_ports(settings.ports)],
                "devices": [
                    {"path": path, "key": f"nexus:playground.devices[{i}]"}
                    for i, path in enumerate(settings.devices)
                ],
                "docker_host": args.engine.docker_host,
                "settings_digest": playground.settings_digest(settings),
            },
            _child(self, depends_on=after_engine),
        )
        # A stopped container is started only once its ports were found free. Created just
        # before a new container, it removes what an interrupted up left under its name.
        self.presence = PackageResource(
            container_presence.RESOURCE,
            f"{name}-presence",
            {**args.access.props(), "container": settings.name, "docker_host": args.engine.docker_host},
            _child(self, depends_on=[*after_engine, self.preflight]),
        )

        volumes = [
            docker.ContainerVolumeArgs(host_path=v.source, container_path=v.target, read_only=v.read_only)
            if v.is_bind
            else docker.ContainerVolumeArgs(
                volume_name=v.source, container_path=v.target, read_only=v.read_only
            )
            for v in playground.all_volumes(settings, inner_vm=inner_vm)
        ]
        container_deps: list[pulumi.Resource] = [args.engine, self.preflight, self.presence]
        if inner_vm:
            # A named volume of its own, so destroy removes it after the container.
            self.inner_volume = docker.Volume(
                f"{name}-inner-vm-volume",
                name=playground.inner_vm_volume(settings.name).source,
                labels=[docker.VolumeLabelArgs(label=playground.DISK_LABEL, value=disk_id)],
                opts=on_docker,
            )
            container_deps.append(self.inner_volume)

        def device_args(kvm_usable: bool) -> list[docker.ContainerDeviceArgs]:
            chosen = playground.devices(settings, pass_kvm=inner_vm and bool(kvm_usable))
            return [docker.ContainerDeviceArgs(host_path=d, container_path=d) for d in chosen]

        self.container = docker.Container(
            f"{name}-container",
            name=settings.name,
            image=image_id,
            command=list(settings.command) or None,
            envs=playground.env_list(settings.env),
            ports=[
                docker.ContainerPortArgs(internal=p.container, external=p.vm, protocol=p.protocol)
                for p in settings.ports
            ],
            volumes=volumes,
            restart=settings.restart,
            privileged=settings.privileged,
            devices=args.engine.kvm_usable.apply(device_args),
            labels=[
                # A new presence (the container was removed by hand) means a new container;
                # a stopped one is started again in place by the presence's update.
                docker.ContainerLabelArgs(label=playground.PRESENCE_LABEL, value=self.presence.id),
                docker.ContainerLabelArgs(label=playground.DISK_LABEL, value=disk_id),
            ],
            # tini as PID 1 reaps the inner QEMU, which detaches from `docker exec`.
            init=True,
            must_run=True,
            # Its name and ports are unique in the VM: the old container goes before the new one.
            opts=_child(
                self,
                provider=self.provider,
                depends_on=container_deps,
                delete_before_replace=True,
                deleted_with=args.vm_disk,
            ),
        )
        self.name = self.container.name
        self.container_id = self.container.id
        self.register_outputs({"name": self.name, "id": self.container_id, "imageDigest": self.digest})

    def _image(
        self,
        name: str,
        args: PlaygroundArgs,
        disk_id: pulumi.Output[str],
        on_docker: pulumi.ResourceOptions,
        on_disk: pulumi.ResourceOptions,
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The image id the container runs from, and the image's digest (an output)."""
        source = args.config.playground.source
        container = args.config.playground.name
        if source.kind == "reference":
            # Kept in the VM on replace/destroy: an image built FROM it cannot lose its parent.
            image = docker.RemoteImage(
                f"{name}-image",
                name=source.value,
                keep_locally=True,
                triggers={"disk": disk_id},
                opts=on_docker,
            )
            return image.image_id, image.repo_digest
        if source.kind == "build":
            context = Path(source.value)
            digest = playground.tree_digest(context)
            image = docker.RemoteImage(
                f"{name}-image",
                # A tag per content: the old build's tag is removed after the container moved
                # to the new one (one shared tag would point at the new image by then).
                name=f"nexus/{container.lower()}:build-{digest[:16]}",
                # The legacy builder talks to the daemon through the provider's ssh:// client;
                # pulumi-docker's buildx path resolves its builder from the local Docker
                # context instead, so it built on this machine's Docker (or failed without one).
                build=docker.RemoteImageBuildArgs(context=str(context), use_legacy_builder=True),
                # A changed file in the context (by content) rebuilds.
                triggers={"context": digest, "disk": disk_id},
                keep_locally=False,
                opts=on_docker,
            )
            return image.image_id, image.image_id
        tarball = Path(source.value)
        # Streamed into the VM's `docker load`/`docker import -`: lifecycles.TarballImage says why.
        self.tarball = PackageResource(
            tarball_image.RESOURCE,
            f"{name}-tarball",
            {
                **args.access.props(),
                "container": container,
                "kind": source.kind,
                "key": source.key,
                "path": str(tarball),
                "digest": playground.file_digest(tarball),
                "disk_id": disk_id,
            },
            on_disk,
        )
        image_id: pulumi.Output[str] = self.tarball.output("image_id")
        return image_id, image_id


@dataclasses.dataclass(frozen=True)
class InnerImageArgs:
    config: NexusConfig
    access: GuestAccess
    engine: DockerEngine
    # The VM's disk: the copy is stored on it.
    vm_disk: pulumi.CustomResource


class InnerImage(pulumi.ComponentResource):
    """`nexus:innerVm.image`: in the host's cache, then in the VM's IMAGES_DIR once per digest.

    The container bind-mounts that directory read-only (playground.all_volumes); the
    inner VM's disk is an overlay on the copy. A resource of the nexus provider, not
    `CopyToRemote`: lifecycles.InnerImageCopy says why.
    """

    def __init__(self, name: str, args: InnerImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:InnerImage", name, None, opts)
        image = args.config.inner_vm.image
        assert image is not None, "InnerImage needs nexus:innerVm.image"
        inputs = {
            **args.access.props(),
            "url": image.url,
            "sha256": image.sha256,
            # Downloaded here and copied into the VM (through the server, for a remote host).
            "cache_dir": str(args.config.local_cache_dir),
            "disk_id": args.vm_disk.id,
        }
        self.copy = PackageResource(
            inner_image_copy.RESOURCE,
            f"{name}-copy",
            inputs,
            # Deleted with the VM's disk on destroy, without SSH; a replaced image is removed.
            _child(self, depends_on=[args.engine], deleted_with=args.vm_disk),
        )
        digest: pulumi.Output[str] = self.copy.output("digest")
        fmt: pulumi.Output[str] = self.copy.output("format")
        self.boot: pulumi.Output[dict[str, str]] = pulumi.Output.all(digest, fmt).apply(
            lambda values: dataclasses.asdict(inner_image.BootImage.of(*values))
        )
        self.digest = digest
        self.register_outputs({"digest": digest, "format": fmt})


def inner_qemu_settings(config: InnerVmConfig) -> dict[str, Any]:
    """nexus:innerVm as InnerQemu's inputs (its boot medium and machine; unset ones left out)."""
    settings: dict[str, Any] = {
        "name": config.name,
        "cpus": config.cpus,
        "memory_mib": config.memory_mib,
        "disk_size": config.disk_size,
        "accelerator": config.accelerator,
        "kernel": config.kernel,
        "initrd": config.initrd,
        "kernel_args": config.kernel_args,
        "iso": config.iso,
        "image": dataclasses.asdict(config.image) if config.image else None,
        "username": config.username,
        "hostname": config.hostname or None,
        "forwards": [dataclasses.asdict(f) for f in config.forwards],
        "powerdown_timeout_seconds": config.powerdown_timeout_seconds,
        "boot_timeout_seconds": config.boot_timeout_seconds,
        # None without shares, so an inner VM without them keeps the inputs it had (no restart).
        "shares": [
            {"tag": s.tag, "source": s.source, "path": s.path, "readOnly": s.read_only} for s in config.shares
        ]
        or None,
    }
    return {key: value for key, value in settings.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class InnerVmArgs:
    config: InnerVmConfig
    access: GuestAccess
    playground: Playground
    # Only with nexus:innerVm.image: the copied image and the key its seed carries.
    image: InnerImage | None = None
    ssh_public_key: pulumi.Input[str] | None = None


class InnerVm(pulumi.ComponentResource):
    """QEMU inside the playground container, KVM where it really runs guests."""

    def __init__(self, name: str, args: InnerVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:InnerVm", name, None, opts)
        config = args.config
        inputs: dict[str, Any] = {
            **args.access.props(),
            "container": args.playground.name,
            "container_id": args.playground.container_id,
            **inner_qemu_settings(config),
        }
        after: list[pulumi.Resource] = []
        if args.image is not None:
            # Inputs, so a new image or key restarts the inner VM (lifecycles.InnerVm.RESTART_KEYS).
            inputs["boot_image"] = args.image.boot
            inputs["ssh_public_key"] = args.ssh_public_key
            after.append(args.image.copy)
        self.qemu = PackageResource(
            inner_qemu.RESOURCE, f"{name}-qemu", inputs, _child(self, depends_on=after)
        )
        self.accelerator: pulumi.Output[str] = self.qemu.output("chosen_accelerator")
        self.qmp_status: pulumi.Output[str] = self.qemu.output("qmp_status")
        self.ready_seconds: pulumi.Output[float] = self.qemu.output("ready_seconds")
        self.register_outputs({"accelerator": self.accelerator, "qmpStatus": self.qmp_status})


@dataclasses.dataclass(frozen=True)
class GuestLayersArgs:
    config: NexusConfig
    # The VM layer the Lab declared.
    lab: VmBelow


class GuestLayers(pulumi.ComponentResource):
    """Everything above the VM, each layer depending on the one below it."""

    def __init__(self, name: str, args: GuestLayersArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TYPE_PREFIX}:GuestLayers", name, None, opts)
        config = args.config
        lab = args.lab
        access = GuestAccess(
            config.network.ssh_host,
            config.network.ssh_port,
            config.guest.username,
            lab.private_key_path,
            config.vm.state,
            config.host.proxy_command() if config.host else (),
        )
        # The root file system grows with the disk in the host layer (nexus:host:QemuVm).
        self.outputs: dict[str, Any] = {}
        playground_on = config.playground.enabled
        if not (playground_on or config.guest.install_packages):
            self.register_outputs(self.outputs)
            return
        self.engine = DockerEngine(
            f"{name}-docker",
            DockerEngineArgs(access, lab.vm_pid, lab.instance_id, config.playground.ready_timeout_seconds),
            _child(self),
        )
        self.outputs.update(
            dockerVersion=self.engine.docker_version,
            kvmUsable=self.engine.kvm_usable,
            kvmVerdict=self.engine.kvm_verdict,
            libvirtVersion=self.engine.libvirt_version,
            dockerReadySeconds=self.engine.ready_seconds,
        )
        if playground_on:
            self._playground(name, config, access, lab)
        self.register_outputs(self.outputs)

    def _playground(self, name: str, config: NexusConfig, access: GuestAccess, lab: VmBelow) -> None:
        self.playground = Playground(
            f"{name}-playground", PlaygroundArgs(config, access, self.engine, lab.disk), _child(self)
        )
        script_path = config.key_dir / "connect-playground.sh"
        self.shell_script = PackageResource(
            script_file.RESOURCE,
            f"{name}-playground-shell",
            {
                "path": str(script_path),
                "content": access.private_key_path.apply(
                    lambda key: playground.shell_script(access.target(key), config.playground.name)
                ),
            },
            # Deleted before the stack's directory, which is removed only when empty.
            _child(self, depends_on=[self.playground, lab.state]),
        )
        self.outputs.update(
            playgroundContainer=self.playground.name,
            playgroundImageDigest=self.playground.digest,
            playgroundShellScript=str(script_path),
        )
        inner_config = config.inner_vm
        if not inner_config.enabled:
            return
        image = None
        if inner_config.image is not None:
            image = InnerImage(
                f"{name}-inner-image",
                InnerImageArgs(config, access, self.engine, lab.disk),
                _child(self),
            )
        self.inner_vm = InnerVm(
            f"{name}-inner-vm",
            InnerVmArgs(inner_config, access, self.playground, image, lab.public_key),
            _child(self),
        )
        vm_ports = playground.ports_by_container_port(config.playground.ports)
        # ssh into the inner VM through the VM; without an SSH forward it says how to add one.
        inner_script = VmPaths(config.key_dir).inner_vm_connect_script
        self.inner_shell_script = PackageResource(
            script_file.RESOURCE,
            f"{name}-inner-vm-shell",
            {
                "path": str(inner_script),
                "content": access.private_key_path.apply(
                    lambda key: inner_image.shell_script(
                        access.target(key), config.playground.name, inner_config, vm_ports
                    )
                ),
            },
            _child(self, depends_on=[self.inner_vm, lab.state]),
        )
        self.outputs.update(
            innerVmAccelerator=self.inner_vm.accelerator,
            innerVmQmpStatus=self.inner_vm.qmp_status,
            innerVmReadySeconds=self.inner_vm.ready_seconds,
            innerVmReach=inner.reach_hint(
                config.playground.name, inner_config, vm_ports, shell_script=str(inner_script)
            ),
            innerVmSerialLog=str(inner.InnerVmPaths(inner_config.name).serial_log),
            innerVmShellScript=str(inner_script),
        )

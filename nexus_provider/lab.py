"""nexus:index:Lab, the component a consumer declares: one typed lab, its host resources wired.

    Lab
      ├─ BaseImage       first: it can refuse the disk size before the VM's own files exist
      ├─ StateDir        after the image; deleted last
      ├─ SshKey, OverlayDisk, CloudInitSeed
      ├─ QemuVm          ready when SSH answers and cloud-init is done
      └─ GuestLayers     Docker, the playground container and the inner VM, when enabled
                         (nexus_provider/guest_layers.py, nexus:guest:*)

The reference program (__main__.py) declares one through the package's SDK, with its `nexus:`
stack settings as the arguments. The provider constructs it (`construct`); its checks and host
detection run on the machine that runs QEMU: this one, or the server `nexus:host` names
(placement.py). A lab on a server has its host resources' steps run there over SSH, and a
second StateDir here for its key pair and connect script (ScriptFile).
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from nexus_components import host_inputs
from nexus_components.config import load_config
from nexus_components.host import ssh_banner
from nexus_components.host.hostfacts import accelerator_note
from nexus_components.placement import place

from . import lab_args
from .declared import PackageResource
from .guest import script_file
from .host import base_image, cloud_init_seed, overlay_disk, qemu_vm, ssh_key, state_dir
from .lab_args import LabArgs, LabOutputs, Props
from .spec import ComponentSpec, snake_case, to_schema_names

# The host resources the Lab declares (the guest layers' components declare theirs the same way).
HostResource = PackageResource


class Lab(pulumi.ComponentResource):
    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        # Everything the configuration and the host can refuse is refused before anything is declared.
        settings = lab_args.config_document(props)
        placed = place(load_config(settings, stack=pulumi.get_stack(), home=Path.home()), settings)
        config, host, qemu_img = placed.config, placed.host, placed.qemu_img
        super().__init__(COMPONENT.pulumi_type, name, None, opts)
        if pulumi.runtime.is_dry_run() and config.host is None:
            # The VM's drift check reads its SSH banner: started now, it is read by the time
            # the engine gets to the VM.
            ssh_banner.read_early(config.network.ssh_host, config.network.ssh_port)
        note = accelerator_note(config.vm.accelerator, host.accelerator)
        if note:
            pulumi.log.warn(note, resource=self)

        def child(after: pulumi.Resource | None = None) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[after] if after else None)

        def on_host(inputs: Props) -> Props:
            # Where QEMU runs: this machine (no `host`: a local lab's inputs are as they were).
            return {**inputs, "host": config.host.as_props()} if config.host else inputs

        image = HostResource(
            base_image.RESOURCE,
            f"{name}-image",
            on_host(host_inputs.base_image_inputs(config, qemu_img)),
            child(),
        )
        state = HostResource(
            state_dir.RESOURCE,
            f"{name}-state",
            on_host(lab_args.state_dir_inputs(config, host)),
            child(image),
        )
        # A lab on a remote host keeps its key pair and connect script in a directory here.
        local = (
            HostResource(state_dir.RESOURCE, f"{name}-local", lab_args.local_dir_inputs(config), child(image))
            if config.host
            else state
        )
        key = HostResource(
            ssh_key.RESOURCE, f"{name}-ssh-key", host_inputs.ssh_key_inputs(config), child(local)
        )
        disk = HostResource(
            overlay_disk.RESOURCE,
            f"{name}-disk",
            on_host(
                lab_args.overlay_disk_inputs(
                    config, host, qemu_img, image.output("path"), image.output("digest")
                )
            ),
            child(state),
        )
        seed = HostResource(
            cloud_init_seed.RESOURCE,
            f"{name}-seed",
            on_host(host_inputs.cloud_init_seed_inputs(config, key.output("public_key"))),
            child(state),
        )
        vm = HostResource(
            qemu_vm.RESOURCE,
            f"{name}-vm",
            on_host(
                lab_args.qemu_vm_inputs(
                    config,
                    host,
                    key.output("private_key_path"),
                    seed.output("instance_id"),
                    disk.id,
                    placed.virtiofsd,
                    placed.sftp_server,
                )
            ),
            child(state),
        )
        private_key = key.output("private_key_path")
        if config.host:
            HostResource(
                script_file.RESOURCE,
                f"{name}-connect-ssh",
                {
                    "path": lab_args.file_outputs(config, host)["connect_script"],
                    "content": private_key.apply(lambda path: lab_args.connect_script(config, path)),
                },
                pulumi.ResourceOptions(parent=self, depends_on=[local, vm]),
            )
            HostResource(
                script_file.RESOURCE,
                f"{name}-tunnel",
                {
                    "path": lab_args.file_outputs(config, host)["tunnel_script"],
                    "content": lab_args.tunnel_script(config),
                },
                pulumi.ResourceOptions(parent=self, depends_on=[local]),
            )
        self.outputs: Props = {
            **lab_args.file_outputs(config, host),
            "ssh_command": private_key.apply(lambda path: lab_args.ssh_command(config, path)),
            "private_key_path": private_key,
            "vm_pid": vm.output("pid"),
            "vm_ready_seconds": vm.output("ready_seconds"),
        }
        # Docker, the container and the inner VM as the playground and innerVm arguments say.
        # A host-only lab has none: pulumi-docker's SDK, slow to import, is not even loaded.
        if config.playground.enabled or config.guest.install_packages:
            from .guest_layers import GuestLayers, GuestLayersArgs, VmBelow

            below = VmBelow(
                private_key_path=private_key,
                public_key=key.output("public_key"),
                vm_pid=vm.output("pid"),
                instance_id=seed.output("instance_id"),
                disk=disk,
                vm=vm,
                after_vm=[vm, disk],
                state=local,  # the directory of the connect scripts: this machine's
            )
            guest = GuestLayers(f"{name}-guest", GuestLayersArgs(config=config, lab=below), child())
            # Under the names the reference program exports them.
            self.outputs.update({snake_case(output): value for output, value in guest.outputs.items()})
        self.register_outputs(to_schema_names(self.outputs))


COMPONENT = ComponentSpec(
    pulumi_type="nexus:index:Lab",
    description="A nested-virtualization lab on this machine, declared with the settings the reference "
    "program reads from its `nexus:` stack configuration: the cloud image, the VM (QEMU), its forwarded "
    "ports, the guest's login, the lab's directories, the playground container in the VM (pulumi-docker) "
    "and the inner VM in it. `up` returns once every layer asked for runs: the VM answers on SSH with "
    "cloud-init done, Docker answers, the container runs, the inner VM reports running. Every argument "
    "is optional (the defaults are the stack configuration's: the playground on, the inner VM off), and "
    "must be known when the program runs (a plain value, not another resource's output).",
    inputs=LabArgs,
    outputs=LabOutputs,
    component=Lab,
)

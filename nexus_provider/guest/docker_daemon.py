"""nexus:guest:DockerDaemon, Docker in the VM, ready."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_components.guest import lifecycles

from ..settings import setting
from ..spec import ResourceSpec, prop
from .access import VmAccess, docker_host


@dataclass(frozen=True)
class DockerDaemonArgs(VmAccess):
    docker_host: str = docker_host()
    vm_pid: int = prop(
        "QEMU's process id (QemuVm's `pid`): a VM started again is waited for again.", minimum=0
    )
    instance_id: str = prop(
        "The seed's instance id (CloudInitSeed's `instanceId`): a new seed is waited for again."
    )
    timeout_seconds: int = setting(
        "How long `up` waits for cloud-init to finish and the daemon to answer the login user.",
        "playground",
        "readyTimeoutSeconds",
    )


@dataclass(frozen=True)
class DockerDaemonState:
    docker_version: str = prop("The Docker server's version, as the login user sees it.")
    kvm_usable: bool = prop("Whether the VM's /dev/kvm can run guests (kvm-ok says so).")
    kvm_verdict: str = prop("What kvm-ok says in the VM.")
    libvirt_version: str = prop("libvirtd's version in the VM, or what is missing.")
    ready_seconds: float = prop("How long the wait for cloud-init and the daemon took.")
    answers: bool | None = prop("Whether the daemon answered the login user when last looked at.")
    boot_id: str | None = prop(
        "The VM kernel's boot id when the daemon was last found ready: when QEMU changes but the boot "
        "id does not (the VM resumed from a suspension), one login that finds the daemon answering "
        "replaces the wait."
    )


RESOURCE = ResourceSpec(
    pulumi_type="nexus:guest:DockerDaemon",
    description="Docker in the VM, ready: cloud-init done and the daemon answering the login user (who is "
    "added to the docker group). A daemon stopped in the VM is the lab's own, so `up` starts it once instead "
    "of waiting; `preview` shows a daemon that does not answer. Outputs the seed's checks (kvm-ok, libvirt). "
    "Its id is the `ssh://` Docker host of the VM.",
    inputs=DockerDaemonArgs,
    outputs=DockerDaemonState,
    lifecycle=lifecycles.DockerEngine(),
)

"""One inner VM in one container, driven through a command runner (the VM's SSH).

Starts QEMU in the playground container (KVM when a probe boots there, else TCG), waits
for QMP and, for a cloud image, for its cloud-init; stops it with the powerdown ladder
of `qemu_process`, the one the VM's own QEMU goes through, via `ContainerQemu`.
No Pulumi import: the provider's lifecycle wraps it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nexus_components.core.progress import say as _say
from nexus_components.core.qemu_process import qmp_reply, shut_down
from nexus_components.core.runner import (
    SSH_UNREACHABLE,
    CommandResult,
    CommandRunner,
    GuestError,
    check,
    output_tail,
    unreachable,
    wait_for,
)

from . import inner_image, playground
from . import inner_vm as inner
from .settings import InnerImage, InnerVmConfig, PortToGuest

Props = dict[str, Any]

INNER_LAYER = "inner VM"
# What `up` says when the VM hangs during the inner VM's boot; the README's
# troubleshooting entry quotes both.
INNER_VM_STALLED = f"{INNER_LAYER}: the VM stopped answering while the inner VM booted"
INNER_VM_STALLED_HINT = (
    "run `pulumi up` again: it restarts the VM that hangs and then the inner VM. Nested "
    "virtualization under an emulated (TCG) VM can stall like this; if it recurs, set "
    "nexus:innerVm.accelerator to tcg"
)


def container_presence(runner: CommandRunner, container: str) -> str:
    """One of playground's container states, or "unreachable" (the VM does not answer)."""
    result = runner.run(playground.container_state(container), timeout=60)
    if unreachable(result):
        return "unreachable"
    return playground.read_container_state(result.returncode, result.output)


def container_status(runner: CommandRunner, container: str) -> str:
    """ "running", "not running" (stopped or gone), or "unreachable" (the VM does not answer)."""
    presence = container_presence(runner, container)
    return presence if presence in (playground.RUNNING, "unreachable") else "not running"


def inner_config(props: Props) -> InnerVmConfig:
    spec = props["spec"]
    return InnerVmConfig(
        enabled=True,
        name=spec["name"],
        cpus=int(spec["cpus"]),
        memory_mib=int(spec["memory_mib"]),
        disk_size=spec["disk_size"],
        accelerator=spec["accelerator"],
        kernel=spec.get("kernel"),
        initrd=spec.get("initrd"),
        kernel_args=spec["kernel_args"],
        iso=spec.get("iso"),
        image=InnerImage(**spec["image"]) if spec.get("image") else None,
        username=spec.get("username", "ubuntu"),
        hostname=spec.get("hostname", ""),
        forwards=tuple(PortToGuest(int(f["container"]), int(f["guest"])) for f in spec["forwards"]),
        powerdown_timeout_seconds=int(spec["powerdown_timeout_seconds"]),
        boot_timeout_seconds=int(spec["boot_timeout_seconds"]),
    )


class InnerVmMachine:
    """One inner VM in one container, driven through a runner (the VM's SSH)."""

    def __init__(
        self,
        runner: CommandRunner,
        container: str,
        config: InnerVmConfig,
        *,
        boot: inner_image.BootImage | None = None,
        ssh_public_key: str = "",
    ) -> None:
        self.runner = runner
        self.container = container
        self.config = config
        self.paths = inner.InnerVmPaths(config.name)
        # A cloud-image boot (config.image): the copy in the VM, and the key its seed carries.
        self.boot = boot
        self.ssh_public_key = ssh_public_key

    def _check(self, argv: list[str], what: str, hint: str, **kwargs: Any) -> str:
        result = self.runner.run(argv, **kwargs)
        return check(
            result, layer=INNER_LAYER, what=what, hint=hint, where=f"the container {self.container}"
        ).stdout

    def container_running(self) -> bool:
        return container_status(self.runner, self.container) == "running"

    def pid(self) -> int | None:
        result = self.runner.run(inner.running_pid(self.container, self.paths.pid_file), timeout=60)
        text = result.stdout.strip()
        return int(text) if result.ok and text.isdigit() else None

    def qmp_result(self, command: str, **arguments: Any) -> CommandResult:
        return self.runner.run(
            inner.qmp_argv(self.container, self.paths.qmp_socket),
            input_bytes=inner.qmp_input(command, **arguments),
            timeout=60,
        )

    def qmp(self, command: str, **arguments: Any) -> str:
        return self.qmp_result(command, **arguments).stdout

    def qmp_running(self) -> str | None:
        """None once QMP reports `running`; else what is missing (VM_SILENT: no answer at all)."""
        result = self.qmp_result("query-status")
        if unreachable(result):
            return inner_image.VM_SILENT
        return None if inner.qmp_status(result.stdout) == "running" else "QMP does not report running yet"

    @staticmethod
    def stalled(argv: Sequence[str], detail: object) -> GuestError:
        # Nothing can be stopped or read in a VM that does not answer; it hangs.
        return GuestError(f"{INNER_VM_STALLED}: {detail}", command=argv, hint=INNER_VM_STALLED_HINT)

    def status(self) -> str:
        return inner.qmp_status(self.qmp("query-status"))

    def choose_accelerator(self) -> str:
        requested = self.config.accelerator
        if requested == "tcg":
            return "tcg"
        self._check(
            inner.write_file(self.container, self.paths.probe_image),
            "write the KVM probe image",
            "check the container's disk space",
            input_bytes=inner.probe_boot_sector(),
            timeout=60,
        )
        probe = self.runner.run(
            inner.in_container(self.container, inner.probe_argv("kvm", self.paths.probe_image)),
            timeout=inner.PROBE_TIMEOUT_SECONDS + 30,
        )
        if probe.returncode == inner.PROBE_EXIT_STATUS:
            return "kvm"
        if probe.returncode == SSH_UNREACHABLE:
            # SSH itself gave up (the probe's own bound, `timeout`, exits 124): the VM
            # hangs, which says nothing about KVM.
            raise self.stalled(probe.argv, inner_image.VM_SILENT)
        if requested == "kvm":
            raise GuestError(
                f"nexus:innerVm.accelerator is 'kvm' but KVM cannot run a guest in the container "
                f"{self.container} (probe exit status {probe.returncode})",
                command=probe.argv,
                output=output_tail(probe.output),
                hint="set nexus:innerVm.accelerator to 'auto' or 'tcg'; KVM needs /dev/kvm in the VM "
                "(see the kvmVerdict output) and passed into the container",
            )
        _say("inner-vm", f"KVM cannot run a guest here (probe exit status {probe.returncode}); using TCG")
        return "tcg"

    def start(self, log_prefix: str = "inner-vm", *, accelerator: str | None = None) -> Props:
        """Start QEMU; `accelerator` is one this container was already probed for."""
        started = time.monotonic()
        self._check(
            inner.make_dir(self.container, self.paths.dir),
            "create its directory",
            "check the volume",
            timeout=60,
        )
        if self.boot is not None:
            self._prepare_image_boot(self.boot)
        else:
            self._check(
                inner.create_disk_if_missing(self.container, self.paths.disk, self.config.disk_size),
                f"create its {self.config.disk_size} disk",
                "check the free space of the VM's disk (nexus:vm.diskSize)",
                timeout=120,
            )
        accelerator = accelerator or self.choose_accelerator()
        argv = inner.build_inner_argv(self.config, accelerator, self.boot)
        self._launch(argv, accelerator, log_prefix)
        if self.boot is not None:
            try:
                self._wait_for_guest(argv, started, log_prefix, last_try=False)
            except inner_image.GuestStuck as stuck:
                # Its disk holds what cloud-init did: the second boot is the shorter one.
                _say(log_prefix, f"{stuck}: it stalls; restarting its QEMU once")
                self.stop(powerdown_timeout=1)
                self._launch(argv, accelerator, log_prefix)
                self._wait_for_guest(argv, time.monotonic(), log_prefix, last_try=True)
        pid = self.pid()
        seconds = time.monotonic() - started
        _say(log_prefix, f"running ({accelerator}, pid {pid} in the container) after {seconds:.0f} s")
        return {
            "accelerator": accelerator,
            "pid": pid or 0,
            "qmp_status": "running",
            "ready_seconds": round(seconds, 1),
        }

    def _launch(self, argv: list[str], accelerator: str, log_prefix: str) -> None:
        """QEMU started in the container and reporting `running` over QMP."""
        _say(log_prefix, f"starting QEMU in {self.container} ({accelerator})")
        self._check(
            inner.in_container(self.container, argv),
            "start QEMU",
            "fix the cause named in the output (nexus:innerVm.*); the container keeps running",
            timeout=120,
        )
        try:
            _, missing = wait_for(
                inner_image.give_up_when_silent(self.qmp_running),
                timeout=float(self.config.boot_timeout_seconds),
                poll_seconds=1.0,
                log=lambda line: _say(log_prefix, line),
                waiting_for="the inner VM",
            )
        except inner_image.VmSilent as silent:
            raise self.stalled(argv, silent) from silent
        if missing is not None:
            tail = self.runner.run(inner.serial_tail(self.container, self.paths.serial_log), timeout=60)
            self.stop(powerdown_timeout=1)
            raise GuestError(
                f"{INNER_LAYER}: QEMU did not reach status running "
                f"within {self.config.boot_timeout_seconds} s",
                command=argv,
                output="last lines of its serial console:\n" + output_tail(tail.output),
                hint="raise nexus:innerVm.bootTimeoutSeconds, or check the boot media",
            )

    def _prepare_image_boot(self, boot: inner_image.BootImage) -> None:
        """An overlay disk on the copied image, and the inner VM's own seed beside it."""
        self._check(
            inner_image.create_overlay(
                self.container, self.paths.disk, self.paths.disk_backing, boot, self.config.disk_size
            ),
            f"create its {self.config.disk_size} disk on the image {boot.path}",
            f"check that {boot.path} is in the container (bind-mounted from the VM) and the VM's "
            "free space (nexus:vm.diskSize); the image must be at most nexus:innerVm.diskSize",
            timeout=120,
        )
        seed = inner_image.render_seed(self.config, self.ssh_public_key)
        self._check(
            inner.write_file(self.container, self.paths.seed_iso),
            "write its cloud-init seed",
            "check the container's disk space",
            input_bytes=inner_image.seed_iso_bytes(seed),
            timeout=120,
        )

    def _wait_for_guest(self, argv: list[str], started: float, log_prefix: str, *, last_try: bool) -> None:
        """QMP `running` is not yet a usable guest: wait for its cloud-init (and sshd). A guest
        that stalls after its cloud-init raises GuestStuck, unless this is the `last_try`."""
        timeout = max(1.0, self.config.boot_timeout_seconds - (time.monotonic() - started))
        try:
            _, missing = inner_image.wait_for_guest(
                self.runner,
                self.container,
                self.config,
                timeout=timeout,
                log=lambda line: _say(log_prefix, line),
            )
        except inner_image.VmSilent as silent:
            raise self.stalled(argv, silent) from silent
        except inner_image.GuestStuck as stuck:
            if not last_try:
                raise
            missing = str(stuck)
        if missing is None:
            return
        tail = self.runner.run(inner.serial_tail(self.container, self.paths.serial_log, 30), timeout=60)
        self.stop(powerdown_timeout=1)
        raise GuestError(
            f"{INNER_LAYER}: the image booted but was not ready within "
            f"{self.config.boot_timeout_seconds} s: {missing}",
            command=argv,
            output="last lines of its serial console:\n" + output_tail(tail.output, 30),
            hint="raise nexus:innerVm.bootTimeoutSeconds if it is just slow (TCG is); the image needs "
            "cloud-init with the NoCloud data source, and an sshd for the SSH forward",
        )

    def stop(self, *, powerdown_timeout: float | None = None) -> None:
        """ACPI powerdown, bounded wait, QMP quit, SIGTERM, then SIGKILL
        (qemu_process.shut_down); runtime files go in any case."""
        timeout = self.config.powerdown_timeout_seconds if powerdown_timeout is None else powerdown_timeout
        shut_down(ContainerQemu(self), powerdown_timeout=timeout, log=lambda line: _say("inner-vm", line))


@dataclass(frozen=True)
class ContainerQemu:
    """The inner VM's QEMU in its container, for the shutdown ladder (qemu_process.QemuControl):
    every step is one command through the machine's runner (`docker exec` over SSH)."""

    machine: InnerVmMachine
    subject: str = ""  # log lines carry the "inner-vm" prefix
    poll_seconds: float = 1.0

    def pids(self) -> list[int]:
        pid = self.machine.pid()
        return [] if pid is None else [pid]

    def where(self, pid: int) -> str:
        return f"pid {pid} in {self.machine.container}"

    def monitored(self, pid: int) -> bool:
        return True  # the pid comes from the pid file of the QEMU that listens on the socket

    def qmp(self, command: str) -> bool:
        result = self.machine.qmp_result(command)
        reply = qmp_reply(result.stdout)
        if reply is not None:
            return "return" in reply
        # No reply within socat's second after the request: a QEMU slowed down by nested
        # TCG may still act on it, so only a relay that failed (no socket, no VM) is silent.
        return result.ok

    def alive(self, pid: int) -> bool:
        # Unreachable (the VM hangs) counts as gone: nothing more can be done from here.
        machine = self.machine
        return machine.runner.run(
            inner.process_alive(machine.container, machine.paths.pid_file, pid), timeout=60
        ).ok

    def terminate(self, pid: int) -> None:
        self.machine.runner.run(inner.kill_pid(self.machine.container, pid, 15), timeout=60)

    def kill(self, pid: int) -> None:
        self.machine.runner.run(inner.kill_pid(self.machine.container, pid), timeout=60)

    def remove_runtime_files(self) -> None:
        paths = list(self.machine.paths.runtime_files())
        self.machine.runner.run(inner.remove_files(self.machine.container, paths), timeout=60)

    def survived(self, pid: int) -> Exception:
        container = self.machine.container
        return GuestError(
            f"{INNER_LAYER}: QEMU (pid {pid} in {container}) survived SIGKILL",
            hint=f"remove the container by hand: docker rm -f {container}",
        )

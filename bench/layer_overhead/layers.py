"""The seam: a layer is how to run a command there, its accelerator, and whether it is up.

    host       this machine, the baseline
    vm         the QEMU VM, over SSH with the stack's key
    container  the playground container, `docker exec` inside the VM
    inner-vm   the optional VM inside the container

Each `find_*` function looks at the lab and returns a `Layer`; a layer the stack does not
have is returned "not up" with the reason, and a layer the stack has but that does not
answer is an error naming it. Adding a layer means writing its `LayerShell` and its
`find_*` function, nothing else: the runner, table and chart take any list of layers.

The guest layers find themselves in the stack (see `lab.Lab`):
    playgroundContainer   output: the playground container's name (container layer); the
                          ports it publishes on the VM come from its Docker resource
    innerVmAccelerator    output: the inner VM runs, with this accelerator
    innerVmShellScript    output: connect-inner-vm.sh, ssh through the VM into the inner
                          VM (needs its SSH forward); without it the column says why
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nexus_components.core.ssh import SshTarget
from nexus_components.guest import playground
from nexus_components.host.vm_process import process_alive

from .errors import BenchError
from .lab import CONTAINER_OUTPUT, Forward, Lab

# OpenSSH's exit status when it could not connect or authenticate.
SSH_UNREACHABLE = 255
PROGRAM_NAME = "nexus-bench"
INNER_VM_ACCELERATOR_OUTPUT = "innerVmAccelerator"
# The generated script that runs a command in the inner VM, and what it says without a way in.
INNER_VM_SHELL_OUTPUT = "innerVmShellScript"
NO_SSH_FORWARD = "has no SSH forward"

GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class LayerShell(Protocol):
    """How the benchmark reaches a layer: every command there goes through `command`."""

    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        """The argument list that, run on the host, runs `argv` in the layer."""
        ...

    def install(self, program: Path) -> str:
        """Copy the workload program into the layer; return its path there."""
        ...


@dataclass(frozen=True)
class HttpRoute:
    """A server listening on `layer_port` in the layer answers the host on `host_port`."""

    host_port: int
    layer_port: int


@dataclass(frozen=True)
class Layer:
    name: str
    accelerator: str
    shell: LayerShell | None  # None: the layer is not up
    not_up_reason: str = ""
    platform: str = ""  # GOOS/GOARCH of the program to ship there
    scratch_dir: str = "/var/tmp"  # on the layer's own disk, for the disk workloads
    http_routes: tuple[HttpRoute, ...] = ()

    @property
    def up(self) -> bool:
        return self.shell is not None


def not_up(name: str, accelerator: str, reason: str) -> Layer:
    return Layer(name=name, accelerator=accelerator, shell=None, not_up_reason=reason)


def run_in(
    layer_name: str, argv: Sequence[str], *, timeout: float, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a host argument list with a bound on its time; errors name the layer."""
    try:
        return subprocess.run(
            list(argv), input=input_bytes or b"", capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(
            f"layer {layer_name}: no answer within {timeout:.0f} s", command=list(argv)
        ) from error
    except FileNotFoundError as error:
        raise BenchError(
            f"layer {layer_name}: {argv[0]} was not found on PATH", command=list(argv)
        ) from error


def checked(layer_name: str, what: str, result: subprocess.CompletedProcess[bytes], hint: str = "") -> str:
    if result.returncode != 0:
        raise BenchError(
            f"layer {layer_name}: {what} failed (exit status {result.returncode})",
            command=[str(arg) for arg in result.args],
            output=(result.stdout + result.stderr).decode(errors="replace")[-2000:],
            hint=hint,
        )
    return result.stdout.decode(errors="replace")


def copy_through_shell(layer_name: str, shell: LayerShell, program: Path, remote_path: str) -> str:
    """cat over the layer's own shell (SSH), not scp: needs nothing there but `sh`."""
    write = ["sh", "-c", 'cat > "$1.tmp" && chmod 755 "$1.tmp" && mv "$1.tmp" "$1"', "sh", remote_path]
    copy = run_in(layer_name, shell.command(write), timeout=300, input_bytes=program.read_bytes())
    checked(layer_name, "copying the workload program", copy)
    return remote_path


# --------------------------------------------------------------------------- host


class HostShell:
    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        return list(argv)

    def install(self, program: Path) -> str:
        return str(program)


def host_platform() -> str:
    system = {"darwin": "darwin", "windows": "windows"}.get(platform.system().lower(), "linux")
    machine = platform.machine().lower()
    return f"{system}/{GO_ARCH.get(machine, machine)}"


def find_host(lab: Lab) -> Layer:
    # The disk workloads write beside the VM's own disk (the state directory); the HTTP
    # server picks a free loopback port (0) and reports it.
    return Layer(
        "host",
        "native",
        HostShell(),
        platform=host_platform(),
        scratch_dir=str(lab.state_dir),
        http_routes=(HttpRoute(0, 0),),
    )


# --------------------------------------------------------------------------- vm


@dataclass(frozen=True)
class VmShell:
    target: SshTarget
    # One SSH connection shared by every command (OpenSSH multiplexing): a handshake with
    # a TCG guest costs seconds, which would otherwise be paid once per workload.
    control_path: str | None = None
    remote_program: str = f"/var/tmp/{PROGRAM_NAME}"

    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        command = self.target.argv(["sudo", "-n", *argv] if as_root else list(argv))
        if self.control_path:
            command[1:1] = multiplexing_options(self.control_path)
        return command

    def install(self, program: Path) -> str:
        return copy_through_shell("vm", self, program, self.remote_program)


def multiplexing_options(control_path: str) -> list[str]:
    # ControlPersist: the shared connection closes itself 60 s after its last use, even if
    # the benchmark is killed before it can close it.
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}", "-o", "ControlPersist=60"]


@contextlib.contextmanager
def shared_connection(target: SshTarget) -> Iterator[str | None]:
    """A control socket path for the run (POSIX OpenSSH only), closed and removed after it."""
    if os.name != "posix":
        yield None
        return
    # A short path: UNIX socket paths are limited to about 104 bytes.
    directory = tempfile.mkdtemp(prefix="nexus-bench-")
    control_path = str(Path(directory) / "ssh")
    try:
        yield control_path
    finally:
        with contextlib.suppress(BenchError):
            stop = ["ssh", "-o", f"ControlPath={control_path}", "-O", "exit", f"{target.user}@{target.host}"]
            run_in("vm", stop, timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def http_routes_to_vm(
    forwards: Sequence[Forward], taken_by_container: Sequence[int]
) -> tuple[HttpRoute, ...]:
    """The VM's forwards whose guest port no container holds."""
    return tuple(HttpRoute(f.host, f.guest) for f in forwards if f.guest not in taken_by_container)


def find_vm(lab: Lab, control_path: str | None = None) -> tuple[Layer, VmShell]:
    if not process_alive(lab.vm_pid):
        raise BenchError(
            f"layer vm: the stack's QEMU (pid {lab.vm_pid}) is not running",
            hint=f"start it again with `scripts/pulumi up --stack {lab.stack}`",
        )
    shell = VmShell(lab.ssh, control_path)
    probe = run_in("vm", shell.command(["uname", "-m"]), timeout=60)
    if probe.returncode == SSH_UNREACHABLE:
        raise BenchError(
            f"layer vm: unreachable over SSH at {lab.ssh.user}@{lab.ssh.host}:{lab.ssh.port}",
            command=[str(arg) for arg in probe.args],
            output=probe.stderr.decode(errors="replace"),
            hint=f"check `scripts/pulumi preview --stack {lab.stack}` (a stopped VM shows as a change) "
            "and the serial console in the state directory",
        )
    machine = checked("vm", "uname -m", probe).strip()
    if machine not in GO_ARCH:
        raise BenchError(f"layer vm: unsupported architecture {machine!r}; allowed: x86_64, aarch64")
    layer = Layer(
        "vm",
        lab.accelerator,
        shell,
        platform=f"linux/{GO_ARCH[machine]}",
        http_routes=http_routes_to_vm(lab.forwards, [vm_port for vm_port, _ in lab.container_ports]),
    )
    return layer, shell


# --------------------------------------------------------------------------- container


@dataclass(frozen=True)
class ContainerShell:
    vm: VmShell
    container: str
    program_path: str = f"/tmp/{PROGRAM_NAME}"

    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        # -i keeps stdin open: the HTTP server exits when the benchmark closes it.
        user = ["-u", "0"] if as_root else []
        return self.vm.command(["docker", "exec", "-i", *user, self.container, *argv], as_root=True)

    def install(self, program: Path) -> str:
        # `docker cp` needs nothing inside the container, not even a shell.
        in_vm = self.vm.install(program)
        copy = self.vm.command(["docker", "cp", in_vm, f"{self.container}:{self.program_path}"], as_root=True)
        try:
            checked("container", "docker cp of the workload program", run_in("container", copy, timeout=120))
        finally:
            # The VM's copy was only a stop on the way in.
            run_in("container", self.vm.command(["rm", "-f", in_vm]), timeout=60)
        return self.program_path


def http_routes_to_container(
    forwards: Sequence[Forward], published: Sequence[tuple[int, int]]
) -> tuple[HttpRoute, ...]:
    """Host port -> VM port (QEMU forward) -> container port (docker -p), chained."""
    container_port_of = dict(published)
    return tuple(
        HttpRoute(f.host, container_port_of[f.guest]) for f in forwards if f.guest in container_port_of
    )


def find_container(lab: Lab, vm: Layer, vm_shell: VmShell) -> Layer:
    name = lab.outputs.get(CONTAINER_OUTPUT)
    if not name:
        return not_up("container", vm.accelerator, "the stack has no playground container")
    inspect = run_in(
        "container",
        vm_shell.command(playground.container_state(str(name)), as_root=True),
        timeout=60,
    )
    state = playground.read_container_state(
        inspect.returncode, (inspect.stdout + inspect.stderr).decode(errors="replace")
    )
    if state != playground.RUNNING:
        raise BenchError(
            f"layer container: {name!r} is not running in the VM",
            command=[str(arg) for arg in inspect.args],
            output=(inspect.stdout + inspect.stderr).decode(errors="replace"),
            hint=f"bring it back with `scripts/pulumi up --stack {lab.stack}`",
        )
    # A container shares the VM's kernel and CPU: same accelerator, same architecture.
    return Layer(
        "container",
        vm.accelerator,
        ContainerShell(vm_shell, str(name)),
        platform=vm.platform,
        scratch_dir="/tmp",
        http_routes=http_routes_to_container(lab.forwards, lab.container_ports),
    )


# --------------------------------------------------------------------------- inner VM


@dataclass(frozen=True)
class InnerVmShell:
    """Commands in the inner VM through the stack's connect-inner-vm.sh (ssh through the VM)."""

    script: str
    remote_program: str = f"/var/tmp/{PROGRAM_NAME}"

    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        # The script hands its arguments to ssh, which joins them into one remote shell line.
        return [self.script, shlex.join(["sudo", "-n", *argv] if as_root else list(argv))]

    def install(self, program: Path) -> str:
        return copy_through_shell("inner-vm", self, program, self.remote_program)


def find_inner_vm(lab: Lab, container: Layer) -> Layer:
    accelerator = lab.outputs.get(INNER_VM_ACCELERATOR_OUTPUT)
    if not accelerator:
        return not_up("inner-vm", "-", "the stack has no inner VM")
    script = lab.outputs.get(INNER_VM_SHELL_OUTPUT)
    if not script or not Path(str(script)).is_file():
        return not_up("inner-vm", str(accelerator), "the stack exports no way to run commands in it")
    shell = InnerVmShell(str(script))
    probe = run_in("inner-vm", shell.command(["uname", "-m"]), timeout=120)
    output = (probe.stdout + probe.stderr).decode(errors="replace")
    if probe.returncode != 0 and NO_SSH_FORWARD in output:
        return not_up("inner-vm", str(accelerator), "it has no SSH forward (nexus:innerVm.forwards)")
    machine = checked(
        "inner-vm",
        "uname -m over SSH",
        probe,
        hint=f"is the inner VM up? `scripts/pulumi preview --stack {lab.stack}` shows it; "
        "its serial console is in the innerVmReach output",
    ).strip()
    if machine not in GO_ARCH:
        raise BenchError(f"layer inner-vm: unsupported architecture {machine!r}; allowed: x86_64, aarch64")
    return Layer("inner-vm", str(accelerator), shell, platform=f"linux/{GO_ARCH[machine]}")


def find_layers(lab: Lab, control_path: str | None = None) -> list[Layer]:
    """Every layer, outermost first; raises on a layer the stack has that does not answer."""
    vm, vm_shell = find_vm(lab, control_path)
    container = find_container(lab, vm, vm_shell)
    return [find_host(lab), vm, container, find_inner_vm(lab, container)]

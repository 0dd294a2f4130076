"""Dynamic providers of the guest layers: the Docker engine's readiness and the inner VM.

Why these two are dynamic providers and not pulumi-command: both must look at the
machine in `diff`/`read` (a daemon that stopped answering, an inner QEMU that died or
whose container was recreated shows in `pulumi preview`), which `remote.Command`
cannot. The container itself is pulumi-docker's; one-shot steps are pulumi-command's
(see components.py). Every command goes through the shared `CommandRunner`.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from nexus_components.core.files import remove_quietly
from nexus_components.core.runner import (
    SSH_UNREACHABLE,
    CommandRunner,
    GuestError,
    SshRunner,
    check,
    close_shared_connection,
    output_tail,
    unreachable,
    wait_for,
)
from nexus_components.core.ssh import SshTarget

from ..providers import _reports_errors, _say
from . import engine, inner_image, playground, preflight
from . import inner_vm as inner
from .inner_vm_machine import (
    InnerVmMachine,
    container_presence,
    container_status,
    inner_config,
)

Props = dict[str, Any]

ENGINE_LAYER = "Docker engine"


def _target(props: Props) -> SshTarget:
    return SshTarget(
        host=props["ssh_host"],
        port=int(props["ssh_port"]),
        user=props["username"],
        private_key=Path(props["private_key"]),
    )


def _runner(props: Props) -> CommandRunner:
    return SshRunner(_target(props))


def _changed(olds: Props, news: Props, keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if olds.get(key) != news.get(key)]


# --------------------------------------------------------------------------- Docker engine


NO_SSH = "SSH to the VM does not answer"
DAEMON_HINT = (
    "ssh in (sshCommand output), see `systemctl status docker` and `journalctl --unit docker`, "
    "fix the cause, then `pulumi up`; the VM keeps running"
)


class EngineWait:
    """One wait for the engine: what keeps it from being ready, starting a stopped daemon once.

    The daemon is the lab's own, so a daemon systemd reports stopped once cloud-init is done
    (stopped by hand, or given up) is started rather than waited for; one that cannot be
    started, or stops again, ends the wait at once with the command and its output.
    """

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.started_daemon = False

    def missing(self) -> str | None:
        """What keeps the engine from being ready, or None; raises on what waiting cannot fix."""
        runner = self.runner
        status = runner.run(engine.CLOUD_INIT_STATUS, timeout=60)
        if unreachable(status):
            return NO_SSH
        missing = engine.cloud_init_missing(status.returncode, status.output)
        if missing == "cloud-init finished with an error":
            log = runner.run(engine.CLOUD_INIT_LOG_TAIL, timeout=60)
            raise GuestError(
                f"{ENGINE_LAYER}: cloud-init finished with an error in the VM "
                "(a package install may have failed)",
                command=engine.CLOUD_INIT_STATUS,
                output="last lines of /var/log/cloud-init-output.log:\n"
                + (output_tail(log.output) or "(none)"),
                hint="fix the cause above (nexus:guest.packages, nexus:guest.userData), then `pulumi up`; "
                "the VM keeps running",
            )
        if missing:
            return missing
        version = runner.run(engine.DOCKER_SERVER_VERSION, timeout=60)
        missing = engine.docker_missing(version.returncode, version.output)
        if missing == "docker is not installed in the VM":
            raise GuestError(
                f"{ENGINE_LAYER}: docker is not installed in the VM",
                command=engine.DOCKER_SERVER_VERSION,
                output=output_tail(version.output),
                hint="set nexus:guest.installPackages to true (the seed's packages include docker.io), "
                "or use an image with Docker, or set nexus:playground.enabled to false",
            )
        if not missing:
            return None
        state = runner.run(engine.DOCKER_DAEMON_STATE, timeout=30).stdout.strip() or "unknown"
        if state in engine.DAEMON_STOPPED_STATES:
            if self.started_daemon:
                raise GuestError(
                    f"{ENGINE_LAYER}: the Docker daemon stopped again after `up` started it "
                    f"(systemctl says docker is {state})",
                    command=engine.START_DOCKER,
                    output=self._journal(),
                    hint=DAEMON_HINT,
                )
            self._start_daemon(state)
            return f"{missing}; `up` started it (systemctl said docker was {state})"
        return f"{missing}; systemctl says docker is {state}"

    def _start_daemon(self, state: str) -> None:
        _say(
            "docker", f"the Docker daemon is {state} in the VM; starting it: {' '.join(engine.START_DOCKER)}"
        )
        self.started_daemon = True
        started = self.runner.run(engine.START_DOCKER, timeout=180)
        if started.ok:
            return
        status = f"exit status {started.returncode}"
        if started.returncode == SSH_UNREACHABLE:
            status = "SSH could not reach the VM"
        raise GuestError(
            f"{ENGINE_LAYER}: the Docker daemon was {state} in the VM and could not be started ({status})",
            command=engine.START_DOCKER,
            output="last lines of its output:\n"
            + (output_tail(started.output) or "(none)")
            + "\n"
            + self._journal(),
            hint=DAEMON_HINT,
        )

    def _journal(self) -> str:
        journal = self.runner.run(engine.DOCKER_JOURNAL_TAIL, timeout=60)
        return "last lines of `journalctl --unit docker`:\n" + (output_tail(journal.output) or "(none)")

    def not_ready(self, timeout: float, missing: str) -> GuestError:
        """The error when the wait ran out: its output and next step fit what was missing."""
        if missing == NO_SSH:
            output, hint = "", "is the VM running? `pulumi preview` shows it; `pulumi up` starts it again"
        elif missing.startswith("cloud-init"):
            log = self.runner.run(engine.CLOUD_INIT_LOG_TAIL, timeout=60)
            output = "last lines of /var/log/cloud-init-output.log:\n" + (output_tail(log.output) or "(none)")
            hint = (
                "raise nexus:playground.readyTimeoutSeconds if the VM is just slow (TCG is); "
                "ssh in (sshCommand output) and check `cloud-init status --long`"
            )
        else:
            output, hint = self._journal(), DAEMON_HINT
        return GuestError(
            f"{ENGINE_LAYER}: not ready within {timeout:.0f} s: {missing}",
            command=engine.DOCKER_SERVER_VERSION,
            output=output,
            hint=hint,
        )


@_reports_errors
class DockerEngineProvider(ResourceProvider):
    """Ready when cloud-init is done and the daemon answers; outputs the seed's checks."""

    KEYS = ("ssh_host", "ssh_port", "username", "private_key", "vm_pid", "instance_id")

    def create(self, props: Props) -> CreateResult:
        return CreateResult(id_=props["docker_host"], outs=engine_ready(_runner(props), props))

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        changed = _changed(olds, news, self.KEYS)
        if not changed and not self._answers(olds):
            # Stopped, or the VM is down: wait for it again (starting a stopped daemon).
            _say(
                "docker", "the Docker daemon does not answer; up waits for it, and starts it if it is stopped"
            )
            changed.append("daemon")
        return DiffResult(changes=bool(changed))

    def update(self, _id: str, _olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=engine_ready(_runner(news), news))

    def read(self, id_: str, props: Props) -> ReadResult:
        answers = self._answers(props)
        return ReadResult(id_=id_, outs={**props, "answers": answers})

    def delete(self, _id: str, props: Props) -> None:
        # Docker is part of the VM and goes with it. This is the last guest layer to go:
        # end the SSH connection the guest layers shared, so no ssh process outlives them.
        close_shared_connection(_target(props))

    @staticmethod
    def _answers(props: Props) -> bool:
        result = _runner(props).run(engine.DOCKER_AS_USER, timeout=60)
        return result.ok and bool(result.stdout.strip())


def engine_ready(runner: CommandRunner, props: Props) -> Props:
    """Waits for cloud-init and the daemon (starting a stopped one), then reads the seed's checks."""
    timeout = float(props["timeout_seconds"])
    wait = EngineWait(runner)
    seconds, missing = wait_for(
        wait.missing,
        timeout=timeout,
        log=lambda line: _say("docker", line),
        waiting_for="the Docker engine",
    )
    if missing is not None:
        raise wait.not_ready(timeout, missing)
    user_access = runner.run(engine.DOCKER_AS_USER, timeout=60)
    if not user_access.ok:
        # pulumi-docker connects as the login user: give it the docker group (next session on).
        check(
            runner.run(engine.join_docker_group(props["username"]), timeout=60),
            layer=ENGINE_LAYER,
            what="add the login user to the docker group",
            hint="check that the login user has passwordless sudo in the VM",
        )
        # Groups are read at login: sessions over the shared connection would not see it.
        close_shared_connection(_target(props))
        check(
            runner.run(engine.DOCKER_AS_USER, timeout=60),
            layer=ENGINE_LAYER,
            what="reach the Docker daemon as the login user",
            hint="ssh in and run `docker version`",
        )
    version = runner.run(engine.DOCKER_AS_USER, timeout=60).stdout.strip()
    kvm_ok = runner.run(engine.KVM_OK, timeout=60)
    verdict = engine.parse_kvm_ok(kvm_ok.returncode, kvm_ok.output)
    libvirt = runner.run(engine.LIBVIRT_VERSION, timeout=60)
    _say("docker", f"Docker {version} ready after {seconds:.0f} s; kvm-ok: {verdict.verdict}")
    return {
        **props,
        "docker_version": version,
        "kvm_usable": verdict.usable,
        "kvm_verdict": verdict.verdict,
        "libvirt_version": engine.parse_libvirt_version(libvirt.returncode, libvirt.output),
        "ready_seconds": round(seconds, 1),
        "answers": True,
    }


def remove_leftover_container(runner: CommandRunner, container: str) -> list[str]:
    """Runs just before pulumi-docker creates the container, when the stack records none.

    A container of that name made by this product is then the leftover of an `up` killed
    mid-create, and docker would refuse the name: it goes. One without the product's label
    is the user's own: it is kept, and the create stops with an error saying so. Returns
    the ids removed.
    """
    listed = check(
        runner.run(playground.containers_named(container), timeout=60),
        layer="playground",
        what=f"look for a container named {container}",
        hint="is the VM running? `pulumi up` again starts it",
    )
    ours, theirs = playground.split_by_maker(listed.stdout)
    if theirs:
        raise GuestError(
            f"playground: the VM already has a container named {container} ({', '.join(theirs)}) "
            "that this stack did not make; it is left alone",
            hint=f"remove or rename it in the VM (`docker rm -f {container}`), "
            "or give the playground another name with nexus:playground.name, then `pulumi up`",
        )
    if ours:
        _say("playground", f"removing container {container} ({', '.join(ours)}), left by an interrupted run")
        check(
            runner.run(playground.remove_containers(ours), timeout=120),
            layer="playground",
            what=f"remove container {container} left by an interrupted run",
            hint=f"remove it in the VM (`docker rm -f {container}`), then `pulumi up`",
        )
    return ours


@_reports_errors
class ContainerPresenceProvider(ResourceProvider):
    """Sees the playground container stopped or removed by hand, without a refresh.

    pulumi-docker reads a container back only on refresh, and a refresh needs every
    layer's SSH: with the VM down or hung it fails, and `up` could not start the VM
    again nor `destroy` power it off. This check runs in `diff` instead:
    - stopped (`docker stop`, or its command exited): `update` starts it again in place,
      the same container with its files;
    - removed (or the name now holds a container this stack did not make): this resource
      is replaced, and its new id, which the container carries as a label, has
      pulumi-docker create the container anew (the leftover hook then stops on a
      container of the user's own).
    A VM or daemon that does not answer is not taken for a missing container: the
    engine's own diff sees it, and `up` looks again once Docker is back.
    """

    def create(self, props: Props) -> CreateResult:
        # A new id per presence, so a new presence means a new container (its label).
        return CreateResult(id_=f"{props['container']}-{secrets.token_hex(4)}", outs=props)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        replaces = _changed(olds, news, ("container",))
        if replaces:
            return DiffResult(changes=True, replaces=replaces)
        container = olds["container"]
        state = container_presence(_runner(olds), container)
        if state == playground.STOPPED:
            _say(
                "playground",
                f"container {container} is stopped; up starts it again (same container, files kept)",
            )
            return DiffResult(changes=True)
        if state in (playground.GONE, playground.FOREIGN):
            whose = "is gone" if state == playground.GONE else "in the VM is not the one this stack made"
            _say("playground", f"container {container} {whose}; up creates it again")
            return DiffResult(changes=True, replaces=["present"])
        return DiffResult(changes=False)

    def update(self, _id: str, _olds: Props, news: Props) -> UpdateResult:
        container = news["container"]
        _say("playground", f"container {container} is stopped; starting it again")
        check(
            _runner(news).run(playground.start_container(container), timeout=180),
            layer="playground",
            what=f"start the stopped container {container} again",
            hint=f"see `docker logs {container}` in the VM; `docker rm {container}` there has "
            "`pulumi up` create it anew",
        )
        return UpdateResult(outs=news)

    def read(self, id_: str, props: Props) -> ReadResult:
        return ReadResult(
            id_=id_, outs={**props, "status": container_presence(_runner(props), props["container"])}
        )


def preflight_problems(runner: CommandRunner, props: Props) -> list[str]:
    """What keeps a new playground container from starting that the VM shows now; [] when
    nothing does, or when the VM does not answer (its own diff says so)."""
    wanted = [preflight.WantedPort(int(p["vm"]), p["protocol"], p["key"]) for p in props.get("ports") or []]
    problems: list[str] = []
    if wanted:
        sockets = runner.run(preflight.LISTENERS, timeout=60)
        if unreachable(sockets):
            return []
        if not sockets.ok:  # no passwordless sudo: the login user's view, without others' names
            sockets = runner.run(preflight.LISTENERS_AS_USER, timeout=60)
        containers = runner.run(preflight.RUNNING_CONTAINERS, timeout=60)
        problems += preflight.port_clashes(
            wanted,
            preflight.listeners(sockets.stdout if sockets.ok else ""),
            # A daemon that does not answer runs no container: nothing of its holds a port.
            preflight.containers_publishing(containers.stdout if containers.ok else ""),
        )
    devices = {d["path"]: d["key"] for d in props.get("devices") or []}
    if devices:
        missing = runner.run(preflight.devices_missing(list(devices)), timeout=60)
        if missing.ok:
            problems += [
                f"{devices[path]}: {path} does not exist in the VM"
                for path in missing.stdout.splitlines()
                if path in devices
            ]
    return problems


@_reports_errors
class ContainerPreflightProvider(ResourceProvider):
    """Checks what a new playground container needs from the VM before the old one goes.

    The container is replaced delete-first, and depends on this resource, whose `diff`
    (every preview and up) and `create` run preflight_problems: a VM port it publishes that
    another program or a container not of this stack holds, or a device that does not
    exist, stops preview and up here, with the current container still running. See
    preflight.py for what is checked, and the README for what cannot be.
    """

    KEYS = ("container", "ports", "devices")

    def create(self, props: Props) -> CreateResult:
        self._refuse_problems(props)
        return CreateResult(id_=props["container"], outs=props)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        self._refuse_problems(news)
        return DiffResult(changes=bool(_changed(olds, news, self.KEYS)))

    def update(self, _id: str, _olds: Props, news: Props) -> UpdateResult:
        return UpdateResult(outs=news)  # `diff` has just checked

    @staticmethod
    def _refuse_problems(props: Props) -> None:
        problems = preflight_problems(_runner(props), props)
        if problems:
            raise GuestError(
                f"playground: the container {props['container']} could not start in the VM as "
                "configured; the current one is left as it is:\n  " + "\n  ".join(problems),
                hint="publish another VM port or drop the device (the keys above), or stop what "
                "holds the port in the VM, then `pulumi up`",
            )


# --------------------------------------------------------------------------- inner VM


@_reports_errors
class InnerVmProvider(ResourceProvider):
    """QEMU inside the playground container; `diff` sees it dead or its container recreated."""

    RESTART_KEYS = ("spec", "container_id", "argv_tcg")

    def create(self, props: Props) -> CreateResult:
        return CreateResult(id_=f"{props['container']}/{props['spec']['name']}", outs=self._start(props))

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        replaces = _changed(olds, news, ("container",))
        if olds.get("spec", {}).get("name") != news.get("spec", {}).get("name"):
            replaces.append("name")
        restart = _changed(olds, news, self.RESTART_KEYS)
        if not replaces and not restart and self._machine(olds).pid() is None:
            restart.append("running")  # QEMU died, or the container restarted
        return DiffResult(changes=bool(replaces or restart), replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: Props, news: Props) -> UpdateResult:
        self._stop(olds)
        # Each nested-KVM launch under an emulated CPU is costly: a container already
        # probed keeps its answer.
        same_container = olds.get("container_id") == news.get("container_id")
        same_request = olds["spec"]["accelerator"] == news["spec"]["accelerator"]
        known = olds.get("accelerator") if same_container and same_request else None
        return UpdateResult(outs=self._start(news, accelerator=known))

    def read(self, id_: str, props: Props) -> ReadResult:
        machine = self._machine(props)
        pid = machine.pid()
        status = machine.status() if pid is not None else "not running"
        return ReadResult(id_=id_, outs={**props, "pid": pid or 0, "qmp_status": status})

    def delete(self, _id: str, props: Props) -> None:
        machine = self._machine(props)
        status = container_status(machine.runner, machine.container)
        if status == "unreachable":
            # A hung VM must not keep destroy from powering it off: the inner VM goes with it.
            _say("inner-vm", "the VM does not answer over SSH; the inner VM stops with the VM")
            return
        if status != "running":
            return  # the container (and every process in it) is already gone
        machine.stop()
        machine.runner.run(inner.remove_files(machine.container, [machine.paths.dir]), timeout=120)

    def _machine(self, props: Props) -> InnerVmMachine:
        spec = props["spec"]
        return InnerVmMachine(
            _runner(props),
            props["container"],
            inner_config(props),
            boot=inner_image.BootImage.from_spec(spec.get("boot_image")),
            ssh_public_key=spec.get("ssh_public_key") or "",
        )

    def _stop(self, props: Props) -> None:
        machine = self._machine(props)
        if machine.container_running():
            machine.stop()

    def _start(self, props: Props, *, accelerator: str | None = None) -> Props:
        machine = self._machine(props)
        machine.stop(powerdown_timeout=5)  # a QEMU of ours from an interrupted run
        return {**props, **machine.start(accelerator=accelerator)}


# --------------------------------------------------------------------------- files beside the stack


@_reports_errors
class ScriptFileProvider(ResourceProvider):
    """A generated helper script in the stack's directory (connect-playground.sh)."""

    def create(self, props: Props) -> CreateResult:
        self._write(props)
        return CreateResult(id_=props["path"], outs=props)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        path = Path(olds["path"])
        changed = _changed(olds, news, ("path", "content")) or ([] if path.is_file() else ["missing"])
        return DiffResult(changes=bool(changed), replaces=_changed(olds, news, ("path",)))

    def update(self, _id: str, _olds: Props, news: Props) -> UpdateResult:
        self._write(news)
        return UpdateResult(outs=news)

    def delete(self, _id: str, props: Props) -> None:
        remove_quietly(Path(props["path"]))

    @staticmethod
    def _write(props: Props) -> None:
        path = Path(props["path"])
        path.write_text(props["content"])
        path.chmod(0o755)

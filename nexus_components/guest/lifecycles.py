"""The guest layers' create/diff/update/read/delete, on plain property dicts.

The `nexus` provider plugin runs these for its `nexus:guest:*` resources
(nexus_provider/guest/), as it runs `nexus_components/host/lifecycles.py` for the host's. No
Pulumi import, so tests drive them directly against a scripted VM
(tests/support/fake_runner.py): each lifecycle takes `runner_for`, which gives the
command runner for a resource's properties (the VM over SSH, unless a test says otherwise).

What each one looks at, and why it is not pulumi-command or pulumi-docker:
- every `diff` looks at the machine (a daemon that stopped answering, a container stopped
  or removed by hand, an inner QEMU that died, an image gone from the VM shows in
  `pulumi preview`), which `remote.Command` cannot, and pulumi-docker does only on
  `refresh`, which needs every layer's SSH;
- a tarball or a cloud image is streamed over the stack's SSH connection, so no copy is
  left in the VM, and the engine never hashes a file that `up` has yet to download;
- the leftover of an interrupted `up` (a container docker made but the state lacks) is
  removed by the container's presence when it is created, a step of this provider, so a
  Ctrl-C lets it finish like any other running step (a program-side hook could not: the
  language host ends the program).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus_components.core import download
from nexus_components.core.files import remove_quietly
from nexus_components.core.progress import say
from nexus_components.core.runner import (
    SSH_UNREACHABLE,
    CommandResult,
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

# The shapes every lifecycle shares (the host's module defines them; the guest's follow them).
from ..core.lifecycle import Created, Diff, Lifecycle, changed
from . import engine, inner_image, playground, preflight
from . import inner_vm as inner
from .inner_vm import IMAGES_DIR
from .inner_vm_machine import InnerVmMachine, container_presence, container_status
from .settings import InnerImage, InnerShare, InnerVmConfig, PortToGuest

Props = dict[str, Any]
RunnerFor = Callable[[Props], CommandRunner]

ENGINE_LAYER = "Docker engine"
PLAYGROUND_LAYER = "playground"
# The stack settings each layer's resources are made of, as errors name them.
PLAYGROUND_KEY = "nexus:playground"
INNER_VM_KEY = "nexus:innerVm"
SETTINGS_IN_WORDS = {
    "settings_digest": "env, command, volumes, restart or privileged",
    # The inner VM's shares are set in nexus:mounts, not nexus:innerVm.
    "shares": "its shares, nexus:mounts[*].innerVm",
}


def ssh_target(props: Props) -> SshTarget:
    """The VM, as every guest resource reaches it: the forwarded SSH port and the stack's key."""
    return SshTarget(
        host=props["ssh_host"],
        port=int(props["ssh_port"]),
        user=props["username"],
        private_key=Path(props["private_key"]),
        proxy_command=tuple(props.get("proxy_command") or ()),
    )


ACCESS_KEYS = ("ssh_host", "ssh_port", "username", "private_key")


def known_access(props: Props) -> bool:
    """Whether the VM's SSH is known: at `preview`, a value still to be made is none of these."""
    return all(isinstance(props.get(key), str | int | float) for key in ACCESS_KEYS)


def ssh_runner(props: Props) -> SshRunner:
    return SshRunner(ssh_target(props))


def vm_suspended(props: Props) -> bool:
    """nexus:vm.state is suspended: QEMU is stopped, the running lab saved in the VM's disk."""
    return props.get("vm_state") == "suspended"


class GuestLifecycle(Lifecycle):
    """A guest resource's lifecycle: it reaches the VM through `runner_for(props)`."""

    def __init__(self, runner_for: RunnerFor = ssh_runner) -> None:
        self.runner_for = runner_for

    @staticmethod
    def suspended(section: str, olds: Props, news: Props, keys: tuple[str, ...]) -> bool:
        """Whether the VM is suspended, so `diff` does not look into it: nothing there can
        answer, and the `up` that resumes it looks again. A change to `keys` then needs the
        VM running: refused (at `preview` too), naming the setting."""
        if not vm_suspended(news):
            return False
        differs = [SETTINGS_IN_WORDS.get(key, key) for key in changed(olds, news, keys)]
        if differs:
            raise GuestError(
                f"{section} changed ({', '.join(differs)}) while nexus:vm.state is suspended; "
                "the change needs the VM running",
                hint="set nexus:vm.state to running with the change (that `up` resumes the lab, then "
                "makes it), or set the change back",
            )
        return True


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
        say("docker", f"the Docker daemon is {state} in the VM; starting it: {' '.join(engine.START_DOCKER)}")
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


class DockerEngine(GuestLifecycle):
    """Ready when cloud-init is done and the daemon answers; outputs the seed's checks."""

    has_update = True
    KEYS = ("ssh_host", "ssh_port", "username", "private_key", "vm_pid", "instance_id")

    def create(self, props: Props) -> Created:
        return Created(props["docker_host"], engine_ready(self.runner_for(props), props))

    def diff(self, olds: Props, news: Props) -> Diff:
        if vm_suspended(news):
            # QEMU stopped (its pid 0): the `up` that resumes it waits for Docker again.
            return Diff(False)
        differs = changed(olds, news, self.KEYS)
        if not differs and not self._answers(olds):
            # Stopped, or the VM is down: wait for it again (starting a stopped daemon).
            say(
                "docker", "the Docker daemon does not answer; up waits for it, and starts it if it is stopped"
            )
            differs.append("daemon")
        return Diff(bool(differs))

    def update(self, olds: Props, news: Props) -> Props:
        if olds.get("boot_id") and changed(olds, news, self.KEYS) == ["vm_pid"]:
            resumed = self._resumed(olds, news)
            if resumed is not None:
                return resumed
        return engine_ready(self.runner_for(news), news)

    def read(self, id_: str, props: Props) -> Props:
        return {**props, "answers": self._answers(props)}

    def _resumed(self, olds: Props, news: Props) -> Props | None:
        """A new QEMU whose guest runs on from the same boot (resumed from a suspension or
        a snapshot): the daemon, kvm-ok and libvirt are as they were when last found ready,
        so one login that finds the daemon answering replaces the wait. None otherwise."""
        answer = self.runner_for(news).run(engine.BOOT_ID_AND_DOCKER_AS_USER, timeout=60)
        boot_id, version = engine.boot_id_and_version(answer.stdout) if answer.ok else ("", "")
        if boot_id != olds["boot_id"] or not version:
            return None
        say("docker", f"Docker {version} answers: the VM resumed from the same boot, nothing to wait for")
        found = {key: olds[key] for key in ENGINE_FINDINGS if key in olds}
        return {**news, **found, "docker_version": version, "answers": True}

    def delete(self, props: Props) -> None:
        # Docker is part of the VM and goes with it. This is the last guest layer to go:
        # end the SSH connection the guest layers shared, so no ssh process outlives them.
        close_shared_connection(ssh_target(props))

    def _answers(self, props: Props) -> bool:
        result = self.runner_for(props).run(engine.DOCKER_AS_USER, timeout=60)
        return result.ok and bool(result.stdout.strip())


# What engine_ready finds in the VM, kept as they were when the VM resumes from the same boot.
ENGINE_FINDINGS = ("kvm_usable", "kvm_verdict", "libvirt_version", "ready_seconds", "boot_id")


def engine_ready(runner: CommandRunner, props: Props) -> Props:
    """Waits for cloud-init and the daemon (starting a stopped one), then reads the seed's checks."""
    timeout = float(props["timeout_seconds"])
    wait = EngineWait(runner)
    seconds, missing = wait_for(
        wait.missing,
        timeout=timeout,
        log=lambda line: say("docker", line),
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
        close_shared_connection(ssh_target(props))
        user_access = check(
            runner.run(engine.DOCKER_AS_USER, timeout=60),
            layer=ENGINE_LAYER,
            what="reach the Docker daemon as the login user",
            hint="ssh in and run `docker version`",
        )
    version = user_access.stdout.strip()
    boot_id = runner.run(engine.BOOT_ID, timeout=60)
    kvm_ok = runner.run(engine.KVM_OK, timeout=60)
    verdict = engine.parse_kvm_ok(kvm_ok.returncode, kvm_ok.output)
    libvirt = runner.run(engine.LIBVIRT_VERSION, timeout=60)
    say("docker", f"Docker {version} ready after {seconds:.0f} s; kvm-ok: {verdict.verdict}")
    return {
        **props,
        "docker_version": version,
        "kvm_usable": verdict.usable,
        "kvm_verdict": verdict.verdict,
        "libvirt_version": engine.parse_libvirt_version(libvirt.returncode, libvirt.output),
        "ready_seconds": round(seconds, 1),
        "answers": True,
        "boot_id": boot_id.stdout.strip() if boot_id.ok else None,
    }


# --------------------------------------------------------------------------- the playground container


class ContainerPresence(GuestLifecycle):
    """Sees the playground container stopped or removed by hand, without a refresh, and
    clears the name for a new container.

    pulumi-docker reads a container back only on refresh, and a refresh needs every
    layer's SSH: with the VM down or hung it fails, and `up` could not start the VM
    again nor `destroy` power it off. This check runs in `diff` instead:
    - stopped (`docker stop`, or its command exited): `update` starts it again in place,
      the same container with its files;
    - removed (or the name now holds a container this stack did not make): this resource
      is replaced, and its new id, which the container carries as a label, has
      pulumi-docker create the container anew.
    A VM or daemon that does not answer is not taken for a missing container: the
    engine's own diff sees it, and `up` looks again once Docker is back.

    Its `create` comes just before a new container's: a container of that name this
    product made (an `up` killed between docker's create and Pulumi saving it) is removed,
    and one of the user's own stops `up` with an error that says so (docker would refuse
    the name). It runs in the provider, so one Ctrl-C lets it, and the container's create
    after it, finish.
    """

    has_update = True

    def create(self, props: Props) -> Created:
        removed = remove_leftover_container(self.runner_for(props), props["container"])
        # A new id per presence, so a new presence means a new container (its label).
        return Created(f"{props['container']}-{secrets.token_hex(4)}", {**props, "removed": removed})

    def diff(self, olds: Props, news: Props) -> Diff:
        if self.suspended(PLAYGROUND_KEY, olds, news, ("container",)):
            return Diff(False)
        replaces = changed(olds, news, ("container",))
        if replaces:
            return Diff(True, replaces)
        container = olds["container"]
        state = container_presence(self.runner_for(olds), container)
        if state == playground.STOPPED:
            say(
                "playground",
                f"container {container} is stopped; up starts it again (same container, files kept)",
            )
            return Diff(True)
        if state in (playground.GONE, playground.FOREIGN):
            whose = "is gone" if state == playground.GONE else "in the VM is not the one this stack made"
            say("playground", f"container {container} {whose}; up creates it again")
            return Diff(True, ["present"])
        return Diff(False)

    def update(self, olds: Props, news: Props) -> Props:
        container = news["container"]
        say("playground", f"container {container} is stopped; starting it again")
        check(
            self.runner_for(news).run(playground.start_container(container), timeout=180),
            layer=PLAYGROUND_LAYER,
            what=f"start the stopped container {container} again",
            hint=f"see `docker logs {container}` in the VM; `docker rm {container}` there has "
            "`pulumi up` create it anew",
        )
        return {**news, "removed": olds.get("removed") or []}

    def read(self, id_: str, props: Props) -> Props:
        return {**props, "status": container_presence(self.runner_for(props), props["container"])}


def remove_leftover_container(runner: CommandRunner, container: str) -> list[str]:
    """Runs when the container's presence is created, just before pulumi-docker creates a new
    container: the stack records none by that name (a first `up`, a new name, the last one
    gone, or an `up` killed mid-create, whose presence `scripts/up` drops with the pending
    create).

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
        say("playground", f"removing container {container} ({', '.join(ours)}), left by an interrupted run")
        check(
            runner.run(playground.remove_containers(ours), timeout=120),
            layer="playground",
            what=f"remove container {container} left by an interrupted run",
            hint=f"remove it in the VM (`docker rm -f {container}`), then `pulumi up`",
        )
    return ours


class ContainerPreflight(GuestLifecycle):
    """Checks what a new playground container needs from the VM before the old one goes.

    The container is replaced delete-first, and depends on this resource, whose `diff`
    (every preview and up) and `create` run preflight_problems: a VM port it publishes that
    another program or a container not of this stack holds, or a device that does not
    exist, stops preview and up here, with the current container still running. See
    preflight.py for what is checked, and the README for what cannot be.
    """

    has_update = True
    KEYS = ("container", "ports", "devices")

    def create(self, props: Props) -> Created:
        self._refuse_problems(props)
        return Created(props["container"], props)

    def diff(self, olds: Props, news: Props) -> Diff:
        # A state from before the digest: taken as it is, not as a change.
        keys = (*self.KEYS, "settings_digest") if "settings_digest" in olds else self.KEYS
        if self.suspended(PLAYGROUND_KEY, olds, news, keys):
            return Diff(False)
        self._refuse_problems(news)
        return Diff(bool(changed(olds, news, keys)))

    def update(self, olds: Props, news: Props) -> Props:
        return news  # `diff` has just checked

    def _refuse_problems(self, props: Props) -> None:
        if not known_access(props):
            return  # the VM's key or port is still to be made (preview): `up` checks once it is
        problems = preflight_problems(self.runner_for(props), props)
        if problems:
            raise GuestError(
                f"playground: the container {props['container']} could not start in the VM as "
                "configured; the current one is left as it is:\n  " + "\n  ".join(problems),
                hint="publish another VM port or drop the device (the keys above), or stop what "
                "holds the port in the VM, then `pulumi up`",
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


# ---------------------------------------------------------------- a playground image from a tarball


# Streaming into a TCG guest's Docker: a 253 MiB tarball took about 30 s here; allow slow
# links and big images.
IMPORT_TIMEOUT_SECONDS = 3600
HINTS = {
    "image-tarball": "check that {key} is a `docker save` archive (`tar -tf` lists manifest.json), "
    "or set it back; the current image and container are left as they are",
    "rootfs-tarball": "check that {key} is a root-file-system tar (`tar -tf` lists bin/ or usr/), "
    "or set it back; the current image and container are left as they are",
}


def import_tarball(runner: CommandRunner, props: Props) -> Props:
    """Load or import the tarball, tag it; stops at the first failing command with one error
    that names the config key, the command and its output."""
    kind, key, tarball = props["kind"], props["key"], Path(props["path"])
    tag = playground.tarball_tag(props["container"], props["digest"])
    hint = HINTS[kind].format(key=key)
    argv = list(playground.LOAD_IMAGE) if kind == "image-tarball" else playground.import_rootfs(tag)
    verb = "load" if kind == "image-tarball" else "import"
    size_mib = tarball.stat().st_size / (1 << 20)
    say("playground", f"streaming {tarball.name} ({size_mib:.0f} MiB) into `{' '.join(argv)}` in the VM")
    result = runner.run(argv, input_file=tarball, timeout=IMPORT_TIMEOUT_SECONDS)
    check(result, layer=PLAYGROUND_LAYER, what=f"{verb} {key} ({tarball})", hint=hint)
    if kind == "image-tarball":
        loaded = playground.loaded_image(result.stdout)
        if loaded is None:
            raise GuestError(
                f"{PLAYGROUND_LAYER}: {key} ({tarball}) loaded, but `docker load` named no image",
                command=argv,
                output=output_tail(result.output) or "(none)",
                hint=hint,
            )
        tagged = runner.run(playground.tag_image(loaded, tag), timeout=60)
        check(tagged, layer=PLAYGROUND_LAYER, what=f"tag the image {key} loaded", hint=hint)
    inspected = runner.run(playground.image_id(tag), timeout=60)
    image_id = check(
        inspected, layer=PLAYGROUND_LAYER, what=f"read the id of the image {key} gave", hint=hint
    ).stdout
    say("playground", f"{key}: image {tag} ({image_id.strip()[:19]})")
    return {**props, "tag": tag, "image_id": image_id.strip()}


class TarballImage(GuestLifecycle):
    """`nexus:playground.imageTarball` or `rootfsTarball`: streamed over the stack's SSH
    connection into `docker load` or `docker import -` in the VM, then tagged once per
    content; the id is the tag.

    Why not pulumi-command's `CopyToRemote` and a `remote.Command` that imports the copy:
    the copy lived in the VM's /var/tmp, was left there by a failed import, and, as the
    upload and the import were two resources, switching back after a failed import
    uploaded the big file again. Streaming leaves no file in the VM, and one resource
    means a failed import leaves the stack's current image, and the state, as they were.
    """

    has_update = True
    # A new content, kind, container name or VM disk is a new image (a new tag).
    REPLACE_KEYS = ("kind", "digest", "container", "disk_id")

    def create(self, props: Props) -> Created:
        outs = import_tarball(self.runner_for(props), props)
        return Created(outs["tag"], outs)

    def diff(self, olds: Props, news: Props) -> Diff:
        if self.suspended(PLAYGROUND_KEY, olds, news, self.REPLACE_KEYS):
            return Diff(False)
        replaces = changed(olds, news, self.REPLACE_KEYS)
        if replaces:
            return Diff(True, replaces)
        # The tarball's path may change with its content the same: nothing to do.
        if self._gone_from_vm(olds):
            say("playground", f"image {olds['tag']} is gone from the VM; up imports {news['key']} again")
            return Diff(True)
        return Diff(False)

    def update(self, olds: Props, news: Props) -> Props:
        return import_tarball(self.runner_for(news), news)

    def delete(self, props: Props) -> None:
        # Superseded (or the playground turned off): its tag goes, and with it the image
        # unless something else holds it. A VM that does not answer has nothing to clean.
        self.runner_for(props).run(playground.remove_image(props["tag"]), timeout=120)

    def _gone_from_vm(self, props: Props) -> bool:
        result = self.runner_for(props).run(playground.image_id(props["tag"]), timeout=60)
        if unreachable(result):
            return False  # the VM is down: its own diff says so
        return "No such image" in result.output


# --------------------------------------------------------------------------- the inner VM's cloud image

IMAGE_LAYER = "inner VM image"
URL_KEY = "nexus:innerVm.image.url"
SHA256_KEY = "nexus:innerVm.image.sha256"
# Streaming into a TCG guest: 265 MB took about 13 s here; allow slow links and big images.
COPY_TIMEOUT_SECONDS = 3600


class InnerImageCopy(GuestLifecycle):
    """`nexus:innerVm.image`: fetched into the host's image cache (the same download module
    and cache as the VM's own image, SHA-256 checked, kept when a stack is destroyed), then
    streamed into the VM's IMAGES_DIR, named by its digest, once per digest; the id is the
    digest.

    Why not pulumi-command's `CopyToRemote`: the engine hashes a `FileAsset` when the
    resource is registered, at `preview` too, so the file would have to exist before `up`
    downloads it. This also sees a copy that went missing in the VM and copies it again.
    """

    has_update = True
    KEYS = ("url", "sha256", "cache_dir", "disk_id")

    def __init__(self, runner_for: Callable[[Props], SshRunner] = ssh_runner) -> None:
        super().__init__(runner_for)
        self.ssh_runner_for = runner_for

    def create(self, props: Props) -> Created:
        outs = fetch_and_copy(self.ssh_runner_for(props), props)
        return Created(outs["digest"], outs)

    def diff(self, olds: Props, news: Props) -> Diff:
        if self.suspended(INNER_VM_KEY, olds, news, self.KEYS):
            return Diff(False)
        replaces = changed(olds, news, self.KEYS)
        changes = list(replaces)
        if not replaces:
            if not Path(olds.get("path", "")).is_file():
                changes.append("path")  # the host cache was cleared: fetch it again
            elif self._missing_in_vm(olds):
                changes.append("vm_path")  # e.g. the VM's disk was recreated: copy it again
        # The old copy goes first: the new one may have the same digest, hence the same path.
        return Diff(bool(changes), replaces, delete_before_replace=True)

    def update(self, olds: Props, news: Props) -> Props:
        return fetch_and_copy(self.ssh_runner_for(news), news)

    def delete(self, props: Props) -> None:
        # The copy in the VM goes (a replaced image does not fill the VM's disk); the host
        # cache is shared by all stacks and stays. An unreachable VM has nothing to clean.
        if props.get("vm_path"):
            self.runner_for(props).run(inner_image.remove_argv(props["vm_path"]), timeout=120)

    def _missing_in_vm(self, props: Props) -> bool:
        result = self.runner_for(props).run(inner_image.size_argv(props.get("vm_path", "")), timeout=60)
        if result.returncode == SSH_UNREACHABLE:
            return False  # the VM is down: its own diff says so, and up copies after it returns
        return not (result.ok and inner_image.same_size(result.stdout, props.get("size")))


def fetch_and_copy(runner: SshRunner, props: Props) -> Props:
    source = download.ImageSource(
        url=props["url"], sha256=props.get("sha256"), url_key=URL_KEY, sha256_key=SHA256_KEY
    )
    name = Path(props["url"]).name or "image"
    image = download.fetch_image(
        source,
        Path(props["cache_dir"]),
        progress=download.log_progress(lambda line: say("inner-image", line), name),
    )
    boot = inner_image.BootImage.of(image.sha256, inner_image.detect_format(image.path))
    size = runner.run(inner_image.size_argv(boot.path), timeout=60)
    if size.ok and inner_image.same_size(size.stdout, image.size):
        say("inner-image", f"{boot.path} is already in the VM")
    else:
        _copy_into_vm(runner, image.path, boot.path, props["username"])
    return {
        **props,
        "path": str(image.path),
        "digest": image.sha256,
        "format": boot.format,
        "vm_path": boot.path,
        "size": image.size,
    }


def _copy_into_vm(runner: SshRunner, local: Path, remote: str, username: str) -> None:
    check(
        runner.run(inner_image.prepare_images_dir_argv(username), timeout=120),
        layer=IMAGE_LAYER,
        what=f"create {IMAGES_DIR} for the login user",
        hint="check that the login user has passwordless sudo in the VM",
    )
    shown = inner_image.receive_argv(remote)
    started = time.monotonic()
    try:
        with local.open("rb") as stream:
            completed = subprocess.run(
                runner.ssh_argv(shown),
                stdin=stream,
                capture_output=True,
                timeout=COPY_TIMEOUT_SECONDS,
                check=False,
            )
    except subprocess.TimeoutExpired as error:
        raise GuestError(
            f"{IMAGE_LAYER}: copying {local} into the VM took more than {COPY_TIMEOUT_SECONDS} s",
            command=shown,
            hint="check the VM's load and free space, then `pulumi up` again",
        ) from error
    seconds = time.monotonic() - started
    result = CommandResult(
        tuple(shown),
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
        seconds,
    )
    check(
        result,
        layer=IMAGE_LAYER,
        what=f"copy {local.name} into {remote}",
        hint="check the VM's free space (`df -h /var/lib` in the VM; nexus:vm.diskSize)",
    )
    size = runner.run(inner_image.size_argv(remote), timeout=60)
    expected = local.stat().st_size
    if not inner_image.same_size(size.stdout, expected):
        raise GuestError(
            f"{IMAGE_LAYER}: {remote} in the VM has {size.stdout.strip() or 'no'} bytes, expected {expected}",
            command=size.argv,
            output=output_tail(size.output),
            hint="`pulumi up` copies it again; check the VM's free space",
        )
    mib = expected / (1 << 20)
    say("inner-image", f"copied {local.name} into the VM: {mib:.0f} MiB in {seconds:.1f} s")


# --------------------------------------------------------------------------- the inner VM

# The inner VM's settings (nexus:innerVm, snake_case) among a resource's properties.
INNER_VM_KEYS = (
    "name",
    "cpus",
    "memory_mib",
    "disk_size",
    "accelerator",
    "kernel",
    "initrd",
    "kernel_args",
    "iso",
    "image",
    "username",
    "hostname",
    "forwards",
    "powerdown_timeout_seconds",
    "boot_timeout_seconds",
    "shares",
)


def inner_vm_config(props: Props) -> InnerVmConfig:
    """The inner VM's settings from a resource's properties (numbers come back as floats)."""
    image = props.get("image")
    return InnerVmConfig(
        enabled=True,
        name=props["name"],
        cpus=int(props["cpus"]),
        memory_mib=int(props["memory_mib"]),
        disk_size=props["disk_size"],
        accelerator=props["accelerator"],
        kernel=props.get("kernel"),
        initrd=props.get("initrd"),
        kernel_args=props["kernel_args"],
        iso=props.get("iso"),
        image=InnerImage(image["url"], image.get("sha256")) if image else None,
        username=props.get("username") or "ubuntu",
        hostname=props.get("hostname") or "",
        forwards=tuple(
            PortToGuest(int(f["container"]), int(f["guest"])) for f in props.get("forwards") or []
        ),
        powerdown_timeout_seconds=int(props["powerdown_timeout_seconds"]),
        boot_timeout_seconds=int(props["boot_timeout_seconds"]),
        shares=tuple(
            InnerShare(s["tag"], s["source"], s["path"], bool(s.get("readOnly") or False))
            for s in props.get("shares") or []
        ),
    )


class InnerVm(GuestLifecycle):
    """QEMU inside the playground container; `diff` sees it dead or its container recreated."""

    has_update = True
    # What its command line and seed are made of, and the container it runs in.
    RESTART_KEYS = (*INNER_VM_KEYS, "boot_image", "ssh_public_key", "container_id")

    def create(self, props: Props) -> Created:
        return Created(f"{props['container']}/{props['name']}", self._start(props))

    def diff(self, olds: Props, news: Props) -> Diff:
        if self.suspended(INNER_VM_KEY, olds, news, ("container", "name", *self.RESTART_KEYS)):
            return Diff(False)
        replaces = changed(olds, news, ("container", "name"))
        restart = changed(olds, news, self.RESTART_KEYS)
        if not replaces and not restart and not self._runs(olds):
            restart.append("running")  # QEMU died, or the container restarted
        return Diff(bool(replaces or restart), replaces, delete_before_replace=True)

    def update(self, olds: Props, news: Props) -> Props:
        self._stop(olds)
        # Each nested-KVM launch under an emulated CPU is costly: a container already
        # probed keeps its answer.
        same_container = olds.get("container_id") == news.get("container_id")
        same_request = olds["accelerator"] == news["accelerator"]
        known = olds.get("chosen_accelerator") if same_container and same_request else None
        return self._start(news, accelerator=known)

    def read(self, id_: str, props: Props) -> Props:
        machine = self._machine(props)
        pid = machine.pid()
        status = machine.status() if pid is not None else "not running"
        return {**props, "pid": pid or 0, "qmp_status": status}

    def delete(self, props: Props) -> None:
        machine = self._machine(props)
        status = container_status(machine.runner, machine.container)
        if status == "unreachable":
            # A hung VM must not keep destroy from powering it off: the inner VM goes with it.
            say("inner-vm", "the VM does not answer over SSH; the inner VM stops with the VM")
            return
        if status != "running":
            return  # the container (and every process in it) is already gone
        machine.stop()
        machine.runner.run(inner.remove_files(machine.container, [machine.paths.dir]), timeout=120)

    def _runs(self, props: Props) -> bool:
        machine = self._machine(props)
        if props.get("container_id"):
            found = machine.runner.run(
                inner.qemu_runs_in(props["container_id"], machine.paths.pid_file), timeout=60
            )
            if found.returncode != inner.PROCESS_LIST_NOT_FOUND:
                return found.returncode == inner.RUNS  # a VM that does not answer: as before, not running
        return machine.pid() is not None

    def _machine(self, props: Props) -> InnerVmMachine:
        return InnerVmMachine(
            self.runner_for(props),
            props["container"],
            inner_vm_config(props),
            boot=inner_image.BootImage.from_spec(props.get("boot_image")),
            ssh_public_key=props.get("ssh_public_key") or "",
        )

    def _stop(self, props: Props) -> None:
        machine = self._machine(props)
        if machine.container_running():
            machine.stop()

    def _start(self, props: Props, *, accelerator: str | None = None) -> Props:
        machine = self._machine(props)
        machine.stop(powerdown_timeout=5)  # a QEMU of ours from an interrupted run
        started = machine.start(accelerator=accelerator)
        # `accelerator` is the request (auto, kvm, tcg); what it chose is an output of its own.
        return {
            **props,
            **started,
            "accelerator": props["accelerator"],
            "chosen_accelerator": started["accelerator"],
        }


# --------------------------------------------------------------------------- files beside the stack


class ScriptFile(Lifecycle):
    """A generated helper script in the stack's directory (connect-playground.sh)."""

    has_update = True

    def create(self, props: Props) -> Created:
        self._write(props)
        return Created(props["path"], props)

    def diff(self, olds: Props, news: Props) -> Diff:
        path = Path(olds["path"])
        differs = changed(olds, news, ("path", "content")) or ([] if path.is_file() else ["missing"])
        return Diff(bool(differs), changed(olds, news, ("path",)))

    def update(self, olds: Props, news: Props) -> Props:
        self._write(news)
        return news

    def delete(self, props: Props) -> None:
        remove_quietly(Path(props["path"]))

    @staticmethod
    def _write(props: Props) -> None:
        path = Path(props["path"])
        path.write_text(props["content"])
        path.chmod(0o755)

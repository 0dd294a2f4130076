"""The guest lifecycles' decisions against a scripted VM (tests/support/fake_runner.py):
which commands they send, in which order, when they stop, and what their errors say.
The `nexus` provider runs these for its nexus:guest:* resources."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from nexus_components.core.runner import GuestError, LocalRunner
from nexus_components.guest import engine, inner_vm_machine, lifecycles, playground, preflight
from nexus_components.guest import inner_vm as inner
from nexus_components.guest.inner_vm_machine import (
    INNER_VM_STALLED,
    INNER_VM_STALLED_HINT,
    ContainerQemu,
    InnerVmMachine,
)
from nexus_components.guest.settings import InnerVmConfig, PlaygroundConfig, PublishedPort
from tests.support.fake_runner import Answer, ScriptedRunner, hung_vm

REPO = Path(__file__).resolve().parents[2]
CONTAINER = "nexus-playground"


def one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- inner VM stall


def kernel_boot(accelerator: str) -> InnerVmConfig:
    return InnerVmConfig(
        enabled=True, kernel="/opt/vmlinuz", accelerator=accelerator, boot_timeout_seconds=120
    )


def hangs_at(marker: str) -> ScriptedRunner:
    """Answers every command until one with `marker` among its words; from then on, nothing."""
    hung = False

    def answer(argv: tuple[str, ...]) -> Answer:
        nonlocal hung
        hung = hung or any(marker in word for word in argv)
        return hung_vm(argv) if hung else (0, "")

    return ScriptedRunner(answer)


@pytest.mark.parametrize(
    ("accelerator", "marker"),
    [("tcg", "UNIX-CONNECT:"), ("auto", "isa-debug-exit,iobase=0xf4,iosize=0x04")],
    ids=["during the QMP wait", "during the KVM probe"],
)
def test_a_vm_that_hangs_while_the_inner_vm_boots_gives_the_readmes_error_at_once(
    accelerator: str, marker: str
) -> None:
    machine = InnerVmMachine(hangs_at(marker), CONTAINER, kernel_boot(accelerator))
    started = time.monotonic()
    with pytest.raises(GuestError) as caught:
        machine.start()
    # Not after bootTimeoutSeconds (120 s), and not taken for "no KVM here".
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert message.startswith(INNER_VM_STALLED + ": the VM does not answer over SSH"), message
    assert "next step: " + INNER_VM_STALLED_HINT in message


def test_the_readme_says_what_the_stall_error_says() -> None:
    readme = one_line((REPO / "README.md").read_text())
    assert f"**`{INNER_VM_STALLED}`**" in readme
    assert INNER_VM_STALLED_HINT in readme
    assert inner_vm_machine.INNER_LAYER == "inner VM"


# --------------------------------------------------------------------------- inner VM stop

QMP_ACCEPTED = '{"QMP": {"version": {}, "capabilities": []}}\n{"return": {}}\n{"return": {}}\n'


NO_QMP_SOCKET: Answer = (1, "", 'socat[7] E connect(5, AF=1 "qmp.sock", 11): No such file or directory')


def inner_qemu(*, qmp_answer: Answer, ends_on: str) -> ScriptedRunner:
    """An inner QEMU (pid 123) in the container that exits on the first command whose
    words include `ends_on` ("socat" for the powerdown, "-15" for SIGTERM)."""
    ended = False

    def answer(argv: tuple[str, ...]) -> Answer:
        nonlocal ended
        words = argv[3:] if argv[2] != "-i" else argv[4:]
        if ends_on in words:
            ended = True
        if words[0] == "socat":
            return qmp_answer
        if words[:2] == ("sh", "-c") and "echo" in words[2]:  # running_pid
            return (0, "") if ended else (0, "123\n")
        if words[:2] == ("sh", "-c"):  # process_alive
            return (1, "") if ended else (0, "")
        return 0, ""

    return ScriptedRunner(answer)


def called(runner: ScriptedRunner) -> list[str]:
    """Each call as what it does: the script's or program's name after `docker exec`."""
    names = []
    for argv in runner.calls:
        words = argv[3:] if argv[2] != "-i" else argv[4:]
        if words[:2] == ("sh", "-c"):
            names.append("running_pid" if "echo" in words[2] else "process_alive")
        else:
            names.append(" ".join(words[:2]))
    return names


def test_the_inner_vm_powers_off_through_the_shared_ladder(capsys: pytest.CaptureFixture[str]) -> None:
    runner = inner_qemu(qmp_answer=(0, QMP_ACCEPTED), ends_on="socat")
    InnerVmMachine(runner, CONTAINER, kernel_boot("tcg")).stop()
    assert called(runner) == ["running_pid", "socat -t1", "process_alive", "rm -rf"]
    assert runner.calls[-1][-2:] == (
        "/var/lib/nexus/inner-vm/inner/qmp.sock",
        "/var/lib/nexus/inner-vm/inner/qemu.pid",
    )
    assert "[inner-vm] powered off (pid 123 in nexus-playground)" in capsys.readouterr().err


def test_an_inner_vm_whose_monitor_is_gone_gets_sigterm_without_waiting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runner = inner_qemu(qmp_answer=NO_QMP_SOCKET, ends_on="-15")
    started = time.monotonic()
    InnerVmMachine(runner, CONTAINER, kernel_boot("tcg")).stop(powerdown_timeout=120)
    assert time.monotonic() - started < 10, "the powerdown timeout was waited out"
    assert called(runner) == ["running_pid", "socat -t1", "kill -15", "process_alive", "rm -rf"]
    assert (
        "[inner-vm] QEMU (pid 123 in nexus-playground) does not answer on its control socket (QMP); "
        "stopping it" in capsys.readouterr().err
    )


def test_a_powerdown_the_relay_saw_no_reply_to_is_still_waited_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """socat gives QEMU one second after the request; nested TCG can be slower than that."""
    runner = inner_qemu(qmp_answer=(0, '{"QMP": {"version": {}, "capabilities": []}}\n'), ends_on="socat")
    InnerVmMachine(runner, CONTAINER, kernel_boot("tcg")).stop()
    assert called(runner) == ["running_pid", "socat -t1", "process_alive", "rm -rf"]
    assert "[inner-vm] powered off (pid 123 in nexus-playground)" in capsys.readouterr().err


def test_an_inner_vm_that_is_not_running_only_loses_its_runtime_files() -> None:
    runner = ScriptedRunner(lambda argv: (1, "") if "sh" in argv else (0, ""))  # no live pid
    InnerVmMachine(runner, CONTAINER, kernel_boot("tcg")).stop()
    assert called(runner) == ["running_pid", "rm -rf"]


def test_an_inner_qemu_that_survives_sigkill_names_the_way_out() -> None:
    machine = InnerVmMachine(inner_qemu(qmp_answer=(0, ""), ends_on="never"), CONTAINER, kernel_boot("tcg"))
    error = ContainerQemu(machine).survived(123)
    assert isinstance(error, GuestError)
    assert str(error) == (
        "inner VM: QEMU (pid 123 in nexus-playground) survived SIGKILL\n"
        "next step: remove the container by hand: docker rm -f nexus-playground"
    )


# --------------------------------------------------------------------------- Docker engine

ENGINE_PROPS = {
    "ssh_host": "127.0.0.1",
    "ssh_port": 2222,
    "username": "nexus",
    "private_key": "/nonexistent/key",
    "timeout_seconds": 12,
}
DAEMON_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
)


class DockerVm:
    """A VM whose cloud-init is done and whose Docker daemon was stopped by hand.

    `starts`: `systemctl start docker` succeeds; `stays_up`: the daemon then keeps running
    (else it dies at once, as one with a broken configuration does)."""

    def __init__(self, *, starts: bool = True, stays_up: bool = True, running: bool = False) -> None:
        self.running = running
        self.boot_id = "0b1d0b1d-0000-4000-8000-000000000001"
        self.start_attempts = 0
        self.starts = starts
        self.stays_up = stays_up
        self.runner = ScriptedRunner(self.answer)

    def answer(self, argv: tuple[str, ...]) -> Answer:
        if argv == engine.CLOUD_INIT_STATUS:
            return 0, "status: done\n"
        if argv == engine.START_DOCKER:
            self.start_attempts += 1
            if not self.starts:
                return (
                    1,
                    "",
                    "Job for docker.service failed because the control process exited with error code.",
                )
            self.running = self.stays_up
            return 0, ""
        if argv == engine.DOCKER_JOURNAL_TAIL:
            return 0, "dockerd[812]: failed to start daemon: error initializing graphdriver: no space left"
        if argv == engine.DOCKER_DAEMON_STATE:
            return (
                (0, "active\n") if self.running else (3, "failed\n" if self.start_attempts else "inactive\n")
            )
        if argv in (engine.DOCKER_SERVER_VERSION, engine.DOCKER_AS_USER):
            return (0, "20.10.24\n") if self.running else (1, "", DAEMON_DOWN)
        if argv == engine.BOOT_ID:
            return 0, f"{self.boot_id}\n"
        if argv == engine.BOOT_ID_AND_DOCKER_AS_USER:
            return (
                (0, f"{self.boot_id}\n20.10.24\n") if self.running else (1, f"{self.boot_id}\n", DAEMON_DOWN)
            )
        if argv == engine.KVM_OK:
            return 0, "INFO: /dev/kvm exists\nKVM acceleration can be used\n"
        if argv == engine.LIBVIRT_VERSION:
            return 0, "libvirtd (libvirt) 9.0.0\n"
        raise AssertionError(f"unexpected command {argv}")


def test_a_stopped_docker_daemon_is_started_once_and_up_carries_on() -> None:
    vm = DockerVm()
    started = time.monotonic()
    outs = lifecycles.engine_ready(vm.runner, ENGINE_PROPS)
    assert time.monotonic() - started < 10  # not readyTimeoutSeconds
    assert outs["docker_version"] == "20.10.24" and outs["kvm_usable"] is True
    assert len(vm.runner.ran(*engine.START_DOCKER)) == 1


def resumed_engine(vm: DockerVm, *, olds: dict[str, Any]) -> dict[str, Any]:
    """DockerEngine.update after QEMU changed (its pid), from a state made by `olds`."""
    news = {**ENGINE_PROPS, "docker_host": "ssh://nexus@127.0.0.1:2222", "vm_pid": 2, "instance_id": "i"}
    return lifecycles.DockerEngine(runner_for=lambda _props: vm.runner).update({**news, **olds}, news)


def test_a_vm_resumed_from_the_same_boot_is_not_waited_for_again() -> None:
    vm = DockerVm(running=True)
    ready = lifecycles.engine_ready(vm.runner, ENGINE_PROPS)
    assert ready["boot_id"] == vm.boot_id
    vm.runner.calls.clear()
    outs = resumed_engine(vm, olds={**ready, "vm_pid": 1, "kvm_verdict": "as found before the suspend"})
    assert vm.runner.calls == [engine.BOOT_ID_AND_DOCKER_AS_USER]  # one login, no cloud-init wait
    assert outs["vm_pid"] == 2 and outs["docker_version"] == "20.10.24"
    assert outs["kvm_verdict"] == "as found before the suspend" and outs["boot_id"] == vm.boot_id


@pytest.mark.parametrize(
    "olds",
    [
        {"boot_id": "another-boot"},  # the VM booted again (a restart, not a resume)
        {},  # a state from before boot ids: waited for as before
    ],
)
def test_a_vm_that_booted_again_or_an_older_state_is_waited_for(olds: dict[str, Any]) -> None:
    vm = DockerVm(running=True)
    outs = resumed_engine(vm, olds={"vm_pid": 1, **olds})
    assert vm.runner.ran(*engine.CLOUD_INIT_STATUS) and outs["boot_id"] == vm.boot_id


def test_a_resumed_vm_whose_daemon_does_not_answer_is_waited_for_and_its_daemon_started() -> None:
    vm = DockerVm(running=False)
    outs = resumed_engine(vm, olds={"vm_pid": 1, "boot_id": vm.boot_id})
    assert len(vm.runner.ran(*engine.START_DOCKER)) == 1 and outs["answers"] is True


def test_the_boot_id_script_is_valid_sh_and_runs_its_words_as_data() -> None:
    script = engine.BOOT_ID_AND_DOCKER_AS_USER[: -len(engine.DOCKER_AS_USER)]
    result = subprocess.run([*script, "printf", "%s\\n", "a; b"], capture_output=True, text=True, check=True)
    boot_id, second = engine.boot_id_and_version(result.stdout)
    assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip() and second == "a; b"


def test_a_daemon_that_cannot_be_started_fails_at_once_with_the_command_and_its_output() -> None:
    vm = DockerVm(starts=False)
    started = time.monotonic()
    with pytest.raises(GuestError) as caught:
        lifecycles.engine_ready(vm.runner, {**ENGINE_PROPS, "timeout_seconds": 900})
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(
        "Docker engine: the Docker daemon was inactive in the VM and could not be started"
    )
    assert "command: sudo -n systemctl start docker" in message
    assert "Job for docker.service failed" in message and "error initializing graphdriver" in message
    assert "next step: ssh in (sshCommand output), see `systemctl status docker`" in message
    assert "readyTimeoutSeconds" not in message
    assert len(vm.runner.ran(*engine.START_DOCKER)) == 1


def test_a_daemon_that_stops_again_after_the_start_is_not_started_twice() -> None:
    vm = DockerVm(stays_up=False)
    with pytest.raises(GuestError) as caught:
        lifecycles.engine_ready(vm.runner, {**ENGINE_PROPS, "timeout_seconds": 900})
    assert "the Docker daemon stopped again after `up` started it" in str(caught.value)
    assert len(vm.runner.ran(*engine.START_DOCKER)) == 1


@pytest.mark.parametrize(
    ("status", "daemon", "hint_starts"),
    [
        ("status: running", "inactive", "next step: raise nexus:playground.readyTimeoutSeconds"),
        (
            "status: done",
            "activating",
            "next step: ssh in (sshCommand output), see `systemctl status docker`",
        ),
    ],
    ids=["cloud-init still running", "daemon never answers"],
)
def test_the_timeout_hint_fits_what_was_missing(status: str, daemon: str, hint_starts: str) -> None:
    def answer(argv: tuple[str, ...]) -> Answer:
        if argv == engine.CLOUD_INIT_STATUS:
            return (2 if "running" in status else 0), status
        if argv == engine.DOCKER_DAEMON_STATE:
            return 3, daemon
        return 1, "", DAEMON_DOWN

    runner = ScriptedRunner(answer)
    with pytest.raises(GuestError) as caught:
        lifecycles.engine_ready(runner, {**ENGINE_PROPS, "timeout_seconds": 0.1})
    assert hint_starts in str(caught.value), str(caught.value)
    assert not runner.ran(*engine.START_DOCKER)  # never while cloud-init runs, nor while activating


# --------------------------------------------------------------------------- container presence

PRESENCE_PROPS = {**ENGINE_PROPS, "container": CONTAINER, "docker_host": "ssh://nexus@127.0.0.1:2222"}
NO_SUCH = f"Error: No such container: {CONTAINER}"


@pytest.mark.parametrize(
    ("returncode", "output", "state"),
    [
        (0, "true disk-1234", playground.RUNNING),
        (0, "false disk-1234", playground.STOPPED),
        (0, "true ", playground.FOREIGN),
        (1, NO_SUCH, playground.GONE),
        (1, "Error: No such object: x", playground.GONE),
        (1, DAEMON_DOWN, playground.NO_ANSWER),
    ],
)
def test_container_states(returncode: int, output: str, state: str) -> None:
    assert playground.read_container_state(returncode, output) == state


def presence_vm(*answers: Answer, named: str = "") -> tuple[lifecycles.ContainerPresence, ScriptedRunner]:
    """The VM the presence check reaches: `docker inspect` answers in turn, `docker ps` for
    the name lists `named` (id and the product's disk label per line), the rest succeeds."""
    inspections = iter(answers)

    def answer(argv: tuple[str, ...]) -> Answer:
        if argv == tuple(playground.container_state(CONTAINER)):
            return next(inspections)
        if argv == tuple(playground.containers_named(CONTAINER)):
            return 0, named
        return 0, ""

    runner = ScriptedRunner(answer)
    return lifecycles.ContainerPresence(runner_for=lambda _props: runner), runner


def test_a_stopped_container_is_started_again_in_place() -> None:
    presence, runner = presence_vm((0, "false disk-1"))
    diff = presence.diff(PRESENCE_PROPS, PRESENCE_PROPS)
    assert diff.changes and not diff.replaces  # an update: the container keeps its label
    presence.update(PRESENCE_PROPS, PRESENCE_PROPS)
    assert runner.ran("docker", "start") == [("docker", "start", CONTAINER)]
    assert not runner.ran("docker", "rm")


@pytest.mark.parametrize("inspected", [(1, NO_SUCH), (0, "false ")], ids=["removed", "not ours"])
def test_a_removed_container_is_created_anew(inspected: Answer) -> None:
    presence, _ = presence_vm(inspected)
    diff = presence.diff(PRESENCE_PROPS, PRESENCE_PROPS)
    assert diff.changes and diff.replaces  # a new id, hence a new label, hence a new container
    first = presence.create(PRESENCE_PROPS).id
    assert first != presence.create(PRESENCE_PROPS).id and first.startswith(CONTAINER)


@pytest.mark.parametrize(
    "inspected", [(0, "true disk-1"), (1, DAEMON_DOWN), hung_vm(())], ids=["running", "no daemon", "no VM"]
)
def test_a_running_or_unseen_container_is_left_alone(inspected: Answer) -> None:
    presence, runner = presence_vm(inspected)
    assert not presence.diff(PRESENCE_PROPS, PRESENCE_PROPS).changes
    assert not runner.ran("docker", "start")


def test_a_new_presence_removes_the_container_an_interrupted_up_left_under_its_name() -> None:
    presence, runner = presence_vm(named="aaaaaaaaaaaa1111 disk-1\n")
    made = presence.create(PRESENCE_PROPS)
    assert runner.ran(*playground.remove_containers(["aaaaaaaaaaaa1111"])), runner.calls
    assert made.outs["removed"] == ["aaaaaaaaaaaa1111"]


def test_a_new_presence_keeps_the_users_own_container_of_that_name_and_says_so() -> None:
    presence, runner = presence_vm(named="bbbbbbbbbbbb2222 \n")
    with pytest.raises(GuestError) as caught:
        presence.create(PRESENCE_PROPS)
    message = str(caught.value)
    assert f"the VM already has a container named {CONTAINER} (bbbbbbbbbbbb2222)" in message, message
    assert "nexus:playground.name" in message and f"docker rm -f {CONTAINER}" in message
    assert not runner.ran("docker", "rm")


# --------------------------------------------------------------------------- preflight

SS_OUTPUT = """\
udp   UNCONN 0      0              0.0.0.0:68         0.0.0.0:*    users:(("dhclient",pid=420,fd=7))
tcp   LISTEN 0      4096           0.0.0.0:80         0.0.0.0:*    users:(("docker-proxy",pid=1234,fd=4))
tcp   LISTEN 0      4096              [::]:80            [::]:*    users:(("docker-proxy",pid=1240,fd=4))
tcp   LISTEN 0      128            0.0.0.0:22         0.0.0.0:*    users:(("sshd",pid=600,fd=3))
tcp   LISTEN 0      128               [::]:22            [::]:*    users:(("sshd",pid=600,fd=4))
tcp   LISTEN 0      4096         127.0.0.1:5001       0.0.0.0:*    users:(("docker-registry",pid=2000,fd=3))
tcp   LISTEN 0      4096     127.0.0.53%lo:53         0.0.0.0:*    users:(("systemd-resolve",pid=5,fd=14))
tcp   LISTEN 0      64                   *:2049             *:*
"""
OURS = (
    '{"id":"aaaaaaaaaaaa1111","name":"/nexus-playground","ours":"disk-1",'
    '"ports":{"80/tcp":[{"HostIp":"","HostPort":"80"}]}}'
)
THEIRS = (
    '{"id":"bbbbbbbbbbbb2222","name":"/web","ours":"",'
    '"ports":{"8080/tcp":[{"HostIp":"","HostPort":"8080"},{"HostIp":"::","HostPort":"8080"}],"9/udp":null}}'
)


def test_listeners_name_the_program_and_leave_dockers_relays_to_docker() -> None:
    held = preflight.listeners(SS_OUTPUT)
    assert held[(22, "tcp")] == ["sshd (pid 600)"]
    assert held[(5001, "tcp")] == ["docker-registry (pid 2000)"]
    assert held[(68, "udp")] == ["dhclient (pid 420)"]
    assert held[(53, "tcp")] == ["systemd-resolve (pid 5)"]
    assert held[(2049, "tcp")] == ["a socket of no process it can see"]
    assert (80, "tcp") not in held


def test_only_containers_this_product_did_not_make_hold_a_port_against_it() -> None:
    held = preflight.containers_publishing(f"{OURS}\n{THEIRS}\n")
    assert held == {(8080, "tcp"): ["container web (bbbbbbbbbbbb)"]}


def test_port_clashes_name_the_key_the_port_and_its_holders() -> None:
    wanted = preflight.wanted_ports(
        (
            PublishedPort(80, 80),
            PublishedPort(5001, 5000),
            PublishedPort(8080, 80),
            PublishedPort(68, 68, "udp"),
        )
    )
    clashes = preflight.port_clashes(
        wanted, preflight.listeners(SS_OUTPUT), preflight.containers_publishing(f"{OURS}\n{THEIRS}")
    )
    assert clashes == [
        "nexus:playground.ports[1].vm: VM port 5001/tcp is in use by docker-registry (pid 2000)",
        "nexus:playground.ports[2].vm: VM port 8080/tcp is in use by container web (bbbbbbbbbbbb)",
        "nexus:playground.ports[3].vm: VM port 68/udp is in use by dhclient (pid 420)",
    ]


def test_the_preflight_scripts_are_valid_sh_and_take_values_as_data(tmp_path: Path) -> None:
    subprocess.run(["sh", "-n", "-c", preflight.RUNNING_CONTAINERS[2]], check=True)
    odd = str(tmp_path / "it's $HOME")
    result = LocalRunner().run(preflight.devices_missing(["/dev/null", odd, "/dev/no such device"]))
    assert result.ok and result.stdout.splitlines() == [odd, "/dev/no such device"]


PREFLIGHT_PROPS = {
    **PRESENCE_PROPS,
    "ports": [
        {"vm": 80, "protocol": "tcp", "key": "nexus:playground.ports[0].vm"},
        {"vm": 5001, "protocol": "tcp", "key": "nexus:playground.ports[1].vm"},
    ],
    "devices": [{"path": "/dev/fuse", "key": "nexus:playground.devices[0]"}],
}


def preflight_vm(ss_output: str, missing_devices: str = "") -> lifecycles.ContainerPreflight:
    def answer(argv: tuple[str, ...]) -> Answer:
        if argv == preflight.LISTENERS:
            return 0, ss_output
        if argv == preflight.RUNNING_CONTAINERS:
            return 0, OURS + "\n"
        if argv[:2] == ("sh", "-c"):
            return 0, missing_devices
        raise AssertionError(f"unexpected command {argv}")

    runner = ScriptedRunner(answer)
    return lifecycles.ContainerPreflight(runner_for=lambda _props: runner)


def test_preview_and_up_stop_before_the_container_when_a_vm_port_is_taken() -> None:
    with pytest.raises(GuestError) as caught:
        preflight_vm(SS_OUTPUT, missing_devices="/dev/fuse\n").diff(PREFLIGHT_PROPS, PREFLIGHT_PROPS)
    message = str(caught.value)
    assert message.startswith(
        f"playground: the container {CONTAINER} could not start in the VM as configured; "
        "the current one is left as it is"
    ), message
    assert "nexus:playground.ports[1].vm: VM port 5001/tcp is in use by docker-registry (pid 2000)" in message
    assert "nexus:playground.devices[0]: /dev/fuse does not exist in the VM" in message
    assert "ports[0]" not in message  # port 80 is the current container's


def test_ports_held_by_the_current_container_pass() -> None:
    checked = preflight_vm(SS_OUTPUT.replace("127.0.0.1:5001", "127.0.0.1:5002"))
    assert not checked.diff(PREFLIGHT_PROPS, PREFLIGHT_PROPS).changes
    assert checked.create(PREFLIGHT_PROPS).id == CONTAINER


def test_a_vm_that_does_not_answer_is_not_checked() -> None:
    runner = ScriptedRunner(hung_vm)
    checked = lifecycles.ContainerPreflight(runner_for=lambda _props: runner)
    assert not checked.diff(PREFLIGHT_PROPS, PREFLIGHT_PROPS).changes


class StillToBeMade:
    """A value `preview` does not know yet (the provider passes its own kind of unknown)."""


def test_a_vm_whose_key_is_still_to_be_made_is_not_checked_at_preview() -> None:
    runner = ScriptedRunner(lambda argv: (_ for _ in ()).throw(AssertionError(f"ran {argv}")))
    checked = lifecycles.ContainerPreflight(runner_for=lambda _props: runner)
    news = {**PREFLIGHT_PROPS, "private_key": StillToBeMade()}
    assert not checked.diff(PREFLIGHT_PROPS, news).changes
    assert runner.calls == []


# --------------------------------------------------------------------------- tarball import

CORRUPT = "open /var/lib/docker/tmp/docker-import-3518/repositories: no such file or directory"


def tarball_props(tmp_path: Path, kind: str) -> dict[str, object]:
    tarball = tmp_path / "playground image.tar"
    tarball.write_bytes(b"not a tar at all")
    key = "nexus:playground.imageTarball" if kind == "image-tarball" else "nexus:playground.rootfsTarball"
    return {
        **PRESENCE_PROPS,
        "kind": kind,
        "key": key,
        "path": str(tarball),
        "digest": "ab" * 32,
        "disk_id": "disk-1",
    }


def docker_vm(load: Answer) -> ScriptedRunner:
    def answer(argv: tuple[str, ...]) -> Answer:
        if argv == playground.LOAD_IMAGE or argv[:2] == ("docker", "import"):
            return load
        if argv[:3] == ("docker", "image", "inspect"):
            return 0, "sha256:" + "d" * 64 + "\n"
        if argv[:2] == ("docker", "tag"):
            return 0, ""
        raise AssertionError(f"unexpected command {argv}")

    return ScriptedRunner(answer)


def test_a_corrupt_image_tarball_stops_at_docker_load_with_one_error_naming_the_key(tmp_path: Path) -> None:
    props = tarball_props(tmp_path, "image-tarball")
    runner = docker_vm((1, "", CORRUPT))
    with pytest.raises(GuestError) as caught:
        lifecycles.import_tarball(runner, props)
    message = str(caught.value)
    what = f"could not load nexus:playground.imageTarball ({props['path']}) in the VM (exit status 1)"
    assert message.startswith(f"playground: {what}"), message
    assert "command: docker load --quiet" in message and CORRUPT in message
    assert "not a valid repository/tag" not in message
    assert runner.calls == [playground.LOAD_IMAGE]  # nothing after the failing command
    assert runner.streamed == [Path(str(props["path"]))]


def test_a_loaded_image_is_tagged_per_content_and_nothing_is_written_in_the_vm(tmp_path: Path) -> None:
    props = tarball_props(tmp_path, "image-tarball")
    runner = docker_vm((0, "Loaded image: nexus/playground:loaded\n"))
    outs = lifecycles.import_tarball(runner, props)
    tag = "nexus/nexus-playground:tarball-abababababababab"
    assert outs["tag"] == tag and outs["image_id"] == "sha256:" + "d" * 64
    assert runner.calls == [
        playground.LOAD_IMAGE,
        ("docker", "tag", "nexus/playground:loaded", tag),
        ("docker", "image", "inspect", "--format", "{{.Id}}", tag),
    ]


def test_a_root_file_system_tarball_is_imported_from_stdin(tmp_path: Path) -> None:
    props = tarball_props(tmp_path, "rootfs-tarball")
    runner = docker_vm((1, "", "Error response from daemon: archive/tar: invalid tar header"))
    with pytest.raises(GuestError) as caught:
        lifecycles.import_tarball(runner, props)
    message = str(caught.value)
    assert message.startswith("playground: could not import nexus:playground.rootfsTarball"), message
    assert "command: docker import - nexus/" in message and "invalid tar header" in message
    assert runner.calls == [("docker", "import", "-", "nexus/nexus-playground:tarball-abababababababab")]


def test_an_import_is_redone_only_for_new_content_or_an_image_gone_from_the_vm(tmp_path: Path) -> None:
    olds = {
        **tarball_props(tmp_path, "rootfs-tarball"),
        "tag": "nexus/nexus-playground:tarball-ab",
        "image_id": "x",
    }
    inspected: list[Answer] = []
    runner = ScriptedRunner(lambda _argv: inspected[-1])
    image = lifecycles.TarballImage(runner_for=lambda _props: runner)
    moved = {**olds, "path": "/elsewhere/same content.tar"}
    inspected.append((0, "sha256:" + "d" * 64))
    assert not image.diff(olds, moved).changes  # switching back to the same content: nothing
    assert image.diff(olds, {**olds, "digest": "cd" * 32}).replaces == ["digest"]
    inspected.append((1, "", "Error: No such image: nexus/nexus-playground:tarball-ab"))
    gone = image.diff(olds, olds)
    assert gone.changes and not gone.replaces
    inspected.append(hung_vm(()))
    assert not image.diff(olds, olds).changes


# --------------------------------------------------------------------------- inner VM

INNER_PROPS = {
    **PRESENCE_PROPS,
    "container_id": "c" * 64,
    "name": "inner",
    "cpus": 1.0,  # the engine's numbers are floats
    "memory_mib": 256.0,
    "disk_size": "10G",
    "accelerator": "auto",
    "kernel": "/opt/vmlinuz",
    "kernel_args": "console=ttyS0",
    "username": "ubuntu",
    "forwards": [{"container": 2223.0, "guest": 22.0}],
    "powerdown_timeout_seconds": 60.0,
    "boot_timeout_seconds": 300.0,
}


def test_the_inner_vm_settings_come_back_from_the_state_as_they_were() -> None:
    config = lifecycles.inner_vm_config(INNER_PROPS)
    assert config.cpus == 1 and config.memory_mib == 256 and config.kernel == "/opt/vmlinuz"
    assert config.forwards[0].container == 2223 and config.guest_hostname == "inner"
    assert config.image is None and config.iso is None


def qemu_in_container(pid: str, *, cgroup_found: bool = True) -> ScriptedRunner:
    """A container whose inner QEMU runs (`pid`) or not (""), seen from the VM through the
    container's cgroup (`cgroup_found`) or, without it, from inside the container."""
    looked_up_from_the_vm = inner.qemu_runs_in("c" * 64, PurePosixPath("/x"))[:3]

    def answer(argv: tuple[str, ...]) -> Answer:
        if argv[:3] == tuple(looked_up_from_the_vm):
            return (2, "") if not cgroup_found else ((0, "") if pid else (1, ""))
        return (0, pid) if any("pid" in word for word in argv) else (0, "")

    return ScriptedRunner(answer)


@pytest.mark.parametrize(
    ("change", "restarts"),
    [
        ({}, False),
        ({"memory_mib": 512.0}, True),
        ({"container_id": "d" * 64}, True),
        ({"iso": "/x.iso"}, True),
        ({"shares": [{"tag": "nexus0", "source": "/work", "path": "/mnt/work", "readOnly": False}]}, True),
    ],
    ids=["nothing", "memory", "a new container", "boot medium", "a new share"],
)
def test_the_inner_vm_restarts_for_a_new_setting_or_container(
    change: dict[str, object], restarts: bool
) -> None:
    inner_vm = lifecycles.InnerVm(runner_for=lambda _props: qemu_in_container("4242"))
    diff = inner_vm.diff(INNER_PROPS, {**INNER_PROPS, **change})
    assert diff.changes is restarts and not diff.replaces


@pytest.mark.parametrize("cgroup_found", [True, False], ids=["seen from the VM", "asked in the container"])
@pytest.mark.parametrize("pid", ["4242", ""], ids=["running", "dead"])
def test_whether_the_inner_qemu_runs_is_read_from_the_vm_without_docker_exec(
    cgroup_found: bool, pid: str
) -> None:
    runner = qemu_in_container(pid, cgroup_found=cgroup_found)
    diff = lifecycles.InnerVm(runner_for=lambda _props: runner).diff(INNER_PROPS, INNER_PROPS)
    assert diff.changes is (pid == "")
    assert bool(runner.ran("docker", "exec")) is not cgroup_found


def test_the_cgroup_script_finds_the_qemu_that_names_its_pid_file(tmp_path: Path) -> None:
    pid_file = PurePosixPath(tmp_path / "inner" / "qemu.pid")
    # A process whose command line names the pid file, as the inner QEMU's does.
    qemu = subprocess.Popen(["sh", "-c", "sleep 60", "sh", str(pid_file)])
    try:
        listed, other, missing = (
            tmp_path / "listed.procs",
            tmp_path / "other.procs",
            tmp_path / "missing.procs",
        )
        listed.write_text(f"{os.getpid()}\n{qemu.pid}\n")
        other.write_text(f"{os.getpid()}\n")

        def status(*procs: Path) -> int:
            script = inner.qemu_runs_in("c" * 64, pid_file)[:5]  # sh -c SCRIPT sh PID_FILE
            return subprocess.run([*script, *map(str, procs)], check=False).returncode

        assert status(missing, listed) == inner.RUNS  # the first list found is read
        assert status(other, listed) == inner.DOES_NOT_RUN
        assert status(missing) == inner.PROCESS_LIST_NOT_FOUND
    finally:
        qemu.kill()
        qemu.wait()


def test_an_inner_vm_in_a_vm_that_does_not_answer_is_asked_once() -> None:
    runner = ScriptedRunner(hung_vm)
    diff = lifecycles.InnerVm(runner_for=lambda _props: runner).diff(INNER_PROPS, INNER_PROPS)
    assert diff.changes and len(runner.calls) == 1  # no second wait through docker exec


def test_an_inner_vm_that_died_is_started_again_and_a_new_name_is_a_new_one() -> None:
    dead = lifecycles.InnerVm(runner_for=lambda _props: qemu_in_container(""))
    diff = dead.diff(INNER_PROPS, INNER_PROPS)
    assert diff.changes and not diff.replaces
    renamed = lifecycles.InnerVm(runner_for=lambda _props: qemu_in_container("4242"))
    assert renamed.diff(INNER_PROPS, {**INNER_PROPS, "name": "other"}).replaces == ["name"]


# --------------------------------------------------------------------------- a suspended VM


def suspended(props: dict[str, object], **change: object) -> dict[str, object]:
    return {**props, **change, "vm_state": "suspended"}


def nothing_answers() -> ScriptedRunner:
    """A suspended VM: QEMU is stopped, so SSH gets no answer (and must not be tried)."""
    return ScriptedRunner(hung_vm)


@pytest.mark.parametrize(
    ("make", "props"),
    [
        (lambda runner: lifecycles.DockerEngine(runner_for=lambda _props: runner), ENGINE_PROPS),
        (lambda runner: lifecycles.ContainerPresence(runner_for=lambda _props: runner), PRESENCE_PROPS),
        (lambda runner: lifecycles.ContainerPreflight(runner_for=lambda _props: runner), PRESENCE_PROPS),
        (lambda runner: lifecycles.InnerVm(runner_for=lambda _props: runner), INNER_PROPS),
    ],
    ids=["Docker engine", "container presence", "container preflight", "inner VM"],
)
def test_a_suspended_vm_is_not_looked_into_and_shows_no_change(make: Any, props: dict[str, object]) -> None:
    runner = nothing_answers()
    lifecycle = make(runner)
    assert not lifecycle.diff(props, suspended(props)).changes
    assert runner.calls == [], "nothing is run in a suspended VM"


def test_suspending_changes_the_vms_pid_without_a_wait_for_docker() -> None:
    runner = nothing_answers()
    engine_lifecycle = lifecycles.DockerEngine(runner_for=lambda _props: runner)
    olds = {**ENGINE_PROPS, "vm_pid": 4242, "instance_id": "i-1"}
    assert not engine_lifecycle.diff(olds, suspended(olds, vm_pid=0)).changes
    # Resumed: a new QEMU, so the daemon is waited for again.
    assert engine_lifecycle.diff(olds, {**olds, "vm_pid": 4343, "vm_state": "running"}).changes


def test_a_change_to_a_layer_of_a_suspended_vm_is_refused_naming_its_settings() -> None:
    inner_vm = lifecycles.InnerVm(runner_for=lambda _props: nothing_answers())
    with pytest.raises(GuestError) as caught:
        inner_vm.diff(INNER_PROPS, suspended(INNER_PROPS, memory_mib=512.0))
    message = one_line(str(caught.value))
    assert message.startswith(
        "nexus:innerVm changed (memory_mib) while nexus:vm.state is suspended; "
        "the change needs the VM running"
    ), message
    assert "set nexus:vm.state to running with the change" in message, message
    presence = lifecycles.ContainerPresence(runner_for=lambda _props: nothing_answers())
    with pytest.raises(GuestError, match=r"^nexus:playground changed \(container\) while nexus:vm.state"):
        presence.diff(PRESENCE_PROPS, suspended(PRESENCE_PROPS, container="other"))


def test_a_container_setting_only_pulumi_docker_applies_is_refused_while_suspended_too() -> None:
    """Its env, say: the preflight sees it through the settings' digest, at `preview`."""
    before = PlaygroundConfig(env={"GREETING": "hello"})
    after = PlaygroundConfig(env={"GREETING": "hello, world"})
    assert playground.settings_digest(before) == playground.settings_digest(
        PlaygroundConfig(env={"GREETING": "hello"})
    )
    assert playground.settings_digest(before) != playground.settings_digest(after)
    olds = {
        **PRESENCE_PROPS,
        "ports": [],
        "devices": [],
        "settings_digest": playground.settings_digest(before),
    }
    news = {**olds, "settings_digest": playground.settings_digest(after)}
    preflight_lifecycle = lifecycles.ContainerPreflight(runner_for=lambda _props: nothing_answers())
    with pytest.raises(
        GuestError,
        match=r"^nexus:playground changed \(env, command, volumes, restart or privileged\) while",
    ):
        preflight_lifecycle.diff(olds, suspended(news))
    running = lifecycles.ContainerPreflight(runner_for=lambda _props: ScriptedRunner(lambda _argv: (0, "")))
    assert running.diff(olds, news).changes  # recorded, so a later suspended diff compares the latest
    legacy = {key: value for key, value in olds.items() if key != "settings_digest"}
    assert not running.diff(legacy, news).changes, "a state from before the digest is not a change"


# --------------------------------------------------------------------------- helper scripts


def test_a_script_is_written_again_when_deleted_and_removed_on_destroy(tmp_path: Path) -> None:
    script = lifecycles.ScriptFile()
    props = {"path": str(tmp_path / "connect-playground.sh"), "content": "#!/bin/sh\necho hi\n"}
    made = script.create(props)
    path = Path(made.id)
    assert path.read_text() == props["content"] and path.stat().st_mode & 0o777 == 0o755
    assert not script.diff(props, props).changes
    path.unlink()
    assert script.diff(props, props).changes
    script.update(props, props)
    assert path.is_file()
    script.delete(props)
    assert not path.exists()

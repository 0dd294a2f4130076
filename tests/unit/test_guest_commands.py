"""Every command the guest layers send, quoting included, and how their answers are read.

Quoting is checked for real: the line ssh hands to the VM's shell is run by this
machine's `sh`, which must give back exactly the words we meant.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest

from nexus_components.core.errors import NexusError
from nexus_components.core.runner import (
    GuestError,
    LocalRunner,
    SshRunner,
    check,
    control_path,
    output_tail,
    sharing_options,
    wait_for,
)
from nexus_components.core.ssh import SshTarget
from nexus_components.guest import engine, inner_vm, playground
from nexus_components.guest.settings import InnerVmConfig, PlaygroundConfig, PortToGuest, PublishedPort
from nexus_components.host import lifecycles

TARGET = SshTarget("127.0.0.1", 2222, "nexus", Path("/keys/id ed25519"))
NASTY = ["it's", 'say "hi"', "$HOME", "`date`", "a b\tc", "semi;colon", "back\\slash", "*"]


def remote_words(argv: list[str]) -> list[str]:
    """What the VM's shell makes of the line ssh sends: run it through a real sh."""
    line = TARGET.argv(argv)[-1]
    # Replace the program by printf so the shell prints the words it was given.
    program, _, rest = line.partition(" ")
    assert shlex.split(line)[0] == argv[0], program
    result = subprocess.run(
        ["sh", "-c", "printf '%s\\n' " + rest], capture_output=True, text=True, check=True
    )
    return result.stdout.split("\n")[:-1]


def test_remote_commands_reach_the_shell_word_for_word() -> None:
    argv = inner_vm.in_container("nexus-playground", ["echo", *NASTY])
    assert remote_words(argv) == argv[1:]


def test_engine_probe_commands() -> None:
    assert engine.DOCKER_SERVER_VERSION[:3] == ("sudo", "-n", "docker")
    assert engine.join_docker_group("we ird") == ("sudo", "-n", "usermod", "-aG", "docker", "--", "we ird")
    assert remote_words(list(engine.join_docker_group("-rf $x"))) == [
        "-n",
        "usermod",
        "-aG",
        "docker",
        "--",
        "-rf $x",
    ]
    assert engine.docker_host("nexus", "127.0.0.1", 2222) == "ssh://nexus@127.0.0.1:2222"


@pytest.mark.parametrize(
    ("code", "output", "missing"),
    [
        (0, "status: done\n", None),
        (0, "\nstatus: disabled\n", None),
        (0, "status: running\n", "cloud-init is still running (status: running)"),
        (0, "status: not started\n", "cloud-init is still running (status: not)"),
        (1, "status: error\n", "cloud-init finished with an error"),
        (2, "gibberish", "cloud-init reports gibberish (exit status 2)"),
    ],
)
def test_cloud_init_states(code: int, output: str, missing: str | None) -> None:
    assert engine.cloud_init_missing(code, output) == missing


def test_docker_answers() -> None:
    assert engine.docker_missing(0, "20.10.24+dfsg1\n") is None
    assert (
        engine.docker_missing(127, "sudo: docker: command not found") == "docker is not installed in the VM"
    )
    down = engine.docker_missing(1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.")
    assert (
        down
        == "the Docker daemon does not answer (Cannot connect to the Docker daemon at unix:///var/run/docker.sock.)"
    )


def test_kvm_ok_verdicts() -> None:
    usable = engine.parse_kvm_ok(0, "INFO: /dev/kvm exists\nKVM acceleration can be used\n")
    assert usable == engine.KvmVerdict(True, "KVM acceleration can be used")
    missing = engine.parse_kvm_ok(
        1, "INFO: Your CPU does not support KVM extensions\nKVM acceleration can NOT be used\n"
    )
    assert not missing.usable
    assert "does not support KVM extensions" in missing.verdict and "can NOT be used" in missing.verdict
    assert not engine.parse_kvm_ok(127, "sudo: kvm-ok: command not found").usable


def test_libvirt_version() -> None:
    assert engine.parse_libvirt_version(0, "libvirtd (libvirt) 9.0.0\n") == "9.0.0"
    assert engine.parse_libvirt_version(1, "sudo: libvirtd: command not found") == "not installed"


def test_inner_argv_direct_kernel_boot() -> None:
    config = InnerVmConfig(
        enabled=True,
        name="inner",
        kernel="/boot/vmlinuz",
        initrd="/boot/initrd.img",
        kernel_args="console=ttyS0 root=/dev/vda quiet",
        forwards=(PortToGuest(2223, 22),),
    )
    argv = inner_vm.build_inner_argv(config, "kvm")
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-machine") + 1] == "q35,accel=kvm"
    assert argv[argv.index("-m") + 1] == "1024M"
    assert argv[argv.index("-kernel") + 1] == "/boot/vmlinuz"
    assert argv[argv.index("-initrd") + 1] == "/boot/initrd.img"
    # The kernel command line stays one argument, spaces and all.
    assert argv[argv.index("-append") + 1] == "console=ttyS0 root=/dev/vda quiet"
    assert "user,id=net0,hostfwd=tcp::2223-:22" in argv
    assert argv[argv.index("-pidfile") + 1] == "/var/lib/nexus/inner-vm/inner/qemu.pid"
    assert "unix:/var/lib/nexus/inner-vm/inner/qmp.sock,server=on,wait=off" in argv
    assert "file:/var/lib/nexus/inner-vm/inner/serial.log" in argv
    assert argv[-1] == "-daemonize"


def test_inner_argv_iso_and_comma_in_path() -> None:
    config = InnerVmConfig(enabled=True, iso="/media/a,b.iso")
    argv = inner_vm.build_inner_argv(config, "tcg")
    assert "media=cdrom,readonly=on,file=/media/a,,b.iso" in argv
    assert "-kernel" not in argv


def test_probe_sector_runs_under_tcg_and_exits_with_the_marker(tmp_path: Path) -> None:
    """The KVM probe, run for real with TCG on this machine: guest code ran, QEMU exited."""
    sector = inner_vm.probe_boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")
    image = tmp_path / "probe.img"
    image.write_bytes(sector)
    argv = inner_vm.probe_argv("tcg", PurePosixPath(str(image)))
    assert argv[:2] == ["timeout", str(inner_vm.PROBE_TIMEOUT_SECONDS)]
    result = LocalRunner().run(argv, timeout=90)
    assert result.returncode == inner_vm.PROBE_EXIT_STATUS, result.output


def test_container_helpers_keep_values_out_of_scripts() -> None:
    pid = inner_vm.running_pid("pg", PurePosixPath("/v/it's here/qemu.pid"))
    # The path is a positional parameter, never part of the script text.
    script = pid[pid.index("-c") + 1]
    assert "it's" not in script and pid[-1] == "/v/it's here/qemu.pid"
    disk = inner_vm.create_disk_if_missing("pg", PurePosixPath("/v/d.qcow2"), "10G")
    assert disk[-2:] == ["/v/d.qcow2", "10G"]
    assert inner_vm.write_file("pg", PurePosixPath("/v/p.img"))[:4] == ["docker", "exec", "-i", "pg"]
    assert remote_words(inner_vm.remove_files("pg", [PurePosixPath("/v/a b"), PurePosixPath("/v/$x")]))[
        -2:
    ] == [
        "/v/a b",
        "/v/$x",
    ]


def test_running_pid_script_finds_our_process(tmp_path: Path) -> None:
    """The pid check's script, run by a real sh against this very process."""
    pid_file = tmp_path / "qemu.pid"
    # A process whose command line names the pid file, as QEMU's does (-pidfile PATH).
    sleeper = subprocess.Popen(["sh", "-c", "sleep 30; :", str(pid_file)])
    try:
        pid_file.write_text(f"{sleeper.pid}\n")
        argv = inner_vm.running_pid("pg", PurePosixPath(str(pid_file)))[3:]  # without `docker exec pg`
        assert LocalRunner().run(argv).stdout.strip() == str(sleeper.pid)
        pid_file.write_text(f"{os.getpid()}\n")  # a live pid that is not ours
        assert LocalRunner().run(argv).stdout.strip() == ""
    finally:
        sleeper.kill()
        sleeper.wait()


def test_qmp_conversation() -> None:
    sent = inner_vm.qmp_input("query-status")
    assert sent.decode().splitlines() == ['{"execute": "qmp_capabilities"}', '{"execute": "query-status"}']
    assert b'"arguments": {"device": "disk0"}' in inner_vm.qmp_input("x", device="disk0")
    answer = (
        '{"QMP": {"version": {}, "capabilities": ["oob"]}}\r\n{"return": {}}\r\n'
        '{"timestamp": {"seconds": 1}, "event": "RESUME"}\r\n'
        '{"return": {"status": "running", "singlestep": false, "running": true}}\r\n'
    )
    assert inner_vm.qmp_status(answer) == "running"
    assert inner_vm.qmp_status("") == "unknown"
    assert inner_vm.qmp_status('{"QMP": {}}\n{"return": {}}\n{"error": {"class": "x"}}\n') == "unknown"


def test_reach_hint_names_published_ports() -> None:
    config = InnerVmConfig(enabled=True, forwards=(PortToGuest(2223, 22), PortToGuest(5900, 5900)))
    hint = inner_vm.reach_hint("pg", config, {2223: 2223})
    assert "docker exec pg tail -f /var/lib/nexus/inner-vm/inner/serial.log" in hint
    assert "guest port 22: VM port 2223" in hint
    assert "guest port 5900: container port 5900 (not published)" in hint


def test_docker_run_options() -> None:
    config = PlaygroundConfig(env={"B": "two words", "A": "it's $HOME"}, devices=("/dev/fuse",))
    assert playground.env_list(config.env) == ["A=it's $HOME", "B=two words"]
    assert playground.devices(config, pass_kvm=False) == ["/dev/fuse"]
    assert playground.devices(config, pass_kvm=True) == ["/dev/fuse", "/dev/kvm"]
    volumes = playground.all_volumes(config, inner_vm=True)
    assert (
        volumes[-2].source == "nexus-playground-inner-vm" and volumes[-2].target == "/var/lib/nexus/inner-vm"
    )
    assert volumes[-1] == playground.inner_images_volume()
    assert playground.ports_by_container_port((PublishedPort(8000, 80), PublishedPort(53, 53, "udp"))) == {
        80: 8000
    }


def test_ssh_options_name_the_key_file_not_its_content() -> None:
    options = playground.ssh_options(TARGET)
    assert options[options.index("-i") + 1] == "/keys/id ed25519"
    assert "StrictHostKeyChecking=no" in options and "BatchMode=yes" in options
    # pulumi-docker shares the guest layers' SSH connection.
    assert sharing_options(TARGET) == options[: len(sharing_options(TARGET))]


def test_one_shared_connection_per_vm_and_key() -> None:
    path = control_path(TARGET)
    assert path is not None and len(str(path)) < 100
    assert control_path(SshTarget("127.0.0.1", 2223, "nexus", TARGET.private_key)) != path
    argv = SshRunner(TARGET).ssh_argv(["true"])
    assert argv[0] == "ssh" and "ControlMaster=auto" in argv and f"ControlPath={path}" in argv
    assert argv[-2:] == ["--", "true"]


def test_tarball_images_are_streamed_into_docker_and_tagged_per_content() -> None:
    tag = playground.tarball_tag("Nexus-PG", "ab" * 32)
    assert tag == "nexus/nexus-pg:tarball-abababababababab"
    # Both read the tarball from stdin: no file of it is ever written in the VM.
    assert playground.import_rootfs(tag) == ["docker", "import", "-", tag]
    assert playground.LOAD_IMAGE == ("docker", "load", "--quiet")
    assert remote_words(playground.tag_image("it's $HOME", tag)) == ["tag", "it's $HOME", tag]


@pytest.mark.parametrize(
    ("output", "image"),
    [
        ("Loaded image: nexus/playground:loaded\n", "nexus/playground:loaded"),
        ("Loaded image: a:1\nLoaded image: b:2\n", "b:2"),
        ("Loaded image ID: sha256:" + "c" * 64 + "\n", "sha256:" + "c" * 64),
        ("", None),
        ("open /var/lib/docker/tmp/docker-import-1/repositories: no such file or directory\n", None),
    ],
)
def test_the_image_docker_load_names(output: str, image: str | None) -> None:
    assert playground.loaded_image(output) == image


def test_grow_root_fs_script_is_valid_sh() -> None:
    subprocess.run(["sh", "-n", "-c", lifecycles.GROW_ROOT_FS], check=True)
    assert "growpart" in lifecycles.GROW_ROOT_FS and "resize2fs" in lifecycles.GROW_ROOT_FS


def test_shell_script_asks_for_a_terminal_before_the_host(tmp_path: Path) -> None:
    script = playground.shell_script(TARGET, "nexus-playground")
    line = script.splitlines()[-1]
    words = shlex.split(line)
    assert words[:3] == ["exec", "ssh", "-t"]
    assert words[-2] == "nexus@127.0.0.1"
    assert words[-1] == "docker exec -it nexus-playground sh"
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_tree_digest_follows_content_not_dates(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("one")
    first = playground.tree_digest(tmp_path)
    os.utime(tmp_path / "sub" / "a.txt", (time.time() + 100, time.time() + 100))
    assert playground.tree_digest(tmp_path) == first
    (tmp_path / "sub" / "a.txt").write_text("two")
    assert playground.tree_digest(tmp_path) != first


def test_local_runner_reports_status_output_and_time() -> None:
    runner = LocalRunner()
    echoed = runner.run(["cat"], input_bytes=b"it's $HOME\n")
    assert echoed.ok and echoed.stdout == "it's $HOME\n"
    failed = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert failed.returncode == 3 and failed.output == "out\nerr"
    slow = runner.run(["sleep", "5"], timeout=0.5)
    assert slow.returncode == 124 and "timed out after" in slow.stderr
    assert runner.run(["/nonexistent/tool"]).returncode == 127


def test_a_file_is_streamed_to_the_commands_stdin(tmp_path: Path) -> None:
    tarball = tmp_path / "big image.tar"
    tarball.write_bytes(b"\0layer" * 100_000)
    counted = LocalRunner().run(["wc", "-c"], input_file=tarball)
    assert counted.ok and int(counted.stdout) == 600_000


def test_check_names_layer_command_and_output_tail() -> None:
    result = LocalRunner().run(["sh", "-c", "for i in $(seq 1 40); do echo line$i; done; exit 2"])
    with pytest.raises(GuestError) as caught:
        check(result, layer="inner VM", what="start QEMU", hint="fix it", where="the container pg")
    message = str(caught.value)
    assert isinstance(caught.value, NexusError)
    assert message.startswith("inner VM: could not start QEMU in the container pg (exit status 2)")
    assert "command: sh -c" in message
    assert "line40" in message and "line10\n" not in message  # only the tail
    assert "next step: fix it" in message
    assert output_tail("a\nb\nc", 2) == "b\nc"


def test_wait_for_returns_what_was_still_missing() -> None:
    answers = iter(["daemon down", "daemon down", None])
    seconds, missing = wait_for(lambda: next(answers), timeout=10, poll_seconds=0.01, waiting_for="x")
    assert missing is None and seconds < 5
    seconds, missing = wait_for(lambda: "still down", timeout=0.2, poll_seconds=0.05, waiting_for="x")
    assert missing == "still down" and seconds >= 0.2


@pytest.mark.parametrize("name", ["nexus-playground", "my.box_2"])
def test_container_lookup_matches_the_name_exactly(name: str) -> None:
    argv = playground.containers_named(name)
    (name_filter,) = (argv[i + 1] for i, word in enumerate(argv) if word == "--filter")
    # docker matches the filter as a regular expression against "/<name>".
    pattern = re.compile(name_filter.removeprefix("name="))
    assert pattern.search(f"/{name}")
    for other in (f"/{name}2", f"/x{name}", "/" + name.replace(".", "x").replace("-", "x")):
        assert not pattern.search(other), other
    assert argv[-1] == '{{.ID}} {{.Label "dev.nexus-nested-vm.disk"}}'


def test_containers_are_split_by_who_made_them() -> None:
    listing = "a1b2c3d4e5f6 nexus-nested-vm-disk-id\n0123456789ab \n\n"
    assert playground.split_by_maker(listing) == (["a1b2c3d4e5f6"], ["0123456789ab"])
    assert playground.split_by_maker("") == ([], [])

"""The inner VM's cloud-image boot: the image's place, its overlay, its seed, and the way in.

Scripts are run for real (sh, qemu-img), and connect-inner-vm.sh is run with a stand-in
`ssh` on PATH that prints the words it was given, so quoting is checked end to end.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from nexus_components.core import seed_iso
from nexus_components.core.progress import progress_to
from nexus_components.core.runner import GuestError, LocalRunner, SshRunner
from nexus_components.core.ssh import SshTarget
from nexus_components.guest import inner_image, inner_vm, playground
from nexus_components.guest.inner_image import BootImage
from nexus_components.guest.inner_vm_machine import InnerVmMachine
from nexus_components.guest.settings import InnerImage, InnerVmConfig, PlaygroundConfig, PortToGuest

DIGEST = "ab" * 32
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9rDRAP5nPGcTupF3fvJm+FFqYqolTK8kUrRcHv3wDZ nexus-dev"
# A key path and container name a shell would mangle if they were ever pasted unquoted.
NASTY_KEY = Path('/home/it\'s me/$HOME/100% "sure"/id ed25519')
VM = SshTarget("127.0.0.1", 2222, "nexus", NASTY_KEY)
IMAGE_CONFIG = InnerVmConfig(
    enabled=True,
    name="inner",
    image=InnerImage("/images/debian.qcow2"),
    username="nexus",
    forwards=(PortToGuest(2223, 22), PortToGuest(8080, 80)),
)


def without_docker_exec(argv: list[str]) -> list[str]:
    """The command as it runs inside the container: here, on this machine."""
    assert argv[:2] == ["docker", "exec"]
    rest = argv[2:]
    if rest[0] == "-i":
        rest = rest[1:]
    return rest[1:]


def test_format_is_read_from_the_magic_number(tmp_path: Path) -> None:
    qcow2, raw = tmp_path / "a disk.qcow2", tmp_path / "b.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1M"], check=True)
    raw.write_bytes(b"\0" * 4096)
    assert inner_image.detect_format(qcow2) == "qcow2"
    assert inner_image.detect_format(raw) == "raw"
    assert inner_image.image_format(b"QFI") == "raw"  # too short to be qcow2


def test_the_copy_is_named_by_digest_in_the_images_dir() -> None:
    boot = BootImage.of(DIGEST, "qcow2")
    assert boot.path == f"/var/lib/nexus/images/{DIGEST}.qcow2"
    assert BootImage.from_spec({"path": boot.path, "format": "qcow2", "digest": DIGEST}) == boot
    assert BootImage.from_spec(None) is None
    with pytest.raises(ValueError, match="vmdk"):
        BootImage.of(DIGEST, "vmdk")


def test_the_container_mounts_the_images_dir_read_only() -> None:
    volumes = playground.all_volumes(PlaygroundConfig(), inner_vm=True)
    images = [v for v in volumes if v.target == str(inner_vm.IMAGES_DIR)]
    assert len(images) == 1 and images[0].source == str(inner_vm.IMAGES_DIR) and images[0].read_only
    assert images[0].is_bind
    assert playground.all_volumes(PlaygroundConfig(), inner_vm=False) == ()


def test_vm_side_commands_keep_values_out_of_scripts(tmp_path: Path) -> None:
    prepare = inner_image.prepare_images_dir_argv("we ird$user")
    assert prepare[-2:] == ["/var/lib/nexus/images", "we ird$user"]
    assert "we ird" not in prepare[2]  # a positional parameter, never script text
    path = str(tmp_path / "it's $x" / f"{DIGEST}.qcow2")
    Path(path).parent.mkdir()
    # The receiving end, run by a real sh: stdin lands under the final name, no partial left.
    received = LocalRunner().run(inner_image.receive_argv(path), input_bytes=b"image bytes")
    assert received.ok, received.output
    assert Path(path).read_bytes() == b"image bytes" and not Path(path + ".partial").exists()
    assert LocalRunner().run(inner_image.size_argv(path)).stdout.strip() == "11"
    # Pulumi hands numbers back as floats: the state's size still matches.
    assert inner_image.same_size("11\n", 11.0) and inner_image.same_size("11", 11)
    assert not inner_image.same_size("10", 11.0) and not inner_image.same_size("", 11)
    assert inner_image.remove_argv(path) == ["sudo", "-n", "rm", "-f", "--", path, path + ".partial"]


def test_overlay_is_made_once_per_image_and_replaced_for_another(tmp_path: Path) -> None:
    """The overlay script, run by a real sh and qemu-img on paths with spaces, quotes and `$`."""
    folder = tmp_path / "it's a $dir"
    folder.mkdir()
    first = folder / "first image.qcow2"
    second = folder / "second.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(first), "64M"], check=True)
    second.write_bytes(b"\0" * (1 << 20))
    disk, record = PurePosixPath(folder / "disk.qcow2"), PurePosixPath(folder / "disk.qcow2.backing")
    runner = LocalRunner()

    def overlay(image: Path, fmt: str) -> None:
        boot = BootImage(str(image), fmt, DIGEST)
        argv = inner_image.create_overlay("pg", disk, record, boot, "128M")
        result = runner.run(without_docker_exec(argv))
        assert result.ok, result.output

    def backing() -> str:
        info = runner.run(["qemu-img", "info", "--output=json", str(disk)]).stdout
        return str(yaml.safe_load(info).get("backing-filename"))

    overlay(first, "qcow2")
    assert backing() == str(first) and Path(record).read_text() == str(first)
    made = Path(disk).stat().st_ino, Path(disk).stat().st_mtime_ns
    overlay(first, "qcow2")  # the same image: the disk (and what the guest wrote) stays
    assert (Path(disk).stat().st_ino, Path(disk).stat().st_mtime_ns) == made
    overlay(second, "raw")
    assert backing() == str(second) and Path(record).read_text() == str(second)
    # Back to a blank disk (kernel or ISO boot): the overlay goes, a plain qcow2 comes.
    blank = runner.run(without_docker_exec(inner_vm.create_disk_if_missing("pg", disk, "128M")))
    assert blank.ok, blank.output
    assert backing() == "None" and not Path(record).exists()


def test_seed_puts_the_stacks_key_on_the_login_user() -> None:
    seed = inner_image.render_seed(IMAGE_CONFIG, KEY + "\n")
    assert seed.user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(seed.user_data)
    (user,) = document["users"]
    assert user["name"] == "nexus" and user["ssh_authorized_keys"] == [KEY]
    assert document["hostname"] == "inner"  # the inner VM's name by default
    assert document["final_message"].startswith(inner_image.INNER_READY_LINE)
    assert "packages" not in document and "runcmd" not in document
    meta = yaml.safe_load(seed.meta_data)
    assert meta == {"instance-id": seed.instance_id, "local-hostname": "inner"}


def test_instance_id_changes_exactly_when_the_seed_does() -> None:
    same = inner_image.render_seed(IMAGE_CONFIG, KEY).instance_id
    assert inner_image.render_seed(IMAGE_CONFIG, KEY).instance_id == same
    other_key = KEY.replace("AAAAIE9r", "AAAAIE9s")
    renamed = InnerVmConfig(**{**IMAGE_CONFIG.__dict__, "hostname": "box"})
    other_user = InnerVmConfig(**{**IMAGE_CONFIG.__dict__, "username": "alice"})
    ids = {
        same,
        *(
            inner_image.render_seed(c, k).instance_id
            for c, k in [(IMAGE_CONFIG, other_key), (renamed, KEY), (other_user, KEY)]
        ),
    }
    assert len(ids) == 4
    with pytest.raises(ValueError, match="public key"):
        inner_image.render_seed(IMAGE_CONFIG, "  ")


def test_seed_iso_is_a_nocloud_volume(tmp_path: Path) -> None:
    seed = inner_image.render_seed(IMAGE_CONFIG, KEY)
    iso = tmp_path / "seed.iso"
    iso.write_bytes(inner_image.seed_iso_bytes(seed))
    label, files = seed_iso.read_seed_iso(iso)
    assert label == "cidata"
    assert files == {"user-data": seed.user_data.encode(), "meta-data": seed.meta_data.encode()}


def test_inner_argv_for_a_cloud_image() -> None:
    boot = BootImage.of(DIGEST, "qcow2")
    argv = inner_vm.build_inner_argv(IMAGE_CONFIG, "tcg", boot)
    drives = [argv[i + 1] for i, word in enumerate(argv) if word == "-drive"]
    assert drives == [
        "id=disk0,if=virtio,format=qcow2,file=/var/lib/nexus/inner-vm/inner/disk.qcow2",
        "id=seed,if=virtio,format=raw,readonly=on,file=/var/lib/nexus/inner-vm/inner/seed.iso",
    ]
    assert "-kernel" not in argv and "user,id=net0,hostfwd=tcp::2223-:22,hostfwd=tcp::8080-:80" in argv
    # Without the boot image (kernel, ISO) nothing of it appears.
    assert not any("seed.iso" in word for word in inner_vm.build_inner_argv(IMAGE_CONFIG, "tcg"))


def test_readiness_reads_the_serial_console_and_the_ssh_banner(tmp_path: Path) -> None:
    log = tmp_path / "serial log"
    log.write_text("[  3.1] booting\n")
    argv = without_docker_exec(inner_image.ready_line_argv("pg", PurePosixPath(log)))
    assert not LocalRunner().run(argv).ok
    log.write_text(f"[ 40.2] cloud-init[412]: {inner_image.INNER_READY_LINE} cloud-init 22.4.2 finished\n")
    assert LocalRunner().run(argv).ok
    assert inner_image.ssh_banner_argv("pg", 2223)[-2:] == ["-", "TCP:127.0.0.1:2223"]
    assert inner_image.is_ssh_banner("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
    assert not inner_image.is_ssh_banner("2026/11/27 socat[1] E connect(): Connection refused")


def test_the_wait_ends_when_the_vm_stops_answering_not_at_its_bound(tmp_path: Path) -> None:
    """A VM that hangs or went away answers no probe: no inner guest can become ready in it."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        runner = SshRunner(SshTarget("127.0.0.1", port, "nexus", tmp_path / "no-key"), connect_timeout=5)
        started = time.monotonic()
        with pytest.raises(inner_image.VmSilent, match="does not answer over SSH"):
            inner_image.wait_for_guest(runner, "pg", IMAGE_CONFIG, timeout=600)
    assert time.monotonic() - started < 60


def test_a_guest_whose_sshd_stays_silent_after_its_ready_line_is_stuck() -> None:
    now = [0.0]
    answers = iter(
        [
            "its cloud-init has not printed the ready line yet",
            f"{inner_image.SSHD_SILENT} 2223 yet (no answer)",  # silent since 10 s
            None,  # sshd greeted once: the count starts again
            f"{inner_image.SSHD_SILENT} 2223 yet (no answer)",  # silent since 30 s
            f"{inner_image.SSHD_SILENT} 2223 yet (no answer)",
            f"{inner_image.SSHD_SILENT} 2223 yet (no answer)",
        ]
    )
    probe = inner_image.give_up_when_stuck(lambda: next(answers), after_seconds=100, clock=lambda: now[0])
    for at in (0, 10, 20, 30, 129):
        now[0] = at
        probe()
    now[0] = 130
    with pytest.raises(
        inner_image.GuestStuck, match="its cloud-init finished, but sshd does not answer"
    ) as stuck:
        probe()
    assert str(stuck.value).endswith("after 100 s")


class StallsOnce(InnerVmMachine):
    """An inner VM whose guest stalls after its cloud-init on the first boot (`stalls` times):
    its QEMU steps are recorded instead of run (a nested guest that stalls cannot be made to)."""

    def __init__(self, stalls: int) -> None:
        super().__init__(LocalRunner(), "pg", IMAGE_CONFIG, boot=BootImage("/i.qcow2", "qcow2", DIGEST))
        self.stalls = stalls
        self.steps: list[str] = []

    def _check(self, argv: list[str], what: str, hint: str, **kwargs: object) -> str:
        self.steps.append(what)
        return ""

    def _prepare_image_boot(self, boot: BootImage) -> None:
        pass

    def _launch(self, argv: list[str], accelerator: str, log_prefix: str) -> None:
        self.steps.append("launch")

    def stop(self, *, powerdown_timeout: float | None = None) -> None:
        self.steps.append("stop")

    def pid(self) -> int | None:
        return 42


def test_an_inner_guest_that_stalls_after_its_cloud_init_is_restarted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def wait(machine: StallsOnce) -> object:
        def waited(*args: object, **kwargs: object) -> tuple[float, None]:
            if machine.stalls:
                machine.stalls -= 1
                raise inner_image.GuestStuck("its cloud-init finished, but sshd does not answer after 240 s")
            return 1.0, None

        return waited

    said: list[str] = []
    with progress_to(said.append):
        once = StallsOnce(stalls=1)
        monkeypatch.setattr(inner_image, "wait_for_guest", wait(once))
        assert once.start(accelerator="kvm")["qmp_status"] == "running"
        assert once.steps == ["create its directory", "launch", "stop", "launch"]
        assert any("it stalls; restarting its QEMU once" in line for line in said), said

        twice = StallsOnce(stalls=2)
        monkeypatch.setattr(inner_image, "wait_for_guest", wait(twice))
        with pytest.raises(
            GuestError, match=r"the image booted but was not ready within .*sshd does not answer"
        ):
            twice.start(accelerator="kvm")
        assert twice.steps[:4] == ["create its directory", "launch", "stop", "launch"]


def test_ssh_forward_is_the_one_to_guest_port_22() -> None:
    assert inner_image.ssh_forward(IMAGE_CONFIG) == PortToGuest(2223, 22)
    assert inner_image.ssh_forward(InnerVmConfig(forwards=(PortToGuest(8080, 80),))) is None


def run_script(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script with a stand-in `ssh` that prints each word it was given on a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_ssh = bin_dir / "ssh"
    fake_ssh.write_text('#!/bin/sh\nfor word in "$@"; do printf \'%s\\n\' "$word"; done\n')
    fake_ssh.chmod(0o755)
    path = tmp_path / "connect-inner-vm.sh"
    path.write_text(script)
    path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run([str(path), *args], capture_output=True, text=True, env=env, check=False)


def proxy_words(ssh_words: list[str]) -> list[str]:
    option = next(w for w in ssh_words if w.startswith("ProxyCommand="))
    # ssh turns %% into % before its shell runs the command.
    return shlex.split(option.removeprefix("ProxyCommand=").replace("%%", "%"))


def test_script_reaches_the_published_port_through_the_vm(tmp_path: Path) -> None:
    script = inner_image.shell_script(VM, "nexus-playground", IMAGE_CONFIG, {2223: 40022})
    result = run_script(tmp_path, script, "cat", "/etc/host name", "$HOME")
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    assert words[-4:] == ["nexus@inner", "cat", "/etc/host name", "$HOME"]
    assert words[words.index("-i") + 1] == str(NASTY_KEY)
    assert "BatchMode=yes" not in words and "StrictHostKeyChecking=no" in words
    jump = proxy_words(words)
    assert jump[0] == "ssh" and jump[jump.index("-i") + 1] == str(NASTY_KEY)
    assert jump[jump.index("-p") + 1] == "2222"
    assert jump[-3:] == ["nexus@127.0.0.1", "-W", "127.0.0.1:40022"]


def test_script_relays_through_the_container_when_the_port_is_not_published(tmp_path: Path) -> None:
    script = inner_image.shell_script(VM, "pg.1", IMAGE_CONFIG, {})
    result = run_script(tmp_path, script)
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    assert words[-1] == "nexus@inner"  # no command: an interactive shell
    jump = proxy_words(words)
    assert jump[-3:-1] == ["nexus@127.0.0.1", "--"]
    # The VM's shell gets one line; it must split back into the relay's words.
    assert shlex.split(jump[-1]) == ["docker", "exec", "-i", "pg.1", "socat", "-", "TCP:127.0.0.1:2223"]


def test_script_without_an_ssh_forward_says_how_to_add_one(tmp_path: Path) -> None:
    config = InnerVmConfig(enabled=True, kernel="/k", forwards=(PortToGuest(8080, 80),))
    result = run_script(tmp_path, inner_image.shell_script(VM, "pg", config, {8080: 80}), "true")
    assert result.returncode == 1 and result.stdout == ""
    assert "has no SSH forward" in result.stderr and "nexus:innerVm.forwards" in result.stderr
    assert "docker exec pg tail -f /var/lib/nexus/inner-vm/inner/serial.log" in result.stderr


def test_reach_hint_names_the_script() -> None:
    hint = inner_vm.reach_hint("pg", IMAGE_CONFIG, {2223: 40022}, shell_script="/s/connect-inner-vm.sh")
    assert hint.startswith("shell: /s/connect-inner-vm.sh; serial console: ")
    assert "guest port 22: VM port 40022" in hint
    no_ssh = InnerVmConfig(enabled=True, kernel="/k")
    assert "shell: none, no SSH forward" in inner_vm.reach_hint("pg", no_ssh, {}, shell_script="/s/c.sh")

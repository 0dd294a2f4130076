"""nexus:mounts: the checks at preview (each names the key), QEMU's argv per type and host OS,
virtiofsd's argv, and the guest's fstab block."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
import yaml

from nexus_components import host_inputs
from nexus_components.config import load_config
from nexus_components.core import cloudinit
from nexus_components.core.errors import ConfigError
from nexus_components.host import lifecycles, mounts
from nexus_components.host.mounts import Mount
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import GuestMachine, HostFacts, VmFiles, qemu_argv
from nexus_components.host.settings import NetworkConfig

HOME = Path("/home/tester")


def load(tmp_path: Path, entries: list[dict[str, Any]], host_os: str = "linux", **sections: Any) -> Any:
    return load_config(
        {"mounts": entries, **sections}, stack="dev", home=HOME, project_dir=tmp_path, host_os=host_os
    )


def refusal(tmp_path: Path, entries: list[dict[str, Any]], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, entries, **kwargs)
    return str(caught.value)


def test_a_mount_resolves_its_host_folder_and_adds_the_container_bind_mount(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    config = load(
        tmp_path, [{"host": "project", "vm": "/srv/project", "container": "/work", "readOnly": True}]
    )
    assert config.mounts == (Mount(str(tmp_path / "project"), "/srv/project", "9p", True, "/work"),)
    (volume,) = config.playground.volumes
    assert (volume.source, volume.target, volume.read_only) == ("/srv/project", "/work", True)


def test_tilde_is_the_home_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "code").mkdir(parents=True)
    config = load_config(
        {"mounts": [{"host": "~/code", "vm": "/srv/code"}]}, stack="dev", home=home, host_os="linux"
    )
    assert config.mounts[0].host == str(home / "code")


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ({"host": "missing", "vm": "/srv/a"}, "nexus:mounts[0].host", "does not exist"),
        ({"host": "a-file", "vm": "/srv/a"}, "nexus:mounts[0].host", "which is a file; allowed: a folder"),
        ({"host": "dir", "vm": "srv/a"}, "nexus:mounts[0].vm", "allowed: an absolute path"),
        ({"host": "dir", "vm": "/proc/x"}, "nexus:mounts[0].vm", "under /proc"),
        ({"host": "dir", "vm": "/sys"}, "nexus:mounts[0].vm", "under /sys"),
        ({"host": "dir", "vm": "/"}, "nexus:mounts[0].vm", "below /"),
        ({"host": "dir", "vm": "/srv/../etc"}, "nexus:mounts[0].vm", "without '..'"),
        ({"host": "dir", "vm": "/srv/a b"}, "nexus:mounts[0].vm", "without spaces"),
        ({"host": "dir", "vm": "/srv/a", "container": "/proc"}, "nexus:mounts[0].container", "under /proc"),
        (
            {"host": "dir", "vm": "/srv/a", "type": "nfs"},
            "nexus:mounts[0].type",
            "'auto', '9p', 'virtiofs', 'reverse-sshfs'",
        ),
        ({"host": "dir", "vm": "/srv/a", "size": 1}, "nexus:mounts[0].size", "unknown key"),
    ],
)
def test_each_refusal_names_the_key(tmp_path: Path, entry: dict[str, Any], key: str, words: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    message = refusal(tmp_path, [entry])
    assert key in message and words in message, message


def test_duplicate_and_nested_vm_paths_are_refused(tmp_path: Path) -> None:
    message = refusal(
        tmp_path, [{"host": str(tmp_path), "vm": "/srv/a"}, {"host": str(tmp_path), "vm": "/srv/a/"}]
    )
    assert "nexus:mounts[1].vm" in message and "the same VM path as nexus:mounts[0].vm" in message
    message = refusal(
        tmp_path, [{"host": str(tmp_path), "vm": "/srv"}, {"host": str(tmp_path), "vm": "/srv/a"}]
    )
    assert "nexus:mounts[1].vm" in message and "nested" in message


def test_a_container_path_needs_the_playground_and_a_path_of_its_own(tmp_path: Path) -> None:
    entry = {"host": str(tmp_path), "vm": "/srv/a", "container": "/work"}
    message = refusal(tmp_path, [entry], playground={"enabled": False})
    assert "nexus:mounts[0].container" in message and "nexus:playground.enabled is false" in message
    message = refusal(tmp_path, [entry], playground={"volumes": [{"source": "/data", "target": "/work"}]})
    assert "nexus:mounts[0].container" in message and "nexus:playground.volumes[0].target" in message


def test_auto_is_9p_on_linux_and_macos_hosts(tmp_path: Path) -> None:
    for host_os in ("linux", "darwin"):
        assert (
            load(tmp_path, [{"host": str(tmp_path), "vm": "/srv/a"}], host_os=host_os).mounts[0].type == "9p"
        )


def test_windows_host_config_picks_reverse_sshfs_and_refuses_9p_and_virtiofs(tmp_path: Path) -> None:
    entry = {"host": str(tmp_path), "vm": "/srv/a"}
    assert load(tmp_path, [entry], host_os="windows").mounts[0].type == "reverse-sshfs"
    for kind, words in (("9p", "QEMU on Windows has no 9p"), ("virtiofs", "Linux only")):
        message = refusal(tmp_path, [{**entry, "type": kind}], host_os="windows")
        assert "nexus:mounts[0].type" in message and words in message, message


def test_windows_host_sshfs_command_uses_openssh_paths() -> None:
    command = mounts.sshfs_command(Mount(r"C:\Users\me\my code", "/srv/code", "reverse-sshfs"), "windows", 0)
    assert "':/C:/Users/me/my code' /srv/code" in command
    assert mounts.SFTP_SERVER_CANDIDATES["windows"] == (r"C:\Windows\System32\OpenSSH\sftp-server.exe",)


def test_reverse_sshfs_has_no_qemu_device_and_no_fstab_line() -> None:
    item = Mount("/h/a", "/srv/a", "reverse-sshfs", read_only=True)
    assert mounts.device_argv((item,), [None]) == []
    assert "/srv/a" not in mounts.guest_script([item])
    assert mounts.sftp_server_argv("/usr/lib/openssh/sftp-server", item)[-1] == "-R"
    assert ",ro " in mounts.sshfs_command(item, "linux", 0)


def test_macos_host_config_refuses_virtiofs(tmp_path: Path) -> None:
    message = refusal(
        tmp_path, [{"host": str(tmp_path), "vm": "/srv/a", "type": "virtiofs"}], host_os="darwin"
    )
    assert "nexus:mounts[0].type" in message and "Linux only" in message


# --- QEMU's command line


def argv_of(items: tuple[Mount, ...], os_name: str = "linux", state: Path = Path("/s")) -> list[str]:
    machine = GuestMachine(name="vm", arch="x86_64", cpus=2, memory_mib=1024)
    network = NetworkConfig(bind_address="127.0.0.1", ssh_port=2222, forwards=())
    host = HostFacts(os=os_name, accelerator="tcg", qemu_binary="qemu-system-x86_64")
    return qemu_argv(machine, network, host, VmFiles.of(VmPaths(state)), items)


def test_9p_is_a_local_fsdev_with_security_model_none_and_read_only_when_asked() -> None:
    argv = argv_of((Mount("/h/a,b", "/srv/a", "9p"), Mount("/h/ro", "/srv/ro", "9p", read_only=True)))
    assert "-fsdev" in argv
    fsdevs = [argv[i + 1] for i, word in enumerate(argv) if word == "-fsdev"]
    assert fsdevs == [
        "local,id=fs0,path=/h/a,,b,security_model=none",
        "local,id=fs1,path=/h/ro,security_model=none,readonly=on",
    ]
    devices = [argv[i + 1] for i, word in enumerate(argv) if word == "-device"]
    assert "virtio-9p-pci,fsdev=fs0,mount_tag=nexus0" in devices
    assert "virtio-9p-pci,fsdev=fs1,mount_tag=nexus1" in devices
    assert "-numa" not in argv


def test_macos_host_argv_for_9p_is_the_same_fsdev() -> None:
    argv = argv_of((Mount("/Users/me/code", "/srv/code", "9p"),), os_name="darwin")
    assert "local,id=fs0,path=/Users/me/code,security_model=none" in argv


def test_virtiofs_shares_the_guest_memory_and_connects_to_its_virtiofsd_socket() -> None:
    argv = argv_of((Mount("/h/a", "/srv/a", "9p"), Mount("/h/b", "/srv/b", "virtiofs")))
    assert argv[argv.index("-object") + 1] == "memory-backend-memfd,id=mem,size=1024M,share=on"
    assert argv[argv.index("-numa") + 1] == "node,memdev=mem"
    assert argv[argv.index("-chardev") + 1] == "socket,id=vfs1,path=/s/vfs-1.sock"
    assert "vhost-user-fs-pci,chardev=vfs1,tag=nexus1" in argv


def test_no_mounts_no_extra_arguments() -> None:
    argv = argv_of(())
    assert not {"-fsdev", "-chardev", "-numa", "-object"} & set(argv)


def test_virtiofsd_argv_per_flavour() -> None:
    mount = Mount("/h/my dir", "/srv/a", "virtiofs", read_only=True)
    socket = PurePosixPath("/s/vfs-0.sock")
    assert mounts.virtiofsd_argv("virtiofsd", "rust", mount, socket, as_root=False) == [
        "virtiofsd",
        "--socket-path=/s/vfs-0.sock",
        "--shared-dir=/h/my dir",
        "--cache=auto",
        "--readonly",
        "--sandbox=none",
    ]
    assert mounts.virtiofsd_argv("/usr/lib/qemu/virtiofsd", "c", mount, socket, as_root=True) == [
        "/usr/lib/qemu/virtiofsd",
        "--socket-path=/s/vfs-0.sock",
        "-o",
        "source=/h/my dir",
        "-o",
        "cache=auto",
    ]


def test_windows_paths_stay_one_option_value() -> None:
    # Only for the argv builder: Windows hosts get no mount type yet (see the config test).
    (item,) = mounts.device_argv((Mount(str(PureWindowsPath(r"C:\a,b")), "/srv/a", "9p"),), [None])[1:2]
    assert item == r"local,id=fs0,path=C:\a,,b,security_model=none"


# --- the guest's side


def test_the_fstab_lines_mount_before_docker_and_never_block_the_boot() -> None:
    assert mounts.fstab_line(Mount("/h", "/srv/a", "9p", read_only=True), 0) == (
        "nexus0 /srv/a 9p trans=virtio,version=9p2000.L,msize=262144,cache=mmap,"
        "nofail,x-systemd.before=docker.service,ro 0 0"
    )
    assert mounts.fstab_line(Mount("/h", "/srv/b", "virtiofs"), 3) == (
        "nexus3 /srv/b virtiofs nofail,x-systemd.before=docker.service,rw 0 0"
    )


def run_fstab_part(script: str, fstab: Path) -> None:
    fstab_part = script.split("systemctl daemon-reload")[0].replace("/etc/fstab", str(fstab))
    subprocess.run(["sh", "-c", fstab_part], check=True, timeout=30)


def test_the_guest_script_replaces_only_its_own_fstab_block(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("LABEL=rootfs / ext4 defaults 0 1\n")
    run_fstab_part(
        mounts.guest_script([Mount("/h", "/srv/a", "9p"), Mount("/h", "/srv/b", "virtiofs")]), fstab
    )
    run_fstab_part(mounts.guest_script([Mount("/h", "/srv/c", "9p")]), fstab)
    lines = fstab.read_text().splitlines()
    assert lines[0] == "LABEL=rootfs / ext4 defaults 0 1"
    assert lines[1:] == [
        mounts.FSTAB_BEGIN,
        mounts.fstab_line(Mount("/h", "/srv/c", "9p"), 0),
        mounts.FSTAB_END,
    ]
    run_fstab_part(mounts.guest_script([]), fstab)
    assert fstab.read_text() == "LABEL=rootfs / ext4 defaults 0 1\n"


def test_the_guest_script_says_which_kernel_support_is_missing() -> None:
    script = mounts.guest_script([Mount("/h", "/srv/a", "9p")])
    assert "nexus:mounts[0]: the VM could not mount /srv/a" in script and "9pnet_virtio" in script


def test_the_mounts_go_to_qemu_vm_by_their_schema_names_and_back() -> None:
    items = (Mount("/h/a", "/srv/a", "9p", True, "/work"), Mount("/h/b", "/srv/b", "virtiofs"))
    props = mounts.as_props(items)
    assert props[0] == {"host": "/h/a", "vm": "/srv/a", "type": "9p", "readOnly": True, "container": "/work"}
    assert "container" not in props[1]
    assert mounts.from_props(props) == items


def seed_packages_of(config: Any) -> list[str]:
    """The packages the VM's cloud-init seed installs, as the seed resource renders them."""
    props = host_inputs.cloud_init_seed_inputs(config, "ssh-ed25519 AAAA test")
    document = yaml.safe_load(cloudinit.render_user_data(lifecycles.CloudInitSeed.spec(props)))
    return list(document.get("packages", []))


def test_a_reverse_sshfs_mount_makes_the_seed_install_sshfs_once(tmp_path: Path) -> None:
    entry = {"host": str(tmp_path), "vm": "/srv/a", "type": "reverse-sshfs"}
    packages = seed_packages_of(load(tmp_path, [entry], guest={"packages": ["sshfs", "htop"]}))
    assert packages.count("sshfs") == 1 and "htop" in packages
    assert "sshfs" in seed_packages_of(load(tmp_path, [entry]))
    assert "sshfs" not in seed_packages_of(load(tmp_path, [{**entry, "type": "9p"}]))


def test_a_guest_without_sshfs_is_told_which_mount_needs_it_and_how_to_install_it(tmp_path: Path) -> None:
    # A PATH with a shell's basics and no sshfs, as in a VM that never installed it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    item = Mount("/h/a", str(tmp_path / "mnt"), "reverse-sshfs")
    ran = subprocess.run(
        ["/bin/sh", "-c", mounts.sshfs_command(item, "linux", 2)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == mounts.NO_SSHFS_EXIT
    assert "nexus:mounts[2]: type reverse-sshfs needs sshfs in the VM" in ran.stderr
    assert "sudo apt-get install sshfs" in ran.stderr
    assert not (tmp_path / "mnt").exists(), "nothing is made before the check"

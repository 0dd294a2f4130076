"""`nexus:playground` and `nexus:innerVm`: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nexus_components.config import load_config
from nexus_components.core.errors import ConfigError
from nexus_components.guest.settings import (
    DEFAULT_CONTAINER_NAME,
    INNER_VM_SCHEMA,
    PLAYGROUND_SCHEMA,
    ImageSource,
    InnerImage,
    PublishedPort,
    Volume,
)

HOME = Path("/home/dev")


def load(raw: dict[str, Any], project_dir: Path = Path("/work/project"), home: Path = HOME) -> Any:
    return load_config(raw, stack="dev", home=home, project_dir=project_dir)


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(raw)
    return str(caught.value)


def test_defaults_follow_the_seed() -> None:
    config = load({})
    playground = config.playground
    assert playground.enabled and playground.name == DEFAULT_CONTAINER_NAME
    assert (playground.source.kind, playground.source.value) == ("reference", "ubuntu:24.04")
    # The default forwards (8080 -> 80, 8443 -> 443) reach the container.
    assert playground.ports == (PublishedPort(80, 80), PublishedPort(443, 443))
    assert playground.restart == "unless-stopped"
    inner = config.inner_vm
    assert not inner.enabled  # optional, as in the seed
    assert (inner.cpus, inner.memory_mib, inner.disk_size) == (1, 1024, "10G")


def test_full_playground_settings(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "rootfs.tar").write_bytes(b"a tarball")
    config = load(
        {
            "playground": {
                "name": "lab_1",
                "rootfsTarball": "images/rootfs.tar",
                "command": ["sleep", "infinity"],
                "env": {"GREETING": "it's $HOME"},
                "ports": [{"vm": 8000, "container": 80, "protocol": "tcp"}],
                "volumes": [
                    {"source": "/srv/data", "target": "/data", "readOnly": True},
                    {"source": "cache", "target": "/cache"},
                ],
                "restart": "always",
                "privileged": True,
                "devices": ["/dev/fuse"],
            }
        },
        project_dir=tmp_path,
    )
    playground = config.playground
    assert playground.source.value == str(tmp_path / "images" / "rootfs.tar")
    assert playground.source.key == "nexus:playground.rootfsTarball"
    assert playground.env == {"GREETING": "it's $HOME"}
    assert playground.volumes == (Volume("/srv/data", "/data", True), Volume("cache", "/cache", False))
    assert playground.volumes[0].is_bind and not playground.volumes[1].is_bind
    assert playground.devices == ("/dev/fuse",)


def test_home_relative_tarball(short_home: Path) -> None:
    (short_home / "images").mkdir()
    (short_home / "images" / "app.tar").write_bytes(b"a docker save archive")
    config = load({"playground": {"imageTarball": "~/images/app.tar"}}, home=short_home)
    assert config.playground.source == ImageSource(
        "image-tarball", str(short_home / "images" / "app.tar"), "nexus:playground.imageTarball"
    )


def source_error(raw_playground: dict[str, Any], project_dir: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load({"playground": raw_playground}, project_dir=project_dir)
    return str(caught.value)


def test_a_build_context_with_a_dockerfile_is_taken_as_an_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM ubuntu:24.04\n")
    config = load({"playground": {"buildContext": "app"}}, project_dir=tmp_path)
    assert config.playground.source == ImageSource(
        "build", str(tmp_path / "app"), "nexus:playground.buildContext"
    )


def test_a_missing_build_context_is_refused_naming_the_key(tmp_path: Path) -> None:
    message = source_error({"buildContext": "app"}, tmp_path)
    assert (
        f"nexus:playground.buildContext: got 'app' ({tmp_path / 'app'}), which does not exist; "
        "allowed: a directory on this machine with a Dockerfile in it"
    ) in message
    # A relative path is the project directory's: the hint says which one that is.
    assert f"a relative path is taken from the project directory, {tmp_path}" in message


def test_a_build_context_that_is_a_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM ubuntu:24.04\n")
    message = source_error({"buildContext": str(dockerfile)}, tmp_path)
    assert (
        f"nexus:playground.buildContext: got '{dockerfile}', which is a file, not a directory; "
        "allowed: a directory on this machine with a Dockerfile in it"
    ) in message
    assert "relative path" not in message


def test_a_build_context_without_a_dockerfile_is_refused_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Containerfile").write_text("FROM ubuntu:24.04\n")
    message = source_error({"buildContext": str(tmp_path / "app")}, tmp_path)
    assert (
        f"nexus:playground.buildContext: got '{tmp_path / 'app'}', which has no Dockerfile; "
        "allowed: a directory on this machine with a Dockerfile in it"
    ) in message


@pytest.mark.parametrize("key", ["rootfsTarball", "imageTarball"])
def test_a_missing_tarball_is_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    message = source_error({key: "~/images/gone.tar", "command": ["sleep", "infinity"]}, tmp_path)
    assert (
        f"nexus:playground.{key}: got '~/images/gone.tar' ({HOME / 'images' / 'gone.tar'}), "
        "which does not exist; allowed: a tarball file on this machine"
    ) in message
    assert "Traceback" not in message and "FileNotFoundError" not in message


@pytest.mark.parametrize("key", ["rootfsTarball", "imageTarball"])
def test_a_tarball_that_is_a_directory_is_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    (tmp_path / "rootfs").mkdir()
    message = source_error({key: str(tmp_path / "rootfs"), "command": ["sleep", "infinity"]}, tmp_path)
    assert (
        f"nexus:playground.{key}: got '{tmp_path / 'rootfs'}', which is a directory, not a file; "
        "allowed: a tarball file on this machine"
    ) in message


def test_a_disabled_playground_does_not_look_for_its_source(tmp_path: Path) -> None:
    # It never builds or uploads anything, so a stale path must not block the stack.
    config = load({"playground": {"enabled": False, "buildContext": "gone"}}, project_dir=tmp_path)
    assert config.playground.source.value == str(tmp_path / "gone")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"playground": {"image": "nginx", "buildContext": "app"}},
            "nexus:playground.image, nexus:playground.buildContext are all set; allowed: at most one",
        ),
        ({"playground": {"rootfsTarball": "/x.tar"}}, "nexus:playground.command: not set"),
        ({"playground": {"image": "Bad Image"}}, "nexus:playground.image: got 'Bad Image'"),
        (
            {"playground": {"restart": "sometimes"}},
            "nexus:playground.restart: got 'sometimes'; allowed: one of",
        ),
        ({"playground": {"env": {"1BAD": "x"}}}, "nexus:playground.env"),
        (
            {"playground": {"volumes": [{"source": "/a", "target": "rel"}]}},
            "nexus:playground.volumes[0].target",
        ),
        ({"playground": {"devices": ["/etc/passwd"]}}, "nexus:playground.devices[0]: got '/etc/passwd'"),
        (
            {"playground": {"ports": [{"vm": 80, "container": 80}, {"vm": 80, "container": 81}]}},
            "nexus:playground.ports[1].vm: got 80, a VM tcp port nexus:playground.ports[0].vm already "
            "publishes; allowed: a VM port nothing else in the VM listens on",
        ),
        (
            {"playground": {"enabled": False}, "innerVm": {"enabled": True}},
            "nexus:innerVm.enabled: got True; allowed: only with the playground container",
        ),
        ({"innerVm": {"enabled": True, "initrd": "/i.img"}}, "nexus:innerVm.initrd: got '/i.img' without"),
        (
            {"innerVm": {"enabled": True, "kernel": "/k", "iso": "/d.iso"}},
            "nexus:innerVm.kernel and nexus:innerVm.iso are both set",
        ),
        (
            {"innerVm": {"accelerator": "hvf"}},
            "nexus:innerVm.accelerator: got 'hvf'; allowed: one of 'auto', 'kvm'",
        ),
        ({"innerVm": {"kernel": "/boot/a,b"}}, "nexus:innerVm.kernel: got '/boot/a,b'"),
        ({"innerVm": {"memoryMiB": 16}}, "nexus:innerVm.memoryMiB: got 16; allowed: at least 64"),
        (
            {"innerVm": {"enabled": True}},
            "nexus:innerVm: enabled without a boot medium; allowed: exactly one boot medium: "
            "nexus:innerVm.image, nexus:innerVm.kernel, nexus:innerVm.iso",
        ),
        (
            {"innerVm": {"enabled": True, "image": {"url": "https://x.example/a.img"}, "iso": "/d.iso"}},
            "nexus:innerVm.image and nexus:innerVm.iso are both set "
            "(image: 'https://x.example/a.img', iso: '/d.iso'); allowed: exactly one boot medium",
        ),
        (
            {"innerVm": {"enabled": True, "image": {"url": "/a"}, "kernel": "/k", "iso": "/d.iso"}},
            "nexus:innerVm.image and nexus:innerVm.kernel and nexus:innerVm.iso are all set",
        ),
        (
            {"innerVm": {"image": {"url": "http://x/a b.img"}}},
            "nexus:innerVm.image.url: got 'http://x/a b.img'; allowed: an http:// or https:// URL",
        ),
        ({"innerVm": {"image": {"sha256": "ab" * 32}}}, "nexus:innerVm.image: 'url' is a required property"),
        ({"innerVm": {"image": {"url": "/a", "sha256": "xyz"}}}, "nexus:innerVm.image.sha256: got 'xyz'"),
        ({"innerVm": {"username": "Root"}}, "nexus:innerVm.username: got 'Root'; allowed: a Linux user name"),
        ({"innerVm": {"hostname": "-box"}}, "nexus:innerVm.hostname: got '-box'; allowed: a host name"),
        (
            {"playground": {"name": "-lab"}},
            "nexus:playground.name: got '-lab'; allowed: a container name: letters, digits, '_', '.' "
            "and '-', starting with a letter or digit, at most 63 characters",
        ),
    ],
)
def test_bad_guest_settings_name_the_key(raw: dict[str, Any], expected: str) -> None:
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"playground": {"name": "-lab"}},
        {"playground": {"image": "Bad Image"}},
        {"playground": {"buildContext": "a\nb"}},
        {"playground": {"env": {"1BAD": "x"}}},
        {"playground": {"volumes": [{"source": "a b", "target": "/x"}]}},
        {"playground": {"volumes": [{"source": "/a", "target": "rel"}]}},
        {"playground": {"devices": ["/etc/passwd"]}},
        {"innerVm": {"name": "Inner"}},
        {"innerVm": {"diskSize": "10GB"}},
        {"innerVm": {"kernel": "/boot/a,b"}},
        {"innerVm": {"kernelArgs": "console=ttyS0\n"}},
    ],
)
def test_what_is_allowed_is_said_in_words_not_as_a_regex(raw: dict[str, Any]) -> None:
    message = error_of(raw)
    assert "allowed: a string matching" not in message and "\\Z" not in message, message


def test_every_pattern_of_the_guest_schemas_says_in_words_what_it_allows() -> None:
    def patterns_without_words(schema: Any, where: str) -> list[str]:
        if isinstance(schema, dict):
            own = [where] if "pattern" in schema and not schema.get("description") else []
            return own + [
                found
                for key, value in schema.items()
                for found in patterns_without_words(value, f"{where}.{key}")
            ]
        return []

    assert patterns_without_words(PLAYGROUND_SCHEMA, "playground") == []
    assert patterns_without_words(INNER_VM_SCHEMA, "innerVm") == []


@pytest.mark.parametrize("network", [{}, {"sshPort": 2200}])
def test_publishing_on_the_vms_own_ssh_port_is_refused_naming_the_key(network: dict[str, Any]) -> None:
    # Whatever host port forwards to it, the VM's sshd listens on 22 and `docker run -p 22:...`
    # would fail `up` with "address already in use".
    message = error_of(
        {
            "network": network,
            "playground": {"ports": [{"vm": 80, "container": 80}, {"vm": 22, "container": 2222}]},
        }
    )
    assert (
        "nexus:playground.ports[1].vm: got 22, a VM tcp port the VM's sshd listens on "
        "(nexus:network.sshPort forwards to it); allowed: a VM port nothing else in the VM listens on"
    ) in message
    assert "next step: publish container port 2222 on another VM port" in message


def test_a_udp_port_beside_the_vms_sshd_is_allowed() -> None:
    ports = [{"vm": 22, "container": 22, "protocol": "udp"}, {"vm": 80, "container": 80, "protocol": "udp"}]
    config = load({"playground": {"ports": [*ports, {"vm": 80, "container": 80}]}})
    assert config.playground.ports == (
        PublishedPort(22, 22, "udp"),
        PublishedPort(80, 80, "udp"),
        PublishedPort(80, 80, "tcp"),
    )


def inner_vm_with(vm_memory: int, inner_memory: int, enabled: bool = True) -> dict[str, Any]:
    return {
        "vm": {"memoryMiB": vm_memory},
        "innerVm": {"enabled": enabled, "kernel": "/opt/k", "memoryMiB": inner_memory},
    }


@pytest.mark.parametrize(
    ("vm_memory", "inner_memory", "left"),
    [(2048, 4096, "nothing"), (2048, 2048, "nothing"), (2048, 1600, "448 MiB")],
)
def test_an_inner_vm_that_leaves_the_vm_too_little_memory_is_refused_naming_both_keys(
    vm_memory: int, inner_memory: int, left: str
) -> None:
    message = error_of(inner_vm_with(vm_memory, inner_memory))
    assert (
        f"nexus:innerVm.memoryMiB: got {inner_memory}, which leaves {left} of nexus:vm.memoryMiB "
        f"({vm_memory}) to the VM itself; allowed: at most nexus:vm.memoryMiB minus the 512 MiB "
        "the VM needs for itself, here 1536"
    ) in message
    assert (
        f"next step: lower nexus:innerVm.memoryMiB to 1536 or less, "
        f"or raise nexus:vm.memoryMiB to {inner_memory + 512} or more"
    ) in message


def test_a_vm_too_small_for_any_inner_vm_is_told_to_grow() -> None:
    message = error_of(inner_vm_with(512, 64))
    assert "nexus:innerVm.memoryMiB: got 64, which leaves 448 MiB of nexus:vm.memoryMiB (512)" in message
    assert "next step: raise nexus:vm.memoryMiB to 576 or more" in message


def test_an_inner_vm_that_leaves_the_vm_enough_memory_is_accepted() -> None:
    assert load(inner_vm_with(2048, 1536)).inner_vm.memory_mib == 1536
    # The defaults (4096 and 1024) fit; a disabled inner VM takes nothing.
    assert load({"innerVm": {"enabled": True, "kernel": "/opt/k"}}).inner_vm.memory_mib == 1024
    assert not load(inner_vm_with(512, 4096, enabled=False)).inner_vm.enabled


def test_inner_vm_settings() -> None:
    config = load(
        {
            "innerVm": {
                "enabled": True,
                "kernel": "/opt/k",
                "initrd": "/opt/i",
                "kernelArgs": "console=ttyS0 quiet",
                "forwards": [{"container": 2223, "guest": 22}],
                "accelerator": "tcg",
            }
        }
    )
    inner = config.inner_vm
    assert inner.enabled and inner.kernel == "/opt/k" and inner.accelerator == "tcg"
    assert inner.forwards[0].container == 2223


def test_inner_vm_cloud_image_settings() -> None:
    config = load(
        {
            "guest": {"username": "nexus"},
            "innerVm": {
                "enabled": True,
                "image": {"url": "images/debian 12.qcow2", "sha256": "AB" * 32},
                "forwards": [{"container": 2223, "guest": 22}],
            },
        }
    )
    inner = config.inner_vm
    # A relative host path is the project directory's; the digest is kept lower case.
    assert inner.image == InnerImage("/work/project/images/debian 12.qcow2", "ab" * 32)
    # The login user defaults to the VM's, the host name to the inner VM's name.
    assert (inner.username, inner.hostname, inner.guest_hostname) == ("nexus", "", "inner")
    home = load({"innerVm": {"enabled": True, "image": {"url": "~/a.img"}, "username": "alice"}})
    assert home.inner_vm.image == InnerImage("/home/dev/a.img", None)
    assert home.inner_vm.username == "alice"
    url = load({"innerVm": {"enabled": True, "image": {"url": "https://x.example/a.img"}, "hostname": "box"}})
    assert url.inner_vm.image == InnerImage("https://x.example/a.img")
    assert url.inner_vm.guest_hostname == "box"

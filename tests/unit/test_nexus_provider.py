"""The `nexus` provider plugin without the engine: its schema, its checks, its CRUD on real files.

The schema and the checks come from the typed input/output classes of each resource
(nexus_provider/host/*), so these tests hold every resource to the same rules: every
property described, enum-like inputs as enums, bad inputs refused by property.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import (
    CheckRequest,
    CreateRequest,
    DeleteRequest,
    DiffRequest,
    PropertyDiffKind,
)

from nexus_components.config import SCHEMA as CONFIG_SCHEMA
from nexus_components.config import load_config
from nexus_components.core.errors import ConfigError, VmError
from nexus_components.host.hostfacts import host_os
from nexus_components.host.paths import VmPaths
from nexus_components.host.qemu_argv import HostFacts, VmFiles, build_qemu_argv
from nexus_provider import NAME, VERSION
from nexus_provider.lab_args import config_document
from nexus_provider.provider import UNKNOWN_VALUE, NexusProvider, to_property_value
from nexus_provider.resources import COMPONENTS, DESCRIPTION, RESOURCES
from nexus_provider.server import nexus_error
from nexus_provider.spec import (
    UNKNOWN,
    ResourceSpec,
    TypedSpec,
    check_inputs,
    from_schema_names,
    package_schema,
    prop,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = package_schema(NAME, VERSION, DESCRIPTION, RESOURCES, COMPONENTS)
HOST_RESOURCES = ("StateDir", "BaseImage", "SshKey", "OverlayDisk", "CloudInitSeed", "QemuVm")
GUEST_RESOURCES = (
    "DockerDaemon",
    "ContainerPreflight",
    "ContainerPresence",
    "TarballImage",
    "InnerImageCopy",
    "InnerQemu",
    "ScriptFile",
)


def spec_of(token: str) -> ResourceSpec:
    return next(spec for spec in RESOURCES if spec.pulumi_type == token)


def test_the_plugin_has_the_projects_version() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^version = "(.*)"$', pyproject, re.MULTILINE)[1] == VERSION  # type: ignore[index]
    assert SCHEMA["name"] == "nexus" and SCHEMA["version"] == VERSION


def test_every_resource_is_in_the_schema_with_every_property_described() -> None:
    assert set(SCHEMA["resources"]) == {
        *(f"nexus:host:{name}" for name in HOST_RESOURCES),
        *(f"nexus:guest:{name}" for name in GUEST_RESOURCES),
        "nexus:index:Lab",
    }
    for token, resource in SCHEMA["resources"].items():
        assert resource["description"], token
        if not resource.get("isComponent"):
            assert set(resource["inputProperties"]) <= set(resource["properties"]), (
                "the state holds the inputs"
            )
        for name, prop_schema in {**resource["inputProperties"], **resource["properties"]}.items():
            assert prop_schema["description"], f"{token}.{name}"
    for token, type_schema in SCHEMA["types"].items():
        assert type_schema["description"], token
        for name, prop_schema in type_schema.get("properties", {}).items():
            assert prop_schema["description"], f"{token}.{name}"


def test_enum_like_inputs_are_enums_and_optional_inputs_are_not_required() -> None:
    vm = SCHEMA["resources"]["nexus:host:QemuVm"]
    assert vm["inputProperties"]["accelerator"]["$ref"] == "#/types/nexus:host:Accelerator"
    assert [value["value"] for value in SCHEMA["types"]["nexus:host:Accelerator"]["enum"]] == [
        "kvm",
        "hvf",
        "whpx",
        "tcg",
    ]
    seed = SCHEMA["resources"]["nexus:host:CloudInitSeed"]
    assert seed["inputProperties"]["arch"]["$ref"] == "#/types/nexus:host:Arch"
    assert vm["inputProperties"]["forwards"] == {
        "type": "array",
        "items": {"$ref": "#/types/nexus:host:PortForward"},
        "description": vm["inputProperties"]["forwards"]["description"],
    }
    assert SCHEMA["types"]["nexus:host:PortForward"]["properties"]["protocol"]["$ref"] == (
        "#/types/nexus:host:Protocol"
    )
    assert vm["inputProperties"]["bindAddress"]["$ref"] == "#/types/nexus:host:BindAddress"
    image = SCHEMA["resources"]["nexus:host:BaseImage"]
    assert "sha256" not in image["requiredInputs"] and "url" in image["requiredInputs"]
    assert "memoryMib" in vm["requiredInputs"] and "firmwareCode" not in vm["requiredInputs"]
    assert image["properties"]["virtualSize"]["type"] == "integer"
    assert seed["inputProperties"]["userData"]["additionalProperties"] == {"$ref": "pulumi.json#/Any"}


def test_enum_members_are_named_in_pascal_case_for_the_code_generators() -> None:
    """Each SDK spells a member from its schema name: TypeScript `AcceleratorChoice.Auto`,
    Python `AcceleratorChoice.AUTO` (the generated SDKs themselves: tests/engine)."""
    names = {
        token: [value["name"] for value in SCHEMA["types"][token]["enum"]]
        for token in SCHEMA["types"]
        if "enum" in SCHEMA["types"][token]
    }
    assert names["nexus:index:AcceleratorChoice"] == ["Auto", "Kvm", "Hvf", "Whpx", "Tcg"]
    assert names["nexus:host:Arch"] == ["X86_64", "Aarch64"]
    assert names["nexus:host:BindAddress"] == ["Loopback", "AllInterfaces"]
    assert names["nexus:host:Protocol"] == ["Tcp", "Udp"]


def enum_values(token: str) -> list[str]:
    return [value["value"] for value in SCHEMA["types"][token]["enum"]]


def test_enums_allow_what_the_stack_config_allows() -> None:
    vm_settings = CONFIG_SCHEMA["properties"]["vm"]["properties"]
    network_settings = CONFIG_SCHEMA["properties"]["network"]["properties"]
    assert enum_values("nexus:host:Arch") == vm_settings["arch"]["enum"]
    # The resource takes the accelerator `auto` resolved to.
    assert enum_values("nexus:host:Accelerator") == [
        a for a in vm_settings["accelerator"]["enum"] if a != "auto"
    ]
    assert enum_values("nexus:host:BindAddress") == network_settings["bindAddress"]["enum"]
    forward = network_settings["forwards"]["items"]["properties"]
    assert enum_values("nexus:host:Protocol") == forward["protocol"]["enum"]


def test_a_property_without_a_description_is_refused_when_the_schema_is_made() -> None:
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        name: str = dataclasses.field()

    spec = dataclasses.replace(spec_of("nexus:host:StateDir"), inputs=Undocumented)
    with pytest.raises(ValueError, match=r"Undocumented.name has no description"):
        package_schema(NAME, VERSION, DESCRIPTION, [spec])
    with pytest.raises(ValueError, match="a pattern needs its rule"):
        prop("x", pattern="[a-z]+")


def vm_inputs(**changes: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "name": "lab",
        "stateDir": "/tmp/lab",
        "arch": "x86_64",
        "accelerator": "tcg",
        "cpus": 2.0,
        "memoryMib": 1024.0,
        "bindAddress": "127.0.0.1",
        "sshPort": 2222.0,
        "forwards": [{"host": 8080.0, "guest": 80.0, "protocol": "tcp"}],
        "username": "nexus",
        "privateKey": "/tmp/lab/ssh-key",
        "instanceId": "nexus-1",
        "overlayId": "disk@1",
        "bootTimeoutSeconds": 900.0,
    }
    inputs.update(changes)
    return inputs


def reasons(spec: TypedSpec, inputs: dict[str, Any]) -> dict[str, str]:
    return {failure.property: failure.reason for failure in check_inputs(spec, inputs)}


def test_check_refuses_bad_inputs_naming_the_property_and_what_is_allowed() -> None:
    vm = spec_of("nexus:host:QemuVm")
    assert reasons(vm, vm_inputs()) == {}
    assert reasons(vm, vm_inputs(accelerator="kvmm")) == {
        "accelerator": "got 'kvmm'; allowed: one of kvm, hvf, whpx, tcg"
    }
    assert reasons(vm, vm_inputs(memoryMib=64.0)) == {"memoryMib": "got 64; allowed: at least 512"}
    assert reasons(vm, vm_inputs(cpus=1.5)) == {"cpus": "got 1.5; allowed: a whole number"}
    assert reasons(vm, vm_inputs(sshPort="22")) == {"sshPort": "got '22'; allowed: a whole number"}
    assert reasons(vm, vm_inputs(stateDir="lab")) == {"stateDir": "got 'lab'; allowed: an absolute path"}
    assert reasons(vm, vm_inputs(forwards=[{"host": 70000.0, "guest": 80.0, "protocol": "sctp"}])) == {
        "forwards[0].host": "got 70000; allowed: at most 65535",
        "forwards[0].protocol": "got 'sctp'; allowed: one of tcp, udp",
    }
    missing = vm_inputs()
    del missing["forwards"]
    assert reasons(vm, missing) == {
        "forwards": "missing; allowed: a list of an object with host, guest, protocol"
    }
    assert reasons(vm, vm_inputs(memoryMiB=1024.0))["memoryMiB"].startswith(
        "not a property of QemuVmArgs; allowed: name, stateDir, arch"
    )
    assert reasons(vm, vm_inputs(argv=["qemu-system-x86_64"]))["argv"].startswith("not a property")
    assert reasons(vm, vm_inputs(machine="q35,accel=kvm")) == {
        "machine": "got 'q35,accel=kvm'; allowed: a QEMU name: letters, digits, '.', '_', '+' and '-', "
        "starting with a letter or digit"
    }
    assert reasons(vm, vm_inputs(arch="aarch64")) == {
        "firmwareCode": "missing while arch is aarch64; allowed: the UEFI code image's path"
    }
    image = spec_of("nexus:host:BaseImage")
    assert reasons(
        image,
        {"url": "/i.qcow2", "sha256": "ABC", "cacheDir": "/c", "diskSize": "20GB", "qemuImg": "qemu-img"},
    ) == {
        "sha256": "got 'ABC'; allowed: 64 lower-case hex digits",
        "diskSize": "got '20GB'; allowed: a size such as 20G: a whole number (up to 6 digits) and M, G or T",
    }


def test_the_vm_command_line_is_built_from_typed_inputs_by_the_reference_programs_function() -> None:
    """Same inputs, same argv as nexus_components.host.qemu_argv gives the reference program."""
    vm = spec_of("nexus:host:QemuVm")
    props = vm.derive(from_schema_names(vm, vm_inputs(bindAddress="0.0.0.0", cpuModel="max")))
    config = load_config(
        {
            "vm": {"name": "lab", "accelerator": "tcg", "cpus": 2, "memoryMiB": 1024, "cpuModel": "max"},
            "network": {"bindAddress": "0.0.0.0", "sshPort": 2222, "forwards": [{"host": 8080, "guest": 80}]},
            "paths": {"stateDir": "/tmp/lab"},
        },
        stack="unit",
        home=Path("/home/unit"),
    )
    host = HostFacts(os=host_os(), accelerator="tcg", qemu_binary="qemu-system-x86_64")
    assert props["argv"] == build_qemu_argv(config, host, VmFiles.of(VmPaths(Path("/tmp/lab"))))
    assert props["ssh_host"] == "127.0.0.1"
    assert "-smp" in props["argv"] and props["argv"][props["argv"].index("-smp") + 1] == "2"
    unknown_port = vm.derive(from_schema_names(vm, vm_inputs(sshPort=UNKNOWN)))
    assert unknown_port["argv"] is UNKNOWN


def test_unknown_inputs_pass_check_and_rules_across_properties_run_on_known_ones() -> None:
    vm = spec_of("nexus:host:QemuVm")
    assert reasons(vm, vm_inputs(privateKey=UNKNOWN, instanceId=UNKNOWN)) == {}
    key = spec_of("nexus:host:SshKey")
    half = {"stateDir": "/s", "comment": "c", "privateKeyFile": "/k/id", "publicKeyFile": None}
    assert reasons(key, half) == {
        "publicKeyFile": "missing while privateKeyFile is set; allowed: both key files, or neither"
    }
    assert reasons(key, {**half, "publicKeyFile": UNKNOWN}) == {}


def values(inputs: dict[str, Any]) -> dict[str, PropertyValue]:
    return {key: to_property_value(value) for key, value in inputs.items()}


def urn(token: str) -> str:
    return f"urn:pulumi:unit::project::{token}::lab"


def test_the_provider_checks_creates_and_deletes_through_the_shared_lifecycle(tmp_path: Path) -> None:
    provider = NexusProvider()
    state_dir = tmp_path / "a" / "state"
    inputs = values({"stateDir": str(state_dir), "stack": "unit"})
    token = urn("nexus:host:StateDir")

    refused = asyncio.run(provider.check(CheckRequest(token, {}, values({"stack": "unit"}), b"")))
    assert [(f.property, f.reason) for f in refused.failures or []] == [
        ("stateDir", "missing; allowed: a string")
    ]

    preview = asyncio.run(provider.create(CreateRequest(token, inputs, 60, preview=True)))
    assert preview.properties["createdDirs"] == UNKNOWN_VALUE
    assert not state_dir.exists(), "a preview touches nothing"

    made = asyncio.run(provider.create(CreateRequest(token, inputs, 60, preview=False)))
    assert made.resource_id == str(state_dir) and state_dir.is_dir()
    created = made.properties["createdDirs"].value
    assert [item.value for item in created] == [str(tmp_path / "a"), str(state_dir)]  # type: ignore[union-attr]

    asyncio.run(provider.delete(DeleteRequest(token, made.resource_id, made.properties, 60)))
    assert list(tmp_path.iterdir()) == []


def test_the_provider_diff_refuses_shrinking_and_names_what_replaces(tmp_path: Path) -> None:
    provider = NexusProvider()
    token = urn("nexus:host:OverlayDisk")
    olds = {
        "stateDir": str(tmp_path),
        "basePath": "/base.qcow2",
        "baseDigest": "a" * 64,
        "diskSize": "2G",
        "qemuImg": "qemu-img",
        "sizeBytes": float(2 << 30),
    }
    news = {key: value for key, value in olds.items() if key != "sizeBytes"}
    with pytest.raises(VmError, match="shrinking the disk from 2G to 1G is refused"):
        asyncio.run(
            provider.diff(DiffRequest(token, "disk@1", values(olds), values({**news, "diskSize": "1G"}), []))
        )
    new_base = asyncio.run(
        provider.diff(
            DiffRequest(token, "disk@1", values(olds), values({**news, "baseDigest": "b" * 64}), [])
        )
    )
    # The disk file is not there either: both replace it, deleting the old one first.
    assert new_base.changes and new_base.replaces == ["baseDigest", "path"] and new_base.delete_before_replace
    assert new_base.detailed_diff["baseDigest"].kind == PropertyDiffKind.UPDATE_REPLACE


def test_our_error_is_found_behind_the_sdks_wrapper() -> None:
    try:
        try:
            raise VmError("nexus:network.sshPort: host port 2222 is already in use")
        except VmError as error:
            raise Exception(f"{error}:\n  File ...") from None
    except Exception as wrapped:
        assert wrapped.__cause__ is None
        assert str(nexus_error(wrapped)) == "nexus:network.sshPort: host port 2222 is already in use"
    assert nexus_error(RuntimeError("a bug")) is None


def test_the_lab_is_a_component_in_the_schema_whose_settings_reuse_the_host_types() -> None:
    lab = SCHEMA["resources"]["nexus:index:Lab"]
    assert lab["isComponent"] is True and lab["requiredInputs"] == []
    assert set(lab["inputProperties"]) == {
        "image",
        "vm",
        "network",
        "guest",
        "paths",
        "playground",
        "innerVm",
        "mounts",
        "host",
    }
    assert {"sshCommand", "sshPort", "privateKeyPath", "vmPid", "stateDir"} <= set(lab["properties"])
    assert "dockerVersion" not in lab["required"] and "vmReadySeconds" in lab["required"]
    vm = SCHEMA["types"]["nexus:index:LabVm"]["properties"]
    assert vm["arch"]["$ref"] == "#/types/nexus:host:Arch", "one Arch type, where it was declared first"
    assert (
        enum_values("nexus:index:AcceleratorChoice")
        == CONFIG_SCHEMA["properties"]["vm"]["properties"]["accelerator"]["enum"]
    )
    forwards = SCHEMA["types"]["nexus:index:LabNetwork"]["properties"]["forwards"]
    assert forwards["items"] == {"$ref": "#/types/nexus:index:LabPortForward"}
    # As the stack setting has it: the protocol may be left out (tcp), as it may not be for QemuVm.
    lab_forward = SCHEMA["types"]["nexus:index:LabPortForward"]
    assert lab_forward["properties"]["protocol"]["$ref"] == "#/types/nexus:host:Protocol"
    assert set(lab_forward.get("required", [])) == {"host", "guest"}


def test_the_labs_arguments_are_checked_by_property_and_become_the_stack_configuration() -> None:
    lab = next(spec for spec in COMPONENTS if spec.pulumi_type == "nexus:index:Lab")
    assert reasons(lab, {"vm": {"memoryMib": 64.0, "accelerator": "fast"}, "paths": {"stateDir": "a,b"}}) == {
        "vm.memoryMib": "got 64; allowed: at least 512",
        "vm.accelerator": "got 'fast'; allowed: one of auto, kvm, hvf, whpx, tcg",
        "paths.stateDir": "got 'a,b'; allowed: a file name or path without commas or control characters",
    }
    assert reasons(lab, {"guest": {"packages": ["curl", "Bad Name"]}}) == {
        "guest.packages[1]": "got 'Bad Name'; allowed: a package name "
        "(lowercase letters, digits and + . : = ~ -), optionally with =version"
    }
    props = from_schema_names(
        lab, {"vm": {"memoryMib": 1024.0, "machine": None}, "network": {"forwards": []}}
    )
    document = config_document({**props, "image": None})
    assert document == {"vm": {"memoryMiB": 1024.0}, "network": {"forwards": []}}
    config = load_config(document, stack="unit", home=Path("/home/unit"))
    assert config.vm.memory_mib == 1024 and config.network.forwards == () and config.vm.cpus == 2


def test_the_provider_takes_the_nexus_stack_settings_handed_to_it_as_they_are() -> None:
    """Pulumi hands a package's config namespace to its default provider: the reference program's
    `nexus:vm`, `nexus:network`... are the program's settings, not the provider's."""
    settings = values({"vm": '{"memoryMiB": 2048}', "network": {"sshPort": 2222.0}, "version": "0.1.0"})
    checked = asyncio.run(NexusProvider().check_config(CheckRequest("urn:provider", {}, settings, b"")))
    assert not checked.failures and checked.inputs == settings


# --------------------------------------------------------------------------- the guest layers


def test_the_labs_guest_arguments_have_the_shape_of_the_stack_settings() -> None:
    """Every key of nexus:playground and nexus:innerVm is a property of the Lab's arguments
    (memoryMiB spelt memoryMib, as in vm), and enum-like ones allow what the settings allow."""
    lab = SCHEMA["resources"]["nexus:index:Lab"]["inputProperties"]
    assert lab["playground"]["$ref"] == "#/types/nexus:index:LabPlayground"
    assert lab["innerVm"]["$ref"] == "#/types/nexus:index:LabInnerVm"
    for section, token in (("playground", "LabPlayground"), ("innerVm", "LabInnerVm")):
        settings = CONFIG_SCHEMA["properties"][section]["properties"]
        typed = SCHEMA["types"][f"nexus:index:{token}"]["properties"]
        assert {key.replace("MiB", "Mib") for key in settings} == set(typed), section
    playground = CONFIG_SCHEMA["properties"]["playground"]["properties"]
    assert enum_values("nexus:index:RestartPolicy") == playground["restart"]["enum"]
    inner = CONFIG_SCHEMA["properties"]["innerVm"]["properties"]
    assert enum_values("nexus:guest:InnerAccelerator") == inner["accelerator"]["enum"]
    assert set(SCHEMA["types"]["nexus:index:LabPublishedPort"]["properties"]) == set(
        playground["ports"]["items"]["properties"]
    )
    assert set(SCHEMA["types"]["nexus:index:LabVolume"]["properties"]) == set(
        playground["volumes"]["items"]["properties"]
    )


def test_the_labs_guest_arguments_are_refused_by_property_with_the_settings_words() -> None:
    lab = next(spec for spec in COMPONENTS if spec.pulumi_type == "nexus:index:Lab")
    assert reasons(
        lab,
        {
            "playground": {
                "name": "-bad",
                "restart": "sometimes",
                "ports": [{"vm": 0.0, "container": 80.0}],
                "devices": ["/tmp/x"],
            },
            "innerVm": {"memoryMib": 8.0, "accelerator": "hvf", "forwards": [{"container": 2223.0}]},
        },
    ) == {
        "playground.name": "got '-bad'; allowed: a container name: letters, digits, '_', '.' and '-', "
        "starting with a letter or digit, at most 63 characters",
        "playground.restart": "got 'sometimes'; allowed: one of no, always, unless-stopped, on-failure",
        "playground.ports[0].vm": "got 0; allowed: at least 1",
        "playground.devices[0]": "got '/tmp/x'; allowed: a device path under /dev/, without ':', ',' or "
        "control characters",
        "innerVm.memoryMib": "got 8; allowed: at least 64",
        "innerVm.accelerator": "got 'hvf'; allowed: one of auto, kvm, tcg",
        "innerVm.forwards[0].guest": "missing; allowed: a whole number",
    }


def test_the_labs_guest_arguments_get_the_stack_configurations_defaults_and_cross_checks() -> None:
    lab = next(spec for spec in COMPONENTS if spec.pulumi_type == "nexus:index:Lab")
    props = from_schema_names(
        lab,
        {
            "playground": {"ports": [{"vm": 8080.0, "container": 80.0}], "readOnly": None},
            "innerVm": {"enabled": True, "memoryMib": 256.0, "kernel": "/opt/vmlinuz"},
        },
    )
    document = config_document(props)
    assert document["innerVm"] == {"enabled": True, "memoryMiB": 256.0, "kernel": "/opt/vmlinuz"}
    config = load_config(document, stack="unit", home=Path("/home/unit"))
    assert config.playground.enabled and config.playground.name == "nexus-playground"
    assert config.playground.source.value == "ubuntu:24.04" and config.inner_vm.memory_mib == 256
    defaults = load_config(config_document({}), stack="unit", home=Path("/home/unit"))
    assert defaults.playground.enabled and not defaults.inner_vm.enabled
    with pytest.raises(ConfigError, match="nexus:innerVm: enabled without a boot medium"):
        load_config(config_document({"inner_vm": {"enabled": True}}), stack="unit", home=Path("/home/unit"))


def access(**changes: Any) -> dict[str, Any]:
    return {
        "sshHost": "127.0.0.1",
        "sshPort": 2222.0,
        "username": "nexus",
        "privateKey": "/tmp/lab/ssh-key",
        **changes,
    }


def inner_qemu_inputs(**changes: Any) -> dict[str, Any]:
    return {
        **access(),
        "container": "nexus-playground",
        "containerId": "c" * 64,
        "name": "inner",
        "cpus": 1.0,
        "memoryMib": 256.0,
        "diskSize": "10G",
        "accelerator": "auto",
        "kernel": "/opt/vmlinuz",
        "kernelArgs": "console=ttyS0",
        "username": "ubuntu",
        "forwards": [],
        "powerdownTimeoutSeconds": 60.0,
        "bootTimeoutSeconds": 300.0,
        **changes,
    }


def test_guest_resources_refuse_bad_inputs_naming_the_property_and_what_is_allowed() -> None:
    daemon = spec_of("nexus:guest:DockerDaemon")
    good = {
        **access(),
        "dockerHost": "ssh://nexus@127.0.0.1:2222",
        "vmPid": 4242.0,
        "instanceId": "nexus-1",
        "timeoutSeconds": 900.0,
    }
    assert reasons(daemon, good) == {}
    assert reasons(
        daemon, {**good, "dockerHost": "tcp://vm:2375", "timeoutSeconds": 5.0, "sshPort": 0.0}
    ) == {
        "dockerHost": "got 'tcp://vm:2375'; allowed: ssh://<login user>@<address>:<port>, the VM's Docker "
        "over SSH",
        "timeoutSeconds": "got 5; allowed: at least 30",
        "sshPort": "got 0; allowed: at least 1",
    }
    preflight = spec_of("nexus:guest:ContainerPreflight")
    assert reasons(
        preflight,
        {
            **access(),
            "container": "nexus-playground",
            "dockerHost": "ssh://nexus@127.0.0.1:2222",
            "ports": [{"vm": 80.0, "protocol": "sctp", "key": "nexus:playground.ports[0].vm"}],
            "devices": [{"path": "fuse", "key": "nexus:playground.devices[0]"}],
        },
    ) == {
        "ports[0].protocol": "got 'sctp'; allowed: one of tcp, udp",
        "devices[0].path": "got 'fuse'; allowed: a device path under /dev/, without ':', ',' or control "
        "characters",
    }
    tarball = spec_of("nexus:guest:TarballImage")
    assert reasons(
        tarball,
        {
            **access(),
            "container": "nexus-playground",
            "kind": "zip",
            "key": "nexus:playground.imageTarball",
            "path": "image.tar",
            "digest": "ab" * 32,
            "diskId": "disk@1",
        },
    ) == {
        "kind": "got 'zip'; allowed: one of image-tarball, rootfs-tarball",
        "path": "got 'image.tar'; allowed: an absolute path",
    }
    inner = spec_of("nexus:guest:InnerQemu")
    assert reasons(inner, inner_qemu_inputs()) == {}
    assert reasons(inner, inner_qemu_inputs(iso="/x.iso")) == {
        "iso": "also kernel and iso; allowed: exactly one boot medium: bootImage, kernel, iso"
    }
    assert reasons(inner, inner_qemu_inputs(kernel=None, initrd="/initrd")) == {
        "bootImage": "none set; allowed: exactly one boot medium: bootImage, kernel, iso",
        "initrd": "got '/initrd' without kernel; allowed: an initrd with a kernel",
    }
    assert reasons(inner, inner_qemu_inputs(memoryMib=8.0, accelerator="hvf")) == {
        "memoryMib": "got 8; allowed: at least 64",
        "accelerator": "got 'hvf'; allowed: one of auto, kvm, tcg",
    }


def test_the_provider_writes_and_removes_a_guest_script_through_its_lifecycle(tmp_path: Path) -> None:
    provider = NexusProvider()
    token = "urn:pulumi:unit::project::nexus:guest:GuestLayers$nexus:guest:ScriptFile::shell"
    script = tmp_path / "connect-playground.sh"
    inputs = values({"path": str(script), "content": "#!/bin/sh\n"})
    made = asyncio.run(provider.create(CreateRequest(token, inputs, 60, preview=False)))
    assert made.resource_id == str(script) and script.read_text() == "#!/bin/sh\n"
    script.unlink()
    drift = asyncio.run(provider.diff(DiffRequest(token, made.resource_id, made.properties, inputs, [])))
    assert drift.changes and not drift.replaces
    asyncio.run(provider.delete(DeleteRequest(token, made.resource_id, made.properties, 60)))


def test_inner_shares_pass_both_resources_checks_and_come_back_from_the_inner_qemus_inputs(
    tmp_path: Path,
) -> None:
    """nexus:mounts with innerVm: QemuVm's mounts (no innerVm there) and InnerQemu's shares, as
    the Lab declares them, pass the provider's checks; the inner VM's settings read them back."""
    from nexus_components.guest import lifecycles
    from nexus_components.host import mounts
    from nexus_provider.guest_layers import inner_qemu_settings

    (tmp_path / "code").mkdir()
    config = load_config(
        {
            "mounts": [
                {
                    "host": "code",
                    "vm": "/srv/code",
                    "container": "/work",
                    "innerVm": "/mnt/code",
                    "readOnly": True,
                }
            ],
            "innerVm": {"enabled": True, "kernel": "/opt/vmlinuz", "memoryMiB": 256},
        },
        stack="dev",
        home=tmp_path,
        project_dir=tmp_path,
        host_os="linux",
    )
    assert reasons(spec_of("nexus:host:QemuVm"), vm_inputs(mounts=mounts.as_props(config.mounts))) == {}
    inner = spec_of("nexus:guest:InnerQemu")
    shares = inner_qemu_settings(config.inner_vm)["shares"]
    assert reasons(inner, inner_qemu_inputs(shares=shares)) == {}
    assert reasons(inner, inner_qemu_inputs(shares=[{**shares[0], "container": "/x"}]))["shares[0].container"]
    props = inner.derive(from_schema_names(inner, inner_qemu_inputs(shares=shares)))
    assert lifecycles.inner_vm_config(props).shares == config.inner_vm.shares
    # Without shares the input is left out, so an existing inner VM sees no change.
    assert "shares" not in inner_qemu_settings(dataclasses.replace(config.inner_vm, shares=()))

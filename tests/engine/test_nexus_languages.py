"""The README's TypeScript and YAML examples declare a lab with the `nexus` package.

Each example, copied outside the repository, adds the package from this checkout
(`pulumi package add`), previews a host lab (the Lab and its typed host resources), and is
refused a bad input at preview with the provider's own message naming the property. The
TypeScript example type-checks against the SDK `package add` generated, and its types are
real: a mistyped argument fails `tsc`. No VM boots here (tests/e2e/test_nexus_lab_typescript.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nexus_components.host.paths import VmPaths
from tests.support.language_examples import AMBIENT_HOST_WARNING, EXAMPLES, Example, tsc
from tests.support.nexus_consumer import assert_no_traceback, free_port, output_of
from tests.support.pulumi_cli import REPO

pytestmark = pytest.mark.engine

LAB_RESOURCES = (
    "nexus:index:Lab",
    *(
        f"nexus:host:{name}"
        for name in ("BaseImage", "StateDir", "SshKey", "OverlayDisk", "CloudInitSeed", "QemuVm")
    ),
)
REFUSED = "property vm.memoryMib with value 64 has a problem: got 64; allowed: at least 512"


def pins() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / "toolchain" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_the_examples_and_language_hosts_use_the_pinned_versions() -> None:
    pinned = pins()
    package = json.loads((EXAMPLES / "typescript" / "package.json").read_text())
    assert package["dependencies"]["@pulumi/pulumi"] == pinned["NODEJS_SDK_VERSION"]
    # Both hosts are built against the same pkg/v3 and sdk/v3 (the second build reuses the first's).
    for host in ("nodejs-host", "yaml-host"):
        host_mod = (REPO / "toolchain" / host / "go.mod").read_text()
        for module in ("pkg", "sdk"):
            assert f"github.com/pulumi/pulumi/{module}/v3 v{pinned['NODEJS_HOST_VERSION']}" in host_mod, host
    yaml_mod = (REPO / "toolchain" / "yaml-host" / "go.mod").read_text()
    assert f"github.com/pulumi/pulumi-yaml v{pinned['YAML_HOST_VERSION']}\n" in yaml_mod


@pytest.mark.parametrize("language", ["typescript", "yaml"])
def test_the_example_previews_a_host_lab_and_is_refused_a_bad_input_by_property(
    language: str, request: pytest.FixtureRequest, tmp_path: Path, home: Path
) -> None:
    example: Example = request.getfixturevalue(f"{language}_example")
    print(f"{language} example prepared: {example.timings}")
    cli = example.stack(tmp_path, home, f"preview-{language}", {"sshPort": str(free_port())})

    preview = cli.preview()
    output = output_of(preview)
    # The stack, the Lab, its six host resources and, since the guest's packages are installed
    # by default, Docker's readiness in the VM (the guest layers' component, Docker's, its daemon);
    # the playground and the inner VM are opt-in.
    assert "+ 11 to create" in preview.stdout, output
    assert re.search(r"^ *\+ nexus:guest:DockerDaemon: \(create\)$", preview.stdout, re.MULTILINE), output
    assert "nexus:guest:ContainerPresence" not in preview.stdout, output
    for token in LAB_RESOURCES:
        assert re.search(rf"^ *\+ {token}: \(create\)$", preview.stdout, re.MULTILINE), (
            f"{token} not previewed:\n{output}"
        )
    assert AMBIENT_HOST_WARNING not in output, "the language host is not beside the CLI"
    assert not (home / ".nexus-nested-vm").exists() and not (home / ".cache").exists(), (
        "preview makes nothing"
    )

    cli.set_config(f"{example.name()}:memoryMib", "64")
    refused = cli.run("preview", *cli.stack_args(), check=False)
    output = output_of(refused)
    assert refused.returncode != 0
    assert REFUSED in output, output
    assert_no_traceback(output)
    assert not VmPaths(home / ".nexus-nested-vm" / "stacks" / cli.stack).state_dir.exists()


def test_the_typescript_example_type_checks_against_the_generated_sdk(typescript_example: Example) -> None:
    project = typescript_example.project
    checked = tsc(project)
    assert checked.returncode == 0, output_of(checked)

    # The SDK's types are real, not `any`: a mistyped accelerator or memory size is refused.
    program = (project / "index.ts").read_text()
    mistyped = program.replace("nexus.AcceleratorChoice.Auto", '"warp"').replace(
        'config.getNumber("memoryMib") ?? 4096', '"4096"'
    )
    assert mistyped.count('"warp"') == 1 and mistyped.count('"4096"') == 1
    probe = {
        "mistyped.ts": mistyped,
        "tsconfig.mistyped.json": '{"extends": "./tsconfig.json", "files": ["mistyped.ts"]}',
    }
    try:
        for name, text in probe.items():
            (project / name).write_text(text)
        refused = tsc(project, "--project", "tsconfig.mistyped.json")
    finally:
        for name in probe:
            (project / name).unlink()
    output = output_of(refused)
    assert refused.returncode != 0
    assert "Type '\"warp\"' is not assignable to type 'Input<AcceleratorChoice | undefined>'" in output, (
        output
    )
    assert "Type 'string' is not assignable to type 'Input<number | undefined>'" in output, output

"""Run-wide reporting for the test tiers, and the fixtures several tiers share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.support.blank_image import make_blank_image
from tests.support.language_examples import Example, ensure_language_hosts, prepare_example, short_home
from tests.support.nexus_consumer import make_pulumi_home
from tests.support.pulumi_cli import HEALS

# End-to-end modules by the test image they boot, in the order tests.support.prebuild builds
# those images in the background on a full run: the x86_64 image's tests first, then the
# generic-kernel image's, the guest-layers image's, the arm64 image's last (built through
# qemu-user, it takes longest).
# Each image gets the run time of the modules before it to finish building.
# The modules that need the Node.js and YAML language hosts (scripts/setup --langs, which
# scripts/test also runs in the background) come after the x86_64 image's, for the same reason.
LATER_MODULES = {
    "test_setup.py": 0.5,
    "test_nexus_languages.py": 0.5,
    "test_nexus_lab_typescript.py": 0.5,
    "test_ninep.py": 0.75,  # the generic-kernel image, built after the x86_64 one
    "test_guest_layers.py": 1,
    "test_mounts.py": 1,  # the guest-layers image too
    "test_remote_guest.py": 1,  # and here
    "test_inner_vm_image.py": 1,
    "test_arm64.py": 2,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: LATER_MODULES.get(item.path.name, 0))  # a stable sort keeps the rest


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """How many ups were run a second time to heal a VM that hung (each step at most once)."""
    terminalreporter.section("VM heals")
    terminalreporter.write_line(f"{len(HEALS)} up(s) healed a hung VM by running once more")
    for heal in HEALS:
        terminalreporter.write_line(f"  {heal}")


@pytest.fixture(scope="session")
def pulumi_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway PULUMI_HOME where scripts/setup installed this checkout's nexus plugin."""
    home = tmp_path_factory.mktemp("pulumi-home")
    make_pulumi_home(home)
    return home


@pytest.fixture
def blank_image(tmp_path: Path) -> dict[str, str]:
    """A blank 1 GiB base image: every host resource up to QEMU (the VM never becomes ready)."""
    return make_blank_image(tmp_path / "images")


@pytest.fixture(scope="session")
def language_hosts() -> None:
    """The Node.js and YAML language hosts beside the CLI (waits for a background build)."""
    ensure_language_hosts()


@pytest.fixture(scope="session")
def typescript_example(
    language_hosts: None, pulumi_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Example:
    """examples/typescript outside the repository, `npm install`ed and with the package added:
    once per run, each test makes its own stacks on it."""
    return prepare_example("typescript", tmp_path_factory.mktemp("examples"), pulumi_home)


@pytest.fixture(scope="session")
def yaml_example(
    language_hosts: None, pulumi_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Example:
    return prepare_example("yaml", tmp_path_factory.mktemp("examples"), pulumi_home)


@pytest.fixture
def home() -> Iterator[Path]:
    """A throwaway HOME for an example's stack (a short path: the lab's sockets live under it)."""
    with short_home() as path:
        yield path

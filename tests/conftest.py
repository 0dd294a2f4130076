"""Run-wide reporting for the test tiers, and the fixtures several tiers share."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.support.blank_image import make_blank_image
from tests.support.language_examples import Example, ensure_language_hosts, prepare_example, short_home
from tests.support.nexus_consumer import make_pulumi_home
from tests.support.pulumi_cli import HEALS

# The order of a run. A full run has two workers (scripts/test: pytest-xdist's `load`
# scheduling, one test at a time, each worker holding the test it runs and the next) and the
# images built in the background (tests.support.prebuild) while the toolchain builds: the
# x86_64, generic-kernel and guest-layers images are ready when the tests start, the arm64
# image (built through qemu-user) about ten minutes later. So the longest end-to-end tests
# go first, the guest layers' lifecycle (by far the longest) with a quick unit module after
# it, so that the test its worker holds next is a quick one and the other long tests go to
# the other worker; then the other end-to-end tests (those that need the Node.js and YAML
# language hosts, built in the background once the toolchain is there, and the arm64
# image's after them); the engine and unit tiers last: hundreds of short tests that keep
# both workers busy to the end instead of one finishing a long test alone.
ORDER = {
    "e2e/test_guest_layers.py::test_guest_layers_lifecycle": -5,
    "unit/test_fleet_memory.py": -4,
    "e2e/test_guest_layers.py": -3,
    "e2e/test_inner_vm_image.py": -2,
    "e2e/test_remote_guest.py": -2,
    "e2e/test_mounts.py": -2,
    "e2e/test_ninep.py": -1,
    "engine/test_setup.py": 0.5,
    "engine/test_nexus_languages.py": 0.5,
    "e2e/test_nexus_lab_typescript.py": 0.5,
    "e2e/test_arm64.py": 0.8,
}
# Where the rest of each tier goes.
TIER_ORDER = {"e2e": 0, "engine": 1, "unit": 2}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> float:
        module = item.path.relative_to(Path(__file__).parent).as_posix()
        test = f"{module}::{item.name.split('[')[0]}"
        return ORDER.get(test, ORDER.get(module, TIER_ORDER.get(module.split("/")[0], 0)))

    items.sort(key=order)  # a stable sort keeps the rest in their order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test's heals ride on its report, so a run on several workers counts them all."""
    before = len(HEALS)
    report = yield
    if report.when == "call":
        report.user_properties.extend(("nexus-heal", heal) for heal in HEALS[before:])
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller of a run on workers: the heals its workers reported."""
    if hasattr(report, "node"):  # set by pytest-xdist on reports that came from a worker
        HEALS.extend(str(heal) for name, heal in report.user_properties if name == "nexus-heal")


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

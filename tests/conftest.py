"""Run-wide reporting for the test tiers, and the fixtures several tiers share."""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.support.blank_image import make_blank_image
from tests.support.nexus_consumer import make_pulumi_home
from tests.support.pulumi_cli import HEALS

# Run last: their image takes longest to build (through qemu-user), and on a full run
# tests.support.prebuild builds it last, in the background, while the other tiers run.
LAST_MODULES = ("test_arm64.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in LAST_MODULES)  # a stable sort keeps the rest


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

"""Run-wide reporting for the test tiers."""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter

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

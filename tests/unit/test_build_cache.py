"""The test-artefact cache: built once, reused, nothing half-made left by a failed build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.build_cache import cached_build


def complete(directory: Path) -> bool:
    return (directory / ".complete").is_file()


def test_a_build_runs_once_and_is_then_reused(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(work: Path) -> None:
        builds.append(work)
        (work / "artefact").write_text("built")
        (work / ".complete").write_text("v1\n")

    lines: list[str] = []
    first = cached_build(tmp_path, "v1", is_complete=complete, build=build, what="thing", log=lines.append)
    again = cached_build(tmp_path, "v1", is_complete=complete, build=build, what="thing", log=lines.append)
    assert first == again == tmp_path / "v1"
    assert len(builds) == 1 and builds[0].name.startswith(".v1.build-")
    assert (first / "artefact").read_text() == "built"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v1.lock", "v1"]


def test_a_failed_build_leaves_nothing_and_an_incomplete_entry_is_rebuilt(tmp_path: Path) -> None:
    def failing(work: Path) -> None:
        (work / "half").write_text("half")
        raise RuntimeError("mirror unreachable")

    with pytest.raises(RuntimeError, match="mirror unreachable"):
        cached_build(tmp_path, "v1", is_complete=complete, build=failing, what="thing", log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v1.lock"]

    # An entry without its marker (a copy cut short) is discarded, leftovers of a killed build too.
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "artefact").write_text("truncated")
    (tmp_path / ".v1.build-999999").mkdir()
    lines: list[str] = []

    def build(work: Path) -> None:
        (work / ".complete").write_text("v1\n")

    cached_build(tmp_path, "v1", is_complete=complete, build=build, what="thing", log=lines.append)
    assert not (tmp_path / "v1" / "artefact").exists() and complete(tmp_path / "v1")
    assert not (tmp_path / ".v1.build-999999").exists()
    assert any("discarding incomplete or corrupt cache entry" in line for line in lines), lines
    assert any("removing leftovers of an interrupted build" in line for line in lines), lines

"""Unit tests for nexus_components.core.seed_iso: write, read back with pycdlib and blkid."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest

from nexus_components.core.errors import NexusError
from nexus_components.core.seed_iso import SEED_FILES, read_seed_iso, write_seed_iso

FILES = {
    "user-data": b"#cloud-config\nhostname: nexus-lab\n",
    "meta-data": b"instance-id: nexus-0123456789abcdef\nlocal-hostname: nexus-lab\n",
    "network-config": b"version: 2\nethernets: {}\n",
}


def test_round_trip_label_and_contents(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_seed_iso(iso, FILES)
    label, contents = read_seed_iso(iso)
    assert label == "cidata"
    assert contents == FILES


def test_network_config_is_optional(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    files = {name: FILES[name] for name in ("user-data", "meta-data")}
    write_seed_iso(iso, files)
    assert read_seed_iso(iso) == ("cidata", files)


def test_names_visible_via_iso9660_joliet_and_rock_ridge(tmp_path: Path) -> None:
    iso_path = tmp_path / "seed.iso"
    write_seed_iso(iso_path, FILES)
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        assert iso.has_rock_ridge()
        assert iso.has_joliet()

        def names(**path: str) -> set[str]:
            return {
                child.file_identifier().decode("utf-16_be" if "joliet_path" in path else "ascii")
                for child in iso.list_children(**path)
                if not (child.is_dot() or child.is_dotdot())
            }

        assert names(iso_path="/") == {"USERDATA.;1", "METADATA.;1", "NETWORKC.;1"}
        assert names(joliet_path="/") == set(SEED_FILES)
        rr_names = {
            child.rock_ridge.name().decode()
            for child in iso.list_children(rr_path="/")
            if not (child.is_dot() or child.is_dotdot())
        }
        assert rr_names == set(SEED_FILES)
        for name, data in FILES.items():
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, joliet_path="/" + name)
            assert buf.getvalue() == data
    finally:
        iso.close()


def test_write_is_atomic_and_replaces_existing(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    iso.write_bytes(b"old content")
    write_seed_iso(iso, FILES)
    assert read_seed_iso(iso)[1] == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_failed_write_leaves_no_temp_file_and_keeps_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = tmp_path / "seed.iso"
    iso.write_bytes(b"old content")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("nexus_components.core.seed_iso.os.replace", broken_replace)
    with pytest.raises(NexusError, match="No space left") as info:
        write_seed_iso(iso, FILES)
    assert info.value.hint
    assert iso.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_missing_directory_is_nexus_error(tmp_path: Path) -> None:
    with pytest.raises(NexusError, match="could not write") as info:
        write_seed_iso(tmp_path / "missing" / "seed.iso", FILES)
    assert "missing" in info.value.hint


def test_rejects_unknown_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(NexusError, match=r"unknown file.*vendor-data"):
        write_seed_iso(tmp_path / "seed.iso", {**FILES, "vendor-data": b""})
    with pytest.raises(NexusError, match=r"missing file.*meta-data"):
        write_seed_iso(tmp_path / "seed.iso", {"user-data": b""})
    assert list(tmp_path.iterdir()) == []


def test_read_garbage_is_nexus_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.iso"
    bad.write_bytes(b"\0" * 70_000)
    with pytest.raises(NexusError, match="not a readable ISO9660"):
        read_seed_iso(bad)
    with pytest.raises(NexusError, match="could not read"):
        read_seed_iso(tmp_path / "absent.iso")


def test_blkid_sees_cidata_label(tmp_path: Path) -> None:
    blkid = shutil.which("blkid") or next(
        (p for p in ("/usr/sbin/blkid", "/sbin/blkid") if Path(p).exists()), None
    )
    # Deliberately not a skip: this machine is expected to have util-linux.
    assert blkid, "blkid (util-linux) not found; install util-linux to run this check"
    iso = tmp_path / "seed.iso"
    write_seed_iso(iso, FILES)
    result = subprocess.run(
        [blkid, "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "cidata"
    kind = subprocess.run(
        [blkid, "-o", "value", "-s", "TYPE", str(iso)], capture_output=True, text=True, check=True
    )
    assert kind.stdout.strip() == "iso9660"

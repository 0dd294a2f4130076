"""Write and read the NoCloud seed ISO (volume label `cidata`) with pycdlib.

pycdlib is pure Python, so macOS and Windows hosts need no cloud-localds, genisoimage
or xorriso. The layout matches `cloud-localds`: ISO9660 level-1 names (USERDATA.;1),
plus Joliet and Rock Ridge 1.09 so the guest sees the real names (user-data).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from nexus_components.core.errors import NexusError

SEED_FILES = ("user-data", "meta-data", "network-config")  # network-config is optional
_REQUIRED = ("user-data", "meta-data")
VOLUME_LABEL = "cidata"  # what cloud-init's NoCloud datasource looks for

# Rock Ridge / Joliet name -> ISO9660 level-1 name (8.3 upper case), as genisoimage makes.
_ISO9660_NAMES = {
    "user-data": "/USERDATA.;1",
    "meta-data": "/METADATA.;1",
    "network-config": "/NETWORKC.;1",
}


def write_seed_iso(path: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` (names from SEED_FILES) as a `cidata` ISO at `path`, atomically.

    The ISO is written to a temporary file next to `path` and moved into place with
    os.replace, so QEMU or a drift check never sees a half-written seed. The file is
    created 0600: user-data can carry whatever the user put in extra_user_data.
    """
    unknown = sorted(set(files) - set(SEED_FILES))
    missing = [name for name in _REQUIRED if name not in files]
    if unknown or missing:
        raise NexusError(
            f"cannot build the seed ISO {path}: "
            + "; ".join(
                part
                for part in (
                    f"unknown file(s) {', '.join(unknown)}" if unknown else "",
                    f"missing file(s) {', '.join(missing)}" if missing else "",
                )
                if part
            ),
            hint="pass user-data and meta-data (network-config is optional): " + ", ".join(SEED_FILES),
        )

    import pycdlib  # on first use (here and in read_seed_iso): a `preview` builds no ISO
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    tmp_name = ""
    try:
        iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
        for name in (name for name in SEED_FILES if name in files):
            data = files[name]
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path=_ISO9660_NAMES[name],
                rr_name=name,
                joliet_path="/" + name,
                file_mode=0o100444,
            )
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
        tmp_name = ""
    except OSError as exc:
        raise NexusError(
            f"could not write the cloud-init seed ISO {path}: {exc.strerror or exc}",
            hint=f"check that {path.parent} exists, is writable and has free space",
        ) from exc
    except PyCdlibException as exc:
        raise NexusError(
            f"pycdlib could not build the cloud-init seed ISO {path}: {exc}",
            hint="this is a bug in nexus_components; report it with the stack config",
        ) from exc
    finally:
        # close() raises if new() never succeeded; there is nothing to release then.
        with contextlib.suppress(PyCdlibException):
            iso.close()
        if tmp_name:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def read_seed_iso(path: Path) -> tuple[str, dict[str, bytes]]:
    """Return (volume label, {Rock Ridge name: content}) of the seed ISO at `path`."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
        try:
            label = iso.pvd.volume_identifier.decode("ascii", errors="replace").rstrip(" \0")
            contents: dict[str, bytes] = {}
            for child in iso.list_children(rr_path="/"):
                if child.is_dot() or child.is_dotdot() or not child.is_file() or child.rock_ridge is None:
                    continue
                name = child.rock_ridge.name().decode()
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
                contents[name] = buf.getvalue()
        finally:
            iso.close()
    except OSError as exc:
        raise NexusError(
            f"could not read the cloud-init seed ISO {path}: {exc.strerror or exc}",
            hint="run `pulumi up` to recreate the seed ISO",
        ) from exc
    except PyCdlibException as exc:
        raise NexusError(
            f"{path} is not a readable ISO9660 seed image: {exc}",
            hint="delete it and run `pulumi up` to recreate the seed ISO",
        ) from exc
    return label, contents

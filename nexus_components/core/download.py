"""Download the base image into a cache shared by all stacks (modelled on Lima's pkg/downloader).

The cache is keyed by URL: `<cache_dir>/<sha256(url)[:16]>/<basename>`. Every file is verified
against its SHA-256 before use, downloads resume from a `.partial` file after a dropped
connection, and an exclusive lock keeps two stacks from writing the same entry at once.
Pure Python with no Pulumi import, so it is unit-tested against a real local HTTP server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import unquote, urljoin, urlparse
from urllib.request import url2pathname

from nexus_components.core.errors import DownloadError, SourceUnreachable

if TYPE_CHECKING:
    import requests

CHUNK_SIZE = 1 << 20
PROGRESS_STEP = 1 << 20
LOG_INTERVAL_SECONDS = 2.0
SUMS_FILE_NAME = "SHA256SUMS"
_MIB = float(1 << 20)

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# GNU coreutils: `<hex>  name` (text mode) or `<hex> *name` (binary mode).
_GNU_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
# BSD / `sha256sum --tag`: `SHA256 (name) = <hex>`.
_BSD_SUMS_LINE = re.compile(r"^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")

ProgressFn = Callable[[int, int | None], None]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class ImageSource:
    url: str  # http(s)://..., file:///..., or a plain local path (absolute or ~)
    # Expected lowercase hex digest; None -> look it up in SHA256SUMS next to the URL.
    sha256: str | None = None
    url_key: str = "nexus:image.url"  # config key named in errors about the URL
    sha256_key: str = "nexus:image.sha256"  # config key named in errors about the digest


@dataclass(frozen=True)
class CachedImage:
    path: Path  # the verified file in the cache
    sha256: str
    size: int


def cache_entry_dir(cache_dir: Path, url: str) -> Path:
    """The directory holding one URL's cached image, its `.partial` and its lock file."""
    return cache_dir / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def cached_image_path(cache_dir: Path, source: ImageSource) -> Path:
    """Where `fetch_image` keeps the verified image of `source` (it may not exist yet)."""
    return cache_entry_dir(cache_dir, source.url) / _image_name(source)


def expected_digest(source: ImageSource, *, timeout: float = 30.0) -> str:
    """The configured digest, or the one listed for the image in SHA256SUMS next to the URL."""
    if source.sha256 is not None:
        digest = source.sha256.strip().lower()
        if not _HEX_DIGEST.fullmatch(digest):
            raise DownloadError(
                f"{source.sha256_key} is {source.sha256!r}, which is not a SHA-256 digest (64 hex digits)",
                hint=f"set {source.sha256_key} to the image's digest as printed by `sha256sum`, "
                "or unset it to look the digest up in SHA256SUMS next to the image",
            )
        return digest

    name = _image_name(source)
    local_path = _local_path(source)
    if local_path is None:
        sums_location = urljoin(source.url, SUMS_FILE_NAME)
        sums_text = _read_remote_sums(source, sums_location, timeout)
    else:
        sums_path = local_path.parent / SUMS_FILE_NAME
        sums_location = str(sums_path)
        sums_text = _read_local_sums(source, sums_path)

    listed = _find_digest(sums_text, name)
    if listed is None:
        raise DownloadError(
            f"{sums_location} has no SHA-256 entry for {name!r}",
            hint=f"set {source.sha256_key} to the digest of {source.url} "
            f"(or check that {source.url_key} names a file listed in {sums_location})",
        )
    return listed


def fetch_image(
    source: ImageSource,
    cache_dir: Path,
    *,
    progress: ProgressFn | None = None,
    timeout: float = 30.0,
) -> CachedImage:
    """Return the verified image in the cache, downloading or copying it only when needed."""
    name = _image_name(source)
    local_path = _local_path(source)
    expected = expected_digest(source, timeout=timeout)

    entry_dir = cache_entry_dir(cache_dir, source.url)
    entry_dir.mkdir(parents=True, exist_ok=True)
    final_path = entry_dir / name
    partial_path = entry_dir / (name + ".partial")

    # Held across check, download and rename, so a second stack waits and then finds the
    # finished file instead of writing the same `.partial`.
    with _exclusive_lock(entry_dir / (name + ".lock")):
        if final_path.exists():
            digest, size = _verified_digest(final_path)
            if digest == expected:
                return CachedImage(final_path, digest, size)
            final_path.unlink()  # corrupt or stale: fetch it again

        if local_path is None:
            _download(source, partial_path, expected, progress, timeout)
        else:
            _copy_local(source, local_path, partial_path, expected, progress)
        _commit(partial_path, final_path)
        return CachedImage(final_path, expected, final_path.stat().st_size)


def partial_size(cache_dir: Path, source: ImageSource) -> int:
    """How many bytes of `source` the cache holds in its `.partial` (0 when none): where a
    copy sent from another machine resumes."""
    return _size_or_zero(cache_entry_dir(cache_dir, source.url) / (_image_name(source) + ".partial"))


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@contextlib.contextmanager
def source_chunks(
    source: ImageSource, *, start: int = 0, timeout: float = 30.0
) -> Iterator[tuple[Iterator[bytes], int | None, int]]:
    """The image's bytes as they come from its URL or file on this machine, from byte `start`
    when the source can begin there (else from 0), with its whole size when known and the byte
    they begin at: what this machine sends to a lab's server that cannot reach the source."""
    local_path = _local_path(source)
    if local_path is not None:
        with _open_local(source, local_path) as file:
            size = os.fstat(file.fileno()).st_size
            start = start if start <= size else 0
            file.seek(start)
            yield _read_chunks(file), size, start
        return
    import requests

    headers = {"Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = requests.get(source.url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as error:
        raise _unreachable_or_failed(error)(
            f"could not download {source.url}: {error}",
            hint=f"check the network, or set {source.url_key} to another URL",
        ) from error
    with response:
        status = response.status_code
        if start and status == 416:
            # Nothing past `start`: the copy there may be whole already (its digest decides).
            yield iter(()), start, start
            return
        if status not in (200, 206) or (status == 206 and _content_range_start(response) != start):
            raise DownloadError(
                f"could not download {source.url}: HTTP {status} {response.reason}",
                hint=f"check that {source.url_key} is the right URL",
            )
        start = start if status == 206 else 0  # a 200 is the whole image
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        yield response.iter_content(CHUNK_SIZE), total, start


def receive_image(
    source: ImageSource,
    cache_dir: Path,
    chunks: Iterable[bytes],
    expected: str,
    *,
    total: int | None,
    start: int = 0,
    progress: ProgressFn | None = None,
) -> CachedImage:
    """Put an image another machine sends into the cache, as `fetch_image` would: under the
    entry's lock, hashed as it comes, verified against `expected`, then renamed into place.
    `start` > 0: the chunks follow the first `start` bytes, kept in the `.partial` of an
    earlier copy that broke off (see `partial_size`)."""
    name = _image_name(source)
    entry_dir = cache_entry_dir(cache_dir, source.url)
    entry_dir.mkdir(parents=True, exist_ok=True)
    final_path = entry_dir / name
    partial_path = entry_dir / (name + ".partial")
    with _exclusive_lock(entry_dir / (name + ".lock")):
        if final_path.exists() and _verified_digest(final_path)[0] == expected:
            return CachedImage(final_path, expected, final_path.stat().st_size)
        held = _size_or_zero(partial_path)
        if held < start:
            raise DownloadError(
                f"the copy of {source.url} here holds {held} bytes, not the {start} it was to go on from",
                hint="re-run to send the rest",
            )
        throttle = _ProgressThrottle(progress, start, total)
        try:
            actual, done = _write_hashed(chunks, partial_path, throttle, start=start)
        except OSError as error:
            partial_path.unlink(missing_ok=True)
            raise DownloadError(
                f"could not write {partial_path}: {error.strerror or error}",
                hint="free disk space in the image cache (or fix its permissions) and re-run",
            ) from error
        if total is not None and done < total:
            # Kept: a prefix of the image, so the next copy sends only the rest.
            raise DownloadError(
                f"the copy of {source.url} sent from the user's machine ended after {done} of {total} bytes",
                hint="re-run: the copy goes on from there",
            )
        _verify(source, partial_path, actual, expected)
        throttle.finish(done)
        _commit(partial_path, final_path)
        return CachedImage(final_path, expected, done)


def log_progress(
    log: Callable[[str], None],
    name: str = "image",
    *,
    clock: Callable[[], float] = time.monotonic,
    verbs: tuple[str, str] = ("downloading", "downloaded"),
) -> ProgressFn:
    """A progress callback that logs a human line at most every 2 seconds, plus a final line."""
    moving, moved = verbs
    started_at: float | None = None
    started_bytes = 0
    last_logged_at = 0.0
    final_logged = False

    def report(done: int, total: int | None) -> None:
        nonlocal started_at, started_bytes, last_logged_at, final_logged
        now = clock()
        finished = total is not None and done >= total
        if final_logged:
            return
        if started_at is None:
            # Rate counts only bytes moved by this run, not those already in a resumed partial.
            started_at, started_bytes, last_logged_at = now, done, now
            if not finished:
                return
        elif not finished and now - last_logged_at < LOG_INTERVAL_SECONDS:
            return
        final_logged = finished
        last_logged_at = now
        elapsed = now - started_at
        rate = (done - started_bytes) / elapsed / _MIB if elapsed > 0 else 0.0
        if finished and started_bytes:
            # A resumed download: the rate is that of the bytes this run moved, so say which.
            log(
                f"{moved} {name}: {done / _MIB:.1f} MiB, resumed at {started_bytes / _MIB:.1f} MiB: "
                f"{(done - started_bytes) / _MIB:.1f} MiB in {elapsed:.1f} s ({rate:.1f} MiB/s)"
            )
        elif finished:
            log(f"{moved} {name}: {done / _MIB:.1f} MiB in {elapsed:.1f} s ({rate:.1f} MiB/s)")
        elif total:
            percent = done * 100 // total
            log(
                f"{moving} {name}: {percent}% "
                f"({done / _MIB:.1f} MiB of {total / _MIB:.1f} MiB, {rate:.1f} MiB/s)"
            )
        else:
            log(f"{moving} {name}: {done / _MIB:.1f} MiB ({rate:.1f} MiB/s)")

    return report


# --- where the image comes from -------------------------------------------------------------


def _local_path(source: ImageSource) -> Path | None:
    """The file a file:// URL or plain path names; None for http(s)."""
    parsed = urlparse(source.url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(
                f"{source.url_key} is {source.url!r}, a file:// URL on another host ({parsed.netloc})",
                hint=f"set {source.url_key} to file:///path/on/this/machine or a local path",
            )
        return Path(url2pathname(parsed.path))
    # No scheme, or a one-letter "scheme" that is really a Windows drive (C:\images\x.img).
    if scheme == "" or len(scheme) == 1:
        return Path(source.url).expanduser()
    raise DownloadError(
        f"{source.url_key} is {source.url!r}, whose scheme {scheme!r} is not supported",
        hint=f"set {source.url_key} to an http(s):// URL, a file:// URL or a local path",
    )


def _image_name(source: ImageSource) -> str:
    local_path = _local_path(source)
    if local_path is not None:
        name = local_path.name
    else:
        name = unquote(posixpath.basename(urlparse(source.url).path))
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise DownloadError(
            f"{source.url_key} is {source.url!r}, which does not end in a file name",
            hint=f"set {source.url_key} to the URL of the image file itself",
        )
    return name


# --- SHA256SUMS -----------------------------------------------------------------------------


def _read_remote_sums(source: ImageSource, sums_url: str, timeout: float) -> str:
    hint = (
        f"set {source.sha256_key} to the image's SHA-256 digest so no SHA256SUMS is needed, "
        f"or point {source.url_key} at a mirror that serves one"
    )
    import requests  # on first use: every `preview` loads this module, few download

    try:
        response = requests.get(sums_url, timeout=timeout)
    except requests.RequestException as error:
        raise _unreachable_or_failed(error)(
            f"could not fetch {sums_url}: {error}",
            hint=f"no network here? point {source.url_key} at a local copy of the image or a file:// URL "
            f"(with {source.sha256_key} or a SHA256SUMS beside it); otherwise " + hint,
        ) from error
    with response:
        if response.status_code != 200:
            raise DownloadError(
                f"could not fetch {sums_url}: HTTP {response.status_code} {response.reason}", hint=hint
            )
        return response.text


def _read_local_sums(source: ImageSource, sums_path: Path) -> str:
    try:
        return sums_path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise SourceUnreachable(
            f"could not read {sums_path}: {error.strerror or error}",
            hint=f"set {source.sha256_key} to the image's SHA-256 digest, "
            f"or put a SHA256SUMS file next to {source.url}",
        ) from error


def _find_digest(sums_text: str, name: str) -> str | None:
    wanted = {name, "./" + name}
    for raw_line in sums_text.splitlines():
        line = raw_line.strip()
        gnu = _GNU_SUMS_LINE.match(line)
        if gnu and gnu.group(2) in wanted:
            return gnu.group(1).lower()
        bsd = _BSD_SUMS_LINE.match(line)
        if bsd and bsd.group(1) in wanted:
            return bsd.group(2).lower()
    return None


# --- fetching -------------------------------------------------------------------------------


def _download(
    source: ImageSource,
    partial_path: Path,
    expected: str,
    progress: ProgressFn | None,
    timeout: float,
) -> None:
    """Download into `partial_path`, resuming it if present; verified on return."""
    url = source.url
    network_hint = (
        f"check the network, or set {source.url_key} to another URL, a file:// URL or a local "
        "path to an image you already have (for air-gapped machines)"
    )
    resume_hint = (
        f"re-run to resume the download, or set {source.url_key} to another URL, "
        "a file:// URL or a local path"
    )

    resume_from = partial_path.stat().st_size if partial_path.exists() else 0
    # Identity encoding: a gzip-decoding client would hash and count the wrong bytes.
    headers = {"Accept-Encoding": "identity"}
    if resume_from:
        headers["Range"] = f"bytes={resume_from}-"
    import requests  # on first use: every `preview` loads this module, few download

    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as error:
        raise _unreachable_or_failed(error)(
            f"could not download {url}: {error}", hint=network_hint
        ) from error

    with response:
        status = response.status_code
        if resume_from and status == 416:
            # The server has nothing past our partial: it may already be the whole image.
            _verify(source, partial_path, _hash_file(partial_path)[0], expected)
            return
        hasher: _Hasher
        if resume_from and status == 206:
            if _content_range_start(response) != resume_from:
                partial_path.unlink()  # appending a different range would corrupt it
                raise DownloadError(
                    f"{url} answered the resume request (Range: bytes={resume_from}-) with "
                    f"Content-Range {response.headers.get('Content-Range')!r}",
                    hint="re-run to download the image from the start",
                )
            hasher = _hash_file_into(partial_path, hashlib.sha256())
            mode = "ab"
        elif status == 200:
            # No Range support (or a fresh download): the body is the whole image.
            hasher = hashlib.sha256()
            resume_from = 0
            mode = "wb"
        else:
            if resume_from and _is_permanent_failure(status):
                partial_path.unlink()  # the URL is gone; its partial can never be resumed
            raise DownloadError(
                f"could not download {url}: HTTP {status} {response.reason}",
                hint=f"check that {source.url_key} is the right URL, or set it to another URL, a file:// "
                "URL or a local path to an image you already have (for air-gapped machines)",
            )

        content_length = response.headers.get("Content-Length")
        total = resume_from + int(content_length) if content_length and content_length.isdigit() else None
        throttle = _ProgressThrottle(progress, resume_from, total)
        done = resume_from
        try:
            with partial_path.open(mode) as out:
                for chunk in response.iter_content(CHUNK_SIZE):
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    throttle.update(done)
                _flush_to_disk(out)
        except requests.RequestException as error:
            # Keep the partial: the next run resumes from here.
            raise DownloadError(
                f"download of {url} was interrupted after {done} bytes: {error}", hint=resume_hint
            ) from error
        except OSError as error:
            raise DownloadError(
                f"could not write {partial_path}: {error.strerror or error}",
                hint="free disk space in the image cache (or fix its permissions) and re-run",
            ) from error
        if total is not None and done < total:
            raise DownloadError(f"download of {url} ended after {done} of {total} bytes", hint=resume_hint)
    _verify(source, partial_path, hasher.hexdigest(), expected)
    # "downloaded" only once the bytes are known to be the right ones.
    throttle.finish(done)


def _open_local(source: ImageSource, local_path: Path) -> IO[bytes]:
    try:
        return local_path.open("rb")
    except OSError as error:
        raise SourceUnreachable(
            f"cannot read the image {local_path} ({source.url_key} = {source.url!r}): "
            f"{error.strerror or error}",
            hint=f"set {source.url_key} to an existing image file, a file:// URL or an http(s):// URL",
        ) from error


def _copy_local(
    source: ImageSource,
    local_path: Path,
    partial_path: Path,
    expected: str,
    progress: ProgressFn | None,
) -> None:
    """Copy a local image into `partial_path`, hashing while copying; verified on return."""
    source_file = _open_local(source, local_path)
    with source_file:
        total = os.fstat(source_file.fileno()).st_size
        throttle = _ProgressThrottle(progress, 0, total)
        try:
            actual, done = _write_hashed(_read_chunks(source_file), partial_path, throttle)
        except OSError as error:
            partial_path.unlink(missing_ok=True)  # a copy has nothing to resume
            raise DownloadError(
                f"could not copy {local_path} into {partial_path}: {error.strerror or error}",
                hint="check that the image is readable and the cache has free space, then re-run",
            ) from error
    _verify(source, partial_path, actual, expected)
    throttle.finish(done)


def _write_hashed(
    chunks: Iterable[bytes], partial_path: Path, throttle: _ProgressThrottle, *, start: int = 0
) -> tuple[str, int]:
    """Write `chunks` into `partial_path` after its first `start` bytes (none: a new file), on
    disk when it returns: the whole file's SHA-256 and size. An OSError (disk full,
    unreadable source) is the caller's to name."""
    hasher = hashlib.sha256()
    done = start
    with partial_path.open("r+b" if start else "wb") as out:
        if start:
            out.truncate(start)  # what it held past that is not what follows
            for chunk in _read_chunks(out):
                hasher.update(chunk)
        for chunk in chunks:
            out.write(chunk)
            hasher.update(chunk)
            done += len(chunk)
            throttle.update(done)
        _flush_to_disk(out)
    return hasher.hexdigest(), done


def _verify(source: ImageSource, partial_path: Path, actual: str, expected: str) -> None:
    if actual == expected:
        return
    partial_path.unlink(missing_ok=True)  # never resume onto bytes known to be wrong
    origin = source.sha256_key if source.sha256 is not None else f"the {SUMS_FILE_NAME} next to the image"
    # Never suggest pinning `actual`: it is the digest of bytes known to be wrong.
    raise DownloadError(
        f"{source.url} has SHA-256 {actual}, but {expected} was expected (from {origin}); "
        "the bad copy was deleted",
        hint="re-run to fetch the image again; if the mismatch repeats, the file at that URL is not "
        "the one expected: take the image's digest from its publisher and check "
        f"{source.sha256_key}, or use another mirror in {source.url_key}",
    )


def _commit(partial_path: Path, final_path: Path) -> None:
    """Atomically publish the verified partial under its final name."""
    os.replace(partial_path, final_path)
    if sys.platform != "win32":
        # Persist the rename itself; Windows cannot open a directory to fsync it.
        dir_fd = os.open(final_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _unreachable_or_failed(error: requests.RequestException) -> type[DownloadError]:
    """No connection (no route, no name, no answer) is the source out of this machine's reach;
    anything else (a bad URL, too many redirects) would fail from anywhere."""
    import requests

    reach = (requests.ConnectionError, requests.Timeout)
    return SourceUnreachable if isinstance(error, reach) else DownloadError


def _content_range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _is_permanent_failure(status: int) -> bool:
    # 4xx means the URL itself is wrong; 408/429 and 5xx may pass on their own.
    return 400 <= status < 500 and status not in (408, 429)


class _ProgressThrottle:
    """Forward progress at most once per PROGRESS_STEP bytes, and always at the end."""

    def __init__(self, progress: ProgressFn | None, done: int, total: int | None) -> None:
        self._progress = progress
        self._total = total
        self._last_reported = done
        if progress is not None:
            progress(done, total)

    def update(self, done: int) -> None:
        # The last chunk is left to finish(), which runs only after the digest matched.
        complete = self._total is not None and done >= self._total
        if self._progress is not None and done - self._last_reported >= PROGRESS_STEP and not complete:
            self._last_reported = done
            self._progress(done, self._total)

    def finish(self, done: int) -> None:
        # The final call always has done == total, so a consumer knows it is the last one.
        already_final = self._last_reported == done and self._total == done
        if self._progress is not None and not already_final:
            self._progress(done, done)


# --- files ----------------------------------------------------------------------------------


def _read_chunks(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_SIZE):
        yield chunk


def _hash_file_into(path: Path, hasher: _Hasher) -> _Hasher:
    with path.open("rb") as file:
        for chunk in _read_chunks(file):
            hasher.update(chunk)
    return hasher


def _hash_file(path: Path) -> tuple[str, int]:
    hasher = _hash_file_into(path, hashlib.sha256())
    return hasher.hexdigest(), path.stat().st_size


def _verified_digest(path: Path) -> tuple[str, int]:
    """The cached file's SHA-256, hashed once per version of the file: a record beside it
    (`<name>.sha256`) keeps the digest with the size, modification time and inode it was
    hashed at, so each later `up` (every create of a stack, a re-create of a disk) does not
    read a whole image again. Any change to the file hashes it anew."""
    record = path.with_name(path.name + ".sha256")
    stat = path.stat()
    identity = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    try:
        known = json.loads(record.read_text())
        if known["file"] == identity:
            return str(known["sha256"]), stat.st_size
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest, size = _hash_file(path)
    with contextlib.suppress(OSError):  # a read-only cache still works, hashing each time
        partial = record.with_name(record.name + ".partial")
        partial.write_text(json.dumps({"file": identity, "sha256": digest}))
        os.replace(partial, record)
    return digest, size


def _flush_to_disk(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Block until this process holds the entry's lock file (released on exit or process death)."""
    # The lock file is left in place: deleting it would let two processes lock different inodes.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if sys.platform == "win32":
            import msvcrt

            while True:
                try:
                    # LK_LOCK itself retries for ~10 s, then raises; keep waiting like flock does.
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

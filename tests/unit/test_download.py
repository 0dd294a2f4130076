"""fetch_image against a real HTTP server on 127.0.0.1: resume, verification, errors, progress."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nexus_components.core.download import (
    CHUNK_SIZE,
    CachedImage,
    ImageSource,
    cache_entry_dir,
    expected_digest,
    fetch_image,
    log_progress,
    partial_size,
    receive_image,
    source_chunks,
)
from nexus_components.core.errors import DownloadError, SourceUnreachable

MIB = 1 << 20
IMAGE_NAME = "base.qcow2"


@dataclass
class ServedRequest:
    path: str
    range_header: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[ServedRequest] = field(default_factory=list)
    drop_after_bytes_once: int | None = None  # close the socket mid-body, once
    ignore_range: bool = False  # answer 200 with the whole file, like a server without Range support
    omit_content_length: bool = False
    stall_seconds: float = 0.0  # sleep before answering, to trigger client timeouts
    lock: threading.Lock = field(default_factory=threading.Lock)

    def image_requests(self, name: str = IMAGE_NAME) -> list[ServedRequest]:
        return [r for r in self.requests if r.path == "/" + name]


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: StateServer

    def do_GET(self) -> None:
        state = self.server.state
        served = ServedRequest(self.path, self.headers.get("Range"))
        with state.lock:
            state.requests.append(served)
        if state.stall_seconds:
            time.sleep(state.stall_seconds)
        data = state.files.get(self.path.lstrip("/"))
        if data is None:
            served.status = 404
            self.send_error(404)
            return

        start = 0
        if served.range_header and not state.ignore_range:
            start = int(served.range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                served.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            served.status = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            served.status = 200
            self.send_response(200)
        body = data[start:]
        if not state.omit_content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()

        with state.lock:
            drop_after, state.drop_after_bytes_once = state.drop_after_bytes_once, None
        if drop_after is not None:
            body = body[:drop_after]
        for offset in range(0, len(body), 64 * 1024):
            piece = body[offset : offset + 64 * 1024]
            self.wfile.write(piece)
            served.body_bytes += len(piece)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean


class StateServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@dataclass
class ImageServer:
    state: ServerState
    base_url: str

    def url(self, name: str = IMAGE_NAME) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the developer's environment must not intercept requests to 127.0.0.1.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def image_bytes() -> bytes:
    return os.urandom(3 * MIB + 12345)  # not a multiple of the chunk size


@pytest.fixture
def server(image_bytes: bytes) -> Iterator[ImageServer]:
    httpd = StateServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState(files={IMAGE_NAME: image_bytes})
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield ImageServer(httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_files(cache_dir: Path, url: str) -> set[str]:
    return {p.name for p in cache_entry_dir(cache_dir, url).iterdir()}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here any more: connections are refused


# --- cache entry ----------------------------------------------------------------------------


def test_cache_entry_dir_is_keyed_by_url(tmp_path: Path) -> None:
    url = "https://example.org/images/base.qcow2"
    assert cache_entry_dir(tmp_path, url) == tmp_path / sha256_of(url.encode())[:16]
    assert cache_entry_dir(tmp_path, url) != cache_entry_dir(tmp_path, url + "?v=2")


def test_download_lands_verified_in_the_cache_entry(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "nested" / "cache"  # parents are created
    url = server.url()

    image = fetch_image(ImageSource(url, sha256_of(image_bytes)), cache_dir)

    assert image == CachedImage(
        cache_entry_dir(cache_dir, url) / IMAGE_NAME, sha256_of(image_bytes), len(image_bytes)
    )
    assert image.path.read_bytes() == image_bytes
    [request] = server.state.image_requests()
    assert (request.status, request.range_header, request.body_bytes) == (200, None, len(image_bytes))


def test_nothing_is_written_outside_the_cache_entry(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    url = server.url()

    fetch_image(ImageSource(url, sha256_of(image_bytes)), cache_dir)

    entry = cache_entry_dir(cache_dir, url)
    written = {p.relative_to(cache_dir) for p in cache_dir.rglob("*")}
    assert written == {entry.relative_to(cache_dir)} | {
        (entry / name).relative_to(cache_dir) for name in (IMAGE_NAME, IMAGE_NAME + ".lock")
    }
    assert set(tmp_path.iterdir()) == {cache_dir}


def test_cache_hit_makes_no_request(server: ImageServer, image_bytes: bytes, tmp_path: Path) -> None:
    source = ImageSource(server.url(), sha256_of(image_bytes))
    first = fetch_image(source, tmp_path)
    requests_after_first = len(server.state.requests)

    second = fetch_image(source, tmp_path)

    assert second == first
    assert len(server.state.requests) == requests_after_first == 1


def test_corrupt_cache_file_is_replaced(server: ImageServer, image_bytes: bytes, tmp_path: Path) -> None:
    url = server.url()
    corrupt = cache_entry_dir(tmp_path, url) / IMAGE_NAME
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(image_bytes[:-1] + b"\0")

    image = fetch_image(ImageSource(url, sha256_of(image_bytes)), tmp_path)

    assert image.path == corrupt
    assert corrupt.read_bytes() == image_bytes
    assert len(server.state.image_requests()) == 1


def test_a_cached_image_is_hashed_once_and_again_only_once_it_changed(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    source = ImageSource(server.url(), sha256_of(image_bytes))
    cached = fetch_image(source, tmp_path).path
    fetch_image(source, tmp_path)  # the first hit hashes the file and records it
    record = cached.with_name(cached.name + ".sha256")
    assert sha256_of(image_bytes) in record.read_text()
    assert fetch_image(source, tmp_path).path == cached

    # Changed in place (same size, a new modification time): hashed again, found corrupt, fetched again.
    time.sleep(0.01)
    cached.write_bytes(image_bytes[:-1] + b"\0")
    assert fetch_image(source, tmp_path).path == cached
    assert cached.read_bytes() == image_bytes
    assert len(server.state.image_requests()) == 2


def test_concurrent_fetches_download_once(server: ImageServer, image_bytes: bytes, tmp_path: Path) -> None:
    server.state.stall_seconds = 0.3  # keeps the first fetch inside the lock while the second arrives
    source = ImageSource(server.url(), sha256_of(image_bytes))
    results: list[CachedImage] = []

    threads = [
        threading.Thread(target=lambda: results.append(fetch_image(source, tmp_path))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 2 and results[0] == results[1]
    assert results[0].path.read_bytes() == image_bytes
    assert len(server.state.image_requests()) == 1


# --- resume ---------------------------------------------------------------------------------


def test_dropped_connection_keeps_partial_and_next_run_resumes(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    url = server.url()
    source = ImageSource(url, sha256_of(image_bytes))
    cut = MIB + 4321
    server.state.drop_after_bytes_once = cut

    with pytest.raises(DownloadError) as interrupted:
        fetch_image(source, tmp_path)

    assert url in str(interrupted.value)
    assert "resume" in interrupted.value.hint
    partial = cache_entry_dir(tmp_path, url) / (IMAGE_NAME + ".partial")
    # The client keeps whole chunks it received, so the partial is a non-empty prefix up to the cut.
    kept = partial.read_bytes()
    assert 0 < len(kept) <= cut and image_bytes.startswith(kept)

    image = fetch_image(source, tmp_path)

    assert image.path.read_bytes() == image_bytes
    assert not partial.exists()
    first, second = server.state.image_requests()
    assert first.body_bytes == cut
    assert (second.status, second.range_header) == (206, f"bytes={len(kept)}-")
    assert second.body_bytes == len(image_bytes) - len(kept)  # only the rest was sent


def test_server_ignoring_range_restarts_from_zero(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    url = server.url()
    partial = cache_entry_dir(tmp_path, url) / (IMAGE_NAME + ".partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"stale bytes that must not be kept")
    server.state.ignore_range = True

    image = fetch_image(ImageSource(url, sha256_of(image_bytes)), tmp_path)

    assert image.path.read_bytes() == image_bytes
    [request] = server.state.image_requests()
    assert request.range_header == f"bytes={len(b'stale bytes that must not be kept')}-"
    assert (request.status, request.body_bytes) == (200, len(image_bytes))


def test_complete_partial_answered_with_416_is_verified_and_used(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    url = server.url()
    partial = cache_entry_dir(tmp_path, url) / (IMAGE_NAME + ".partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(image_bytes)

    image = fetch_image(ImageSource(url, sha256_of(image_bytes)), tmp_path)

    assert image.path.read_bytes() == image_bytes
    assert not partial.exists()
    [request] = server.state.image_requests()
    assert (request.status, request.range_header, request.body_bytes) == (
        416,
        f"bytes={len(image_bytes)}-",
        0,
    )


# --- verification and errors ----------------------------------------------------------------


def test_wrong_digest_names_expected_actual_and_key_and_keeps_nothing(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    url = server.url()
    wrong = "0" * 64

    with pytest.raises(DownloadError) as failure:
        fetch_image(ImageSource(url, wrong, sha256_key="lab:image.sha256"), tmp_path)

    message = str(failure.value)
    assert url in message and wrong in message and sha256_of(image_bytes) in message
    assert "lab:image.sha256" in message
    assert entry_files(tmp_path, url) == {IMAGE_NAME + ".lock"}


def test_invalid_configured_digest_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as failure:
        fetch_image(ImageSource("https://example.invalid/base.qcow2", "not-a-digest"), tmp_path)

    assert "nexus:image.sha256" in str(failure.value)


@pytest.mark.parametrize("stale_partial", [False, True], ids=["fresh", "stale-partial"])
def test_404_names_url_status_and_key_and_leaves_no_partial(
    server: ImageServer, tmp_path: Path, stale_partial: bool
) -> None:
    url = server.url("missing.qcow2")
    partial = cache_entry_dir(tmp_path, url) / "missing.qcow2.partial"
    if stale_partial:
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"from an earlier run")

    with pytest.raises(DownloadError) as failure:
        fetch_image(ImageSource(url, "a" * 64), tmp_path)

    message = str(failure.value)
    assert url in message and "404" in message and "nexus:image.url" in message
    assert not isinstance(failure.value, SourceUnreachable)  # it would fail from anywhere
    assert not partial.exists()
    assert entry_files(tmp_path, url) == {"missing.qcow2.lock"}


def test_unreachable_server_names_url_key_and_offline_alternatives(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{IMAGE_NAME}"

    # Out of this machine's reach: a lab's server then has the image sent from the user's.
    with pytest.raises(SourceUnreachable) as failure:
        fetch_image(ImageSource(url, "a" * 64, url_key="lab:image.url"), tmp_path, timeout=5)

    message = str(failure.value)
    assert url in message and "lab:image.url" in message
    assert "file://" in failure.value.hint and "local path" in failure.value.hint
    assert entry_files(tmp_path, url) == {IMAGE_NAME + ".lock"}


def test_timeout_names_url(server: ImageServer, image_bytes: bytes, tmp_path: Path) -> None:
    server.state.stall_seconds = 1.0
    url = server.url()

    with pytest.raises(SourceUnreachable) as failure:
        fetch_image(ImageSource(url, sha256_of(image_bytes)), tmp_path, timeout=0.2)

    assert url in str(failure.value) and "timed out" in str(failure.value).lower()


def test_unsupported_scheme_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as failure:
        fetch_image(ImageSource("ftp://example.org/base.qcow2", "a" * 64), tmp_path)

    assert "ftp" in str(failure.value) and "nexus:image.url" in str(failure.value)


# --- local sources --------------------------------------------------------------------------


@pytest.fixture
def local_image(tmp_path: Path, image_bytes: bytes) -> Path:
    path = tmp_path / "images" / IMAGE_NAME
    path.parent.mkdir()
    path.write_bytes(image_bytes)
    return path


@pytest.mark.parametrize("form", ["file-url", "absolute-path", "tilde-path"])
def test_local_image_is_copied_into_the_cache(
    local_image: Path, image_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    monkeypatch.setenv("HOME", str(local_image.parent.parent))
    url = {
        "file-url": local_image.as_uri(),
        "absolute-path": str(local_image),
        "tilde-path": f"~/images/{IMAGE_NAME}",
    }[form]
    cache_dir = tmp_path / "cache"

    image = fetch_image(ImageSource(url, sha256_of(image_bytes)), cache_dir)

    assert image.path == cache_entry_dir(cache_dir, url) / IMAGE_NAME
    assert image.path.read_bytes() == image_bytes
    assert (image.sha256, image.size) == (sha256_of(image_bytes), len(image_bytes))
    assert local_image.read_bytes() == image_bytes
    assert entry_files(cache_dir, url) == {IMAGE_NAME, IMAGE_NAME + ".lock"}


def test_missing_local_file_names_path_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / IMAGE_NAME

    with pytest.raises(SourceUnreachable) as failure:
        fetch_image(ImageSource(str(missing), "a" * 64, url_key="lab:image.url"), tmp_path / "cache")

    assert str(missing) in str(failure.value) and "lab:image.url" in str(failure.value)


def test_local_copy_with_wrong_digest_leaves_no_partial(local_image: Path, tmp_path: Path) -> None:
    url = local_image.as_uri()
    cache_dir = tmp_path / "cache"

    with pytest.raises(DownloadError) as failure:
        fetch_image(ImageSource(url, "b" * 64), cache_dir)

    assert "b" * 64 in str(failure.value)
    assert entry_files(cache_dir, url) == {IMAGE_NAME + ".lock"}


# --- SHA256SUMS -----------------------------------------------------------------------------


def sums_file(digest: str, line_format: str) -> str:
    other = "f" * 64
    line = line_format.format(digest=digest, name=IMAGE_NAME)
    unrelated = line_format.format(digest=other, name="other.qcow2")
    return f"# checksums\n{unrelated}\n{line}\n"


SUMS_FORMATS = {
    "gnu-text": "{digest}  {name}",
    "gnu-binary": "{digest} *{name}",
    "bsd": "SHA256 ({name}) = {digest}",
}


@pytest.mark.parametrize("line_format", SUMS_FORMATS.values(), ids=SUMS_FORMATS.keys())
def test_digest_is_looked_up_in_sha256sums_over_http(
    server: ImageServer, image_bytes: bytes, tmp_path: Path, line_format: str
) -> None:
    server.state.files["SHA256SUMS"] = sums_file(sha256_of(image_bytes).upper(), line_format).encode()
    source = ImageSource(server.url())

    assert expected_digest(source) == sha256_of(image_bytes)
    image = fetch_image(source, tmp_path)
    assert image.path.read_bytes() == image_bytes


@pytest.mark.parametrize("use_file_url", [True, False], ids=["file-url", "path"])
def test_digest_is_looked_up_in_sha256sums_next_to_a_local_image(
    local_image: Path, image_bytes: bytes, use_file_url: bool
) -> None:
    (local_image.parent / "SHA256SUMS").write_text(sums_file(sha256_of(image_bytes), "{digest} *{name}"))
    url = local_image.as_uri() if use_file_url else str(local_image)

    assert expected_digest(ImageSource(url)) == sha256_of(image_bytes)


def test_sha256sums_without_the_image_names_sums_url_file_and_key(server: ImageServer) -> None:
    server.state.files["SHA256SUMS"] = f"{'c' * 64}  other.qcow2\n".encode()

    with pytest.raises(DownloadError) as failure:
        expected_digest(ImageSource(server.url(), sha256_key="lab:image.sha256"))

    message = str(failure.value)
    assert server.url("SHA256SUMS") in message and IMAGE_NAME in message and "lab:image.sha256" in message


def test_missing_sha256sums_names_its_url_and_the_key(server: ImageServer) -> None:
    with pytest.raises(DownloadError) as failure:
        expected_digest(ImageSource(server.url()))

    message = str(failure.value)
    assert server.url("SHA256SUMS") in message and "404" in message and "nexus:image.sha256" in message


# --- progress -------------------------------------------------------------------------------


def test_progress_increases_and_ends_at_the_total(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    calls: list[tuple[int, int | None]] = []

    fetch_image(
        ImageSource(server.url(), sha256_of(image_bytes)),
        tmp_path,
        progress=lambda d, t: calls.append((d, t)),
    )

    done_values = [done for done, _ in calls]
    assert done_values == sorted(done_values)
    assert {total for _, total in calls} == {len(image_bytes)}
    assert calls[-1] == (len(image_bytes), len(image_bytes))
    assert len(calls) <= len(image_bytes) // CHUNK_SIZE + 2  # throttled to about one call per MiB


def test_progress_without_content_length_reports_the_total_at_the_end(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    server.state.omit_content_length = True
    calls: list[tuple[int, int | None]] = []

    fetch_image(
        ImageSource(server.url(), sha256_of(image_bytes)),
        tmp_path,
        progress=lambda d, t: calls.append((d, t)),
    )

    assert all(total is None for _, total in calls[:-1])
    assert calls[-1] == (len(image_bytes), len(image_bytes))


def test_progress_after_resume_starts_at_the_partial_size(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    source = ImageSource(server.url(), sha256_of(image_bytes))
    server.state.drop_after_bytes_once = 2 * MIB + 100
    with pytest.raises(DownloadError):
        fetch_image(source, tmp_path)
    kept = (cache_entry_dir(tmp_path, server.url()) / (IMAGE_NAME + ".partial")).stat().st_size
    calls: list[tuple[int, int | None]] = []

    fetch_image(source, tmp_path, progress=lambda d, t: calls.append((d, t)))

    assert kept > 0
    assert calls[0] == (kept, len(image_bytes))
    assert calls[-1] == (len(image_bytes), len(image_bytes))


def test_log_progress_prints_at_most_every_two_seconds_and_a_final_line() -> None:
    lines: list[str] = []
    now = [100.0]
    report = log_progress(lines.append, IMAGE_NAME, clock=lambda: now[0])
    total = 270 * MIB

    report(0, total)  # start of the download: sets the baseline, nothing to say yet
    now[0] = 101.0
    report(50 * MIB, total)  # under 2 s since the last line: quiet
    now[0] = 102.0
    report(int(123.4 * MIB), total)
    now[0] = 103.0
    report(200 * MIB, total)  # quiet again
    now[0] = 107.0
    report(total, total)

    assert lines == [
        f"downloading {IMAGE_NAME}: 45% (123.4 MiB of 270.0 MiB, 61.7 MiB/s)",
        f"downloaded {IMAGE_NAME}: 270.0 MiB in 7.0 s (38.6 MiB/s)",
    ]


def test_downloaded_is_not_claimed_when_the_digest_then_fails(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    lines: list[str] = []
    with pytest.raises(DownloadError) as failure:
        fetch_image(ImageSource(server.url(), "0" * 64), tmp_path, progress=log_progress(lines.append))
    assert not [line for line in lines if line.startswith("downloaded")], lines
    # The hint must not offer the digest of bytes known to be wrong as the one to pin.
    assert sha256_of(image_bytes) not in failure.value.hint
    assert "re-run to fetch the image again" in failure.value.hint


def test_local_copy_is_not_claimed_downloaded_when_its_digest_fails(
    local_image: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    with pytest.raises(DownloadError):
        fetch_image(
            ImageSource(str(local_image), "0" * 64), tmp_path / "cache", progress=log_progress(lines.append)
        )
    assert not [line for line in lines if line.startswith("downloaded")], lines


def test_a_resumed_download_reports_the_bytes_it_moved_with_their_rate() -> None:
    lines: list[str] = []
    now = [10.0]
    report = log_progress(lines.append, IMAGE_NAME, clock=lambda: now[0])
    report(200 * MIB, 270 * MIB)  # resumed from a 200 MiB partial
    now[0] = 17.0
    report(270 * MIB, 270 * MIB)
    assert lines == [
        f"downloaded {IMAGE_NAME}: 270.0 MiB, resumed at 200.0 MiB: 70.0 MiB in 7.0 s (10.0 MiB/s)",
    ]


def test_resumed_download_through_fetch_image_says_it_resumed(
    server: ImageServer, image_bytes: bytes, tmp_path: Path
) -> None:
    source = ImageSource(server.url(), sha256_of(image_bytes))
    server.state.drop_after_bytes_once = 2 * MIB + 100
    with pytest.raises(DownloadError):
        fetch_image(source, tmp_path)
    lines: list[str] = []
    fetch_image(source, tmp_path, progress=log_progress(lines.append))
    assert len(lines) == 1 and ", resumed at " in lines[0], lines


# --- an image sent from another machine -----------------------------------------------------


def test_an_image_read_here_is_received_into_a_cache_as_a_download_would_be(
    server: ImageServer, image_bytes: bytes, local_image: Path, tmp_path: Path
) -> None:
    for url in (server.url(), local_image.as_uri()):
        source = ImageSource(url, sha256_of(image_bytes))
        said: list[str] = []
        with source_chunks(source) as (chunks, total, start):
            assert (total, start) == (len(image_bytes), 0)
            image = receive_image(
                source,
                tmp_path / "server-cache",
                chunks,
                sha256_of(image_bytes),
                total=total,
                progress=log_progress(said.append, IMAGE_NAME, verbs=("receiving", "received")),
            )
        assert image.path == cache_entry_dir(tmp_path / "server-cache", url) / IMAGE_NAME
        assert image.path.read_bytes() == image_bytes and image.size == len(image_bytes)
        assert said[-1].startswith(f"received {IMAGE_NAME}: 3.0 MiB in ")
        # The cache then serves it to fetch_image, as if it had been downloaded there.
        assert fetch_image(source, tmp_path / "server-cache") == image
        assert entry_files(tmp_path / "server-cache", url) == {
            IMAGE_NAME,
            IMAGE_NAME + ".lock",
            IMAGE_NAME + ".sha256",
        }


def test_received_bytes_that_are_wrong_leave_nothing(image_bytes: bytes, tmp_path: Path) -> None:
    source = ImageSource("http://images.example/base.qcow2", sha256_of(image_bytes))
    with pytest.raises(DownloadError, match=r"but [0-9a-f]{64} was expected"):
        receive_image(
            source, tmp_path, [image_bytes[:-1] + b"x"], sha256_of(image_bytes), total=len(image_bytes)
        )
    assert entry_files(tmp_path, source.url) == {IMAGE_NAME + ".lock"}


def test_received_bytes_cut_short_are_kept_and_the_next_copy_sends_the_rest(
    image_bytes: bytes, tmp_path: Path
) -> None:
    source = ImageSource("http://images.example/base.qcow2", sha256_of(image_bytes))
    digest, size = sha256_of(image_bytes), len(image_bytes)
    with pytest.raises(DownloadError, match=rf"ended after {MIB} of {size} bytes") as cut:
        receive_image(source, tmp_path, [image_bytes[:MIB]], digest, total=size)
    assert "goes on from there" in cut.value.hint
    assert partial_size(tmp_path, source) == MIB
    # Bytes past the point the sender goes on from are not kept (a copy cut mid-write).
    partial = cache_entry_dir(tmp_path, source.url) / (IMAGE_NAME + ".partial")
    with partial.open("ab") as out:
        out.write(b"half a chunk")
    said: list[str] = []
    image = receive_image(
        source,
        tmp_path,
        [image_bytes[MIB:]],
        digest,
        total=size,
        start=MIB,
        progress=log_progress(said.append, IMAGE_NAME, verbs=("receiving", "received")),
    )
    assert image.path.read_bytes() == image_bytes and image.size == size
    assert said[-1].startswith(f"received {IMAGE_NAME}: 3.0 MiB, resumed at 1.0 MiB: 2.0 MiB in "), said
    assert partial_size(tmp_path, source) == 0


def test_a_copy_cannot_go_on_from_bytes_the_cache_does_not_hold(image_bytes: bytes, tmp_path: Path) -> None:
    source = ImageSource("http://images.example/base.qcow2", sha256_of(image_bytes))
    with pytest.raises(DownloadError, match=rf"holds 0 bytes, not the {MIB} it was to go on from"):
        receive_image(source, tmp_path, [image_bytes[MIB:]], sha256_of(image_bytes), total=None, start=MIB)
    assert partial_size(tmp_path, source) == 0


def test_the_bytes_read_here_begin_where_the_source_can_begin(
    server: ImageServer, image_bytes: bytes, local_image: Path
) -> None:
    size, start = len(image_bytes), MIB + 7
    for url in (server.url(), local_image.as_uri()):
        with source_chunks(ImageSource(url, sha256_of(image_bytes)), start=start) as (chunks, total, begins):
            assert (total, begins) == (size, start) and b"".join(chunks) == image_bytes[start:]
    assert server.state.image_requests()[-1].range_header == f"bytes={start}-"
    # A file shorter than that, or a server without Range support: from the first byte.
    with source_chunks(ImageSource(local_image.as_uri()), start=size + 1) as (chunks, total, begins):
        assert (total, begins) == (size, 0) and b"".join(chunks) == image_bytes
    server.state.ignore_range = True
    with source_chunks(ImageSource(server.url()), start=start) as (chunks, total, begins):
        assert (total, begins) == (size, 0) and b"".join(chunks) == image_bytes
    # Nothing past the start: no bytes, and the copy there is checked as it is.
    server.state.ignore_range = False
    with source_chunks(ImageSource(server.url()), start=size) as (chunks, total, begins):
        assert (total, begins) == (size, size) and list(chunks) == []


def test_an_image_the_cache_has_is_not_received_again(
    image_bytes: bytes, local_image: Path, tmp_path: Path
) -> None:
    source = ImageSource(local_image.as_uri(), sha256_of(image_bytes))
    cached = fetch_image(source, tmp_path / "cache")

    def never() -> Iterator[bytes]:
        raise AssertionError("the bytes were read")
        yield b""

    assert receive_image(source, tmp_path / "cache", never(), cached.sha256, total=None) == cached


def test_reading_a_source_that_is_not_there_says_so(tmp_path: Path) -> None:
    for url in (f"http://127.0.0.1:{closed_port()}/{IMAGE_NAME}", str(tmp_path / "none.qcow2")):
        with (
            pytest.raises(SourceUnreachable, match=r"none\.qcow2|could not download"),
            source_chunks(ImageSource(url, "a" * 64), timeout=5),
        ):
            pass

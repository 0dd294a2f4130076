"""Serve a directory over HTTP on loopback, as a cloud-image server would (image + SHA256SUMS)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@contextmanager
def serving(directory: Path, name: str) -> Iterator[str]:
    """Yield the URL of `name` in `directory`, served until the block ends."""
    with _serving(http.server.SimpleHTTPRequestHandler, directory) as address:
        yield f"{address}/{name}"


@dataclass
class ProxyRequests:
    """What a proxy from `serving_as_proxy` was asked, and a fault to play once."""

    ranges: list[str | None] = field(default_factory=list)  # each GET's Range header
    cut_after_once: int | None = None  # the next body longer than this ends there, mid-transfer


class _ProxyHandler(http.server.SimpleHTTPRequestHandler):
    """An HTTP proxy's GET (`GET http://host/name`) answered from the served directory, from
    byte N for `Range: bytes=N-` (206), as image servers answer a resumed download."""

    requests: ProxyRequests

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        self.requests.ranges.append(wanted)
        path = Path(self.translate_path(urlsplit(self.path).path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        if wanted and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.requests.cut_after_once
        if cut is not None and len(body) > cut:
            self.requests.cut_after_once = None
            body = body[:cut]  # the connection closes short of Content-Length
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_as_proxy(directory: Path, requests: ProxyRequests | None = None) -> Iterator[str]:
    """Yield the URL of an HTTP proxy that answers every http:// URL's path from `directory`:
    with `http_proxy` set to it, a process reaches `http://<any host>/<name>`, which one
    without it cannot (a laptop on a VPN, a lab server without that route). `requests`
    records what it was asked and may cut one answer short."""
    handler = type("ProxyHandler", (_ProxyHandler,), {"requests": requests or ProxyRequests()})
    with _serving(handler, directory) as address:
        yield address


@contextmanager
def _serving(handler: type[http.server.SimpleHTTPRequestHandler], directory: Path) -> Iterator[str]:
    """`http://127.0.0.1:<port>` of a server answering with `handler` from `directory`."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

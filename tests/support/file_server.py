"""Serve a directory over HTTP on loopback, as a cloud-image server would (image + SHA256SUMS)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit


@contextmanager
def serving(directory: Path, name: str) -> Iterator[str]:
    """Yield the URL of `name` in `directory`, served until the block ends."""
    with _serving(http.server.SimpleHTTPRequestHandler, directory) as address:
        yield f"{address}/{name}"


class _ProxyHandler(http.server.SimpleHTTPRequestHandler):
    """An HTTP proxy's GET (`GET http://host/name`) answered from the served directory."""

    def translate_path(self, path: str) -> str:
        return super().translate_path(urlsplit(path).path)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_as_proxy(directory: Path) -> Iterator[str]:
    """Yield the URL of an HTTP proxy that answers every http:// URL's path from `directory`:
    with `http_proxy` set to it, a process reaches `http://<any host>/<name>`, which one
    without it cannot (a laptop on a VPN, a lab server without that route)."""
    with _serving(_ProxyHandler, directory) as address:
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

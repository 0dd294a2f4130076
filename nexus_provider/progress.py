"""What a resource's work says while it runs, shown under that resource by the engine.

The lifecycles report progress on stderr (`lifecycles.say`), which the dynamic providers'
host passes on to the engine. The engine hides a resource plugin's stderr, though (it shows
it only when the plugin fails to start), so this provider sends each line to the engine's
Log service instead, for the resource whose call is running: `for_resource` marks the call
(a context variable, which `asyncio.to_thread` carries into the worker thread), and
`install` puts a stderr in place that forwards the lines written under such a mark. Lines
written outside a resource's call go to the real stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

import grpc
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc

_URN: contextvars.ContextVar[str | None] = contextvars.ContextVar("nexus_resource_urn", default=None)


@contextlib.contextmanager
def for_resource(urn: str) -> Iterator[None]:
    """Lines written to stderr inside this block belong to the resource `urn`."""
    token = _URN.set(urn)
    try:
        yield
    finally:
        _URN.reset(token)


class EngineLog:
    """A stderr that sends each line written during a resource's call to the engine's log."""

    def __init__(self, engine_address: str, fallback: TextIO) -> None:
        self._address = engine_address
        self._fallback = fallback
        self._engine: Any = None
        self._lock = threading.Lock()
        self._partial: dict[tuple[int, str], str] = {}

    def _stub(self) -> Any:
        with self._lock:
            if self._engine is None:
                self._engine = engine_pb2_grpc.EngineStub(grpc.insecure_channel(self._address))
            return self._engine

    def write(self, text: str) -> int:
        urn = _URN.get()
        if urn is None:
            return self._fallback.write(text)
        key = (threading.get_ident(), urn)
        buffered = self._partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        if rest:
            self._partial[key] = rest
        for line in lines:
            self._send(urn, line)
        return len(text)

    def _send(self, urn: str, line: str) -> None:
        if not line.strip():
            return
        try:
            self._stub().Log(engine_pb2.LogRequest(severity=engine_pb2.INFO, message=line, urn=urn))
        except grpc.RpcError:
            self._fallback.write(line + "\n")  # the engine is gone: nothing shows it anyway

    def flush(self) -> None:
        self._fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


def install(engine_address: str) -> None:
    if not isinstance(sys.stderr, EngineLog):
        sys.stderr = EngineLog(engine_address, sys.stderr)

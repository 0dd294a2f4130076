"""The provider's progress reaches the engine's log under the resource whose call runs
(the engine hides a resource plugin's stderr), through a real gRPC engine stand-in."""

from __future__ import annotations

import asyncio
import io
import sys
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import empty_pb2  # type: ignore[import-untyped]
from pulumi.runtime.proto import engine_pb2_grpc

from nexus_components.core.progress import say
from nexus_provider import progress


class Engine(engine_pb2_grpc.EngineServicer):
    def __init__(self) -> None:
        self.logged: list[tuple[str, str]] = []

    def Log(self, request: Any, context: Any) -> Any:
        self.logged.append((request.urn, request.message))
        return empty_pb2.Empty()


def test_lines_said_during_a_resources_call_are_logged_under_it_and_others_stay_on_stderr() -> None:
    engine = Engine()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    engine_pb2_grpc.add_EngineServicer_to_server(engine, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    real, fallback = sys.stderr, io.StringIO()
    sys.stderr = progress.EngineLog(f"127.0.0.1:{port}", fallback)
    try:

        async def call(urn: str, message: str) -> None:
            with progress.for_resource(urn):
                await asyncio.to_thread(say, "docker", message)

        async def both() -> None:
            await asyncio.gather(call("urn:a", "Docker ready"), call("urn:b", "started it"))

        asyncio.run(both())
        say("state", "outside any call")
    finally:
        sys.stderr = real
        server.stop(None)
    assert sorted(engine.logged) == [("urn:a", "[docker] Docker ready"), ("urn:b", "[docker] started it")]
    assert fallback.getvalue() == "[state] outside any call\n"

"""The provider's progress reaches the engine's log under the resource whose call runs
(the engine hides a resource plugin's stderr), through a real gRPC engine stand-in."""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2  # type: ignore[import-untyped]
from pulumi.runtime.proto import engine_pb2_grpc

from nexus_components.core.progress import say
from nexus_provider.provider import NexusProvider


class Engine(engine_pb2_grpc.EngineServicer):
    def __init__(self) -> None:
        self.logged: list[tuple[str, str]] = []

    def Log(self, request: Any, context: Any) -> Any:
        self.logged.append((request.urn, request.message))
        return empty_pb2.Empty()


def test_lines_said_during_a_resources_call_are_logged_under_it_and_others_stay_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = Engine()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    engine_pb2_grpc.add_EngineServicer_to_server(engine, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    provider = NexusProvider()
    provider.attach_engine(f"127.0.0.1:{port}")
    try:

        async def both() -> None:
            await asyncio.gather(
                provider._run("urn:a", say, "docker", "Docker ready"),
                provider._run("urn:b", say, "docker", "started it"),
            )

        asyncio.run(both())
        say("state", "outside any call")
    finally:
        server.stop(None)
    assert sorted(engine.logged) == [("urn:a", "[docker] Docker ready"), ("urn:b", "[docker] started it")]
    assert capsys.readouterr().err == "[state] outside any call\n"

"""Serves the provider to the engine, with our errors shown as their message alone.

`pulumi.provider.experimental.server.main` appends the Python stack of any failed call
to its message. Our errors (`NexusError`) already say what failed, the command and the
next step, so this server answers them with the message only; any other exception (a
bug) keeps the SDK's stack. Same serving steps as `main`: a gRPC server on a free
local port, the port on stdout for the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from pulumi.provider.experimental.provider import Provider
from pulumi.provider.experimental.server import ProviderServicer
from pulumi.runtime.proto import provider_pb2_grpc

from nexus_components.core.errors import NexusError

# What the SDK's own server allows: large schemas and states.
MAX_MESSAGE_BYTES = 400 * 1024 * 1024
Handler = Callable[[Any, Any, Any], Awaitable[Any]]
# How long a call being answered when the engine ends the plugin may still take.
STOP_GRACE_SECONDS = 600.0


class _Run:
    # Set once a call was refused or failed. The engine is then reporting an error to the
    # program as it ends the plugin, and a plugin gone at once can cut that short (the
    # program printed an RPC traceback): such a plugin leaves as the SDK's does.
    answered_an_error = False


def nexus_error(error: BaseException) -> NexusError | None:
    """Our error behind this one: the SDK wraps what a provider raises into a new exception."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, NexusError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _message_only(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def answer(servicer: Any, request: Any, context: Any) -> Any:
        try:
            reply = await handler(servicer, request, context)
        except Exception as error:
            _Run.answered_an_error = True
            ours = nexus_error(error)
            if ours is None:
                raise
            await context.abort(grpc.StatusCode.UNKNOWN, str(ours))
        if getattr(reply, "failures", None):  # Check's refusals
            _Run.answered_an_error = True
        return reply

    return answer


class NexusServicer(ProviderServicer):
    """The SDK's servicer, whose resource calls report our errors as their message."""


for _call in ("Check", "Diff", "Create", "Update", "Read", "Delete", "Construct"):
    setattr(NexusServicer, _call, _message_only(getattr(ProviderServicer, _call)))


def serve(args: Sequence[str], version: str, provider: Provider) -> None:
    parser = argparse.ArgumentParser(description="The nexus Pulumi provider plugin (a gRPC server)")
    parser.add_argument("engine", help="the Pulumi engine's address")
    engine = parser.parse_known_args(args)[0].engine
    attach = getattr(provider, "attach_engine", None)
    if attach is not None:
        attach(engine)

    async def run() -> bool:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        servicer = NexusServicer(list(args), version, provider, engine_address=engine)
        provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        # The engine ends a plugin with SIGINT and waits for it to exit: calls being answered
        # finish and get their answers, then the server stops. A second SIGINT stops the
        # serving at once (the steps still running finish before the process exits), as
        # does the first after an error (see _Run).
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            if _Run.answered_an_error:
                loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt
                signal.raise_signal(signal.SIGINT)
            interrupted.set()

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            stops_on_sigint = True
        except NotImplementedError:  # Windows: SIGINT stays a KeyboardInterrupt, as in the SDK
            stops_on_sigint = False
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        if not stops_on_sigint:
            await server.wait_for_termination()
            return False
        await interrupted.wait()
        interrupted.clear()
        stopping = asyncio.ensure_future(server.stop(grace=STOP_GRACE_SECONDS))
        again = asyncio.ensure_future(interrupted.wait())
        await asyncio.wait([stopping, again], return_when=asyncio.FIRST_COMPLETED)
        return bool(stopping.done())

    stopped = False
    with contextlib.suppress(KeyboardInterrupt):
        stopped = asyncio.run(run())
    if stopped:
        # Nothing is left running: skip the interpreter's teardown of gRPC (most of a
        # preview's shutdown, and stack traces in the engine's log).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

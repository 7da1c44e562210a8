"""The one running server: the real `create_server` (fake bundle unless told otherwise) on a free port of
127.0.0.1 with a real channel, stopped at exit.

`running_server` is for async tests (yields the server and an insecure grpc.aio channel); `serving` runs the very
same context in an event loop on a background thread for sync callers (typed sync client, subprocesses,
grpcurl) and yields the target address."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shopclip.predictions import PredictionLog
from shopclip.server.app import ShopclipServer, create_server
from shopclip.server.config import ServerConfig
from shopclip.server.index_watch import IndexSource
from support.catalogue import FAKE_BUNDLE

HOST = "127.0.0.1"  # the test certificate names this address


def server_config(**overrides: Any) -> ServerConfig:
    """ServerConfig for a test server: the fake bundle on a free port of 127.0.0.1, then `overrides`."""
    return ServerConfig(**{"bundle": FAKE_BUNDLE, "host": HOST, "port": 0, **overrides})


@asynccontextmanager
async def running_server(index_source: IndexSource | None = None, log_double: PredictionLog | None = None,
                         **overrides: Any) -> AsyncIterator[tuple[ShopclipServer, grpc.aio.Channel]]:
    """A started server and an insecure channel to it. `overrides` are ServerConfig fields (index_root, token,
    tls_cert, prediction_log URL, ...); `index_source` replaces the published indexes under index_root (e.g. one
    that loads slowly), `log_double` the log a `prediction_log` URL would open (an in-memory one)."""
    server, port = await create_server(server_config(**overrides), index_source, log_double)
    channel = grpc.aio.insecure_channel(f"{HOST}:{port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)


@contextmanager
def serving(**overrides: Any) -> Iterator[str]:
    """`running_server` in a background event loop; yields "127.0.0.1:<port>"."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="shopclip-test-server", daemon=True)
    thread.start()
    context = running_server(**overrides)
    try:
        server, _ = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(timeout=60)
        try:
            yield f"{HOST}:{server.port}"
        finally:
            asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls `predicate` every 10 ms; AssertionError when it is still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)

"""The one table from domain errors to gRPC status codes, applied by an interceptor (the servicers have no
try/except): anything not in the table is a bug, logged with its traceback and answered INTERNAL with a
generic message. The same interceptor records request counts and latencies, so every RPC, including
refused ones, is measured exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from shopclip.errors import DeadlineExpired, InvalidInput, NotConfigured, NotFound, NotReady, Overloaded
from shopclip.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    NotConfigured: grpc.StatusCode.FAILED_PRECONDITION,
}

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """Status code and details for an exception raised by a servicer."""
    for kind, code in STATUS_CODES.items():
        if isinstance(exc, kind):
            return code, str(exc)
    log.error("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal server error"


@dataclass(frozen=True)
class UndecodableRequest:
    """A request whose bytes protobuf cannot parse (bad UTF-8 from a non-Python client, a truncated field).
    grpc would answer UNKNOWN before any handler ran; as a value it reaches the error table instead."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return deserialize


class ErrorTableInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of unary-unary handlers through `STATUS_CODES` and measures every call."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """method -> (handler, guarded handler): wrap each method once, not on every call."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection): passed through untouched
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._guard(details.method, handler.unary_unary),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _guard(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        metrics = self._metrics

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.CANCELLED  # unless the call ends below
            try:
                if isinstance(request, UndecodableRequest):
                    raise InvalidInput("request", f"does not decode: {request.reason}")
                response = await behaviour(request, context)
                code = grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:  # the handler aborted itself (health Check of an unknown service)
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                code, message = status_for(exc)
                await context.abort(code, message)
            finally:
                metrics.observe_request(method, code.name, time.perf_counter() - started)

        return guarded

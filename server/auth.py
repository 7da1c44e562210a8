"""Bearer-token authentication and TLS credentials.

Every call must carry `authorization: Bearer <token>` metadata, except grpc.health.v1 so that
orchestrators can probe readiness without a secret. A refused call gets UNAUTHENTICATED from a
prebuilt handler of the same streaming kind as the method, without reaching the servicer.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from shopclip.errors import InvalidInput

AUTH_METADATA_KEY = "authorization"
UNAUTHENTICATED_DETAILS = "missing or invalid bearer token"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, open_services: Collection[str]) -> None:
        """`open_services`: fully qualified service names callable without a token."""
        self._expected = f"Bearer {token}".encode()
        self._open_services = frozenset(open_services)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or _service_of(details.method) in self._open_services or self._authorized(details):
            return handler
        return _refusal_like(handler)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                presented = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(presented, self._expected)
        return False


def _service_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service`."""
    return method.lstrip("/").split("/", 1)[0]


async def _refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


async def _refuse_streaming(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
    yield  # pragma: no cover - makes this an async generator, as streaming responses must be


def _refusal_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_refuse, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_refuse_streaming, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(_refuse_streaming, **codec)


def server_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate chain and its private key."""
    return grpc.ssl_server_credentials([(_read(key_path, "tls_key"), _read(cert_path, "tls_cert"))])


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(field, f"cannot read {path}: {exc.strerror}") from None

"""The one exception the client raises for a failed call."""

from __future__ import annotations

import grpc

from shopclip.errors import ShopclipError


class ShopclipRpcError(ShopclipError):
    """A call that failed with a gRPC status: `code` (grpc.StatusCode) and the server's `details`.

    The server's details name the offending field for INVALID_ARGUMENT (e.g. "product.image: ..."),
    so `str(error)` is enough to fix the request.
    """

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "", attempts: int = 1) -> None:
        where = f" ({method}, {attempts} attempts)" if attempts > 1 else (f" ({method})" if method else "")
        super().__init__(f"{code.name}: {details}{where}")
        self.code = code
        self.details = details
        self.method = method
        self.attempts = attempts

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, method: str, attempts: int) -> "ShopclipRpcError":
        details = error.details() if callable(getattr(error, "details", None)) else None
        return cls(status_code(error), details or str(error), method, attempts)


def status_code(error: grpc.RpcError) -> grpc.StatusCode:
    """Errors of unary calls carry code() (sync: a grpc.Call; aio: AioRpcError, which is not one)."""
    return error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN

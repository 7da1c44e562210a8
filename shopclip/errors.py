"""Domain errors shared by every layer.

Model, index, catalogue and training code raise these; the server maps them to gRPC status codes in
one table (server/errors.py) and the CLI maps them to one-line messages (shopclip/cli.py). Messages
name the offending field so a caller can fix the request without reading logs.
"""

from __future__ import annotations


class ShopclipError(Exception):
    """Base class for errors that are the caller's or the environment's, not a bug."""


class InvalidInput(ShopclipError):
    """The request or a data row is malformed. `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidConfig(InvalidInput, ValueError):
    """A model or training option is out of range or names nothing known; `field` is the option's name
    (its CLI flag with dashes). Also a ValueError, as configuration mistakes were before."""


class NotFound(ShopclipError):
    """A referenced object (productid, bundle, index version) does not exist."""


class Overloaded(ShopclipError):
    """A bounded queue is full; the caller should back off and retry."""


class NotReady(ShopclipError):
    """The model or index is not loaded yet, or the server is draining; or a service it needs (the object
    store) cannot be reached right now."""


class AccessDenied(ShopclipError):
    """A service (the object store) refused the credentials given, or none were found."""


class Busy(ShopclipError):
    """Another process holds an exclusive lock (for example a second index builder)."""


class DeadlineExpired(ShopclipError):
    """The caller's deadline passed while its request waited: it was dropped before the forward."""


class PublishRefused(ShopclipError):
    """The approximate index missed the recall floor; the previous version stays current."""


class NotConfigured(ShopclipError):
    """The call needs a part this deployment was started without (feedback without a prediction log): retrying
    will not help, the operator has to configure it."""


class PromotionRefused(ShopclipError):
    """The promotion gate refused a challenger; the champion stays. `decision` is what the registry recorded."""

    def __init__(self, message: str, decision: dict | None = None) -> None:
        super().__init__(message)
        self.decision = decision or {}


EXIT_CODES: dict[type[ShopclipError], int] = {
    InvalidInput: 2,
    NotFound: 3,
    NotReady: 4,
    Overloaded: 5,
    Busy: 6,
    PublishRefused: 7,
    AccessDenied: 8,
    PromotionRefused: 9,
    NotConfigured: 10,
}
"""The one table from domain error to process exit status (every command and the index job use it), the CLI
twin of server/errors.py. Any other ShopclipError exits 1."""


def exit_code(error: ShopclipError | type[ShopclipError]) -> int:
    kind = error if isinstance(error, type) else type(error)
    return next((code for base, code in EXIT_CODES.items() if issubclass(kind, base)), 1)


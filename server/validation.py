"""Request-level limits (top_k, products per call, ids), checked before a request joins a batch.

What a product may hold (text lengths, image formats and sizes, the text-or-image rule) is
`shopclip.input_policy`'s, shared with catalogue ingest and preprocessing. Each check raises
`InvalidInput` naming the field as the caller spelled it (`top_k`, `products`).
"""

from __future__ import annotations

import re

from shopclip.errors import InvalidInput

REQUEST_ID = re.compile(r"[0-9a-f]{32}")
"""What `shopclip.predictions.new_id` hands out in ClassifyResponse.request_id."""
MAX_ACTOR_CHARS = 200


def check_top_k(value: int, limit: int, field: str = "top_k") -> None:
    if not 1 <= value <= limit:
        raise InvalidInput(field, f"must be in 1..{limit}, got {value}")


def check_count(count: int, limit: int, field: str = "products") -> None:
    if count == 0:
        raise InvalidInput(field, "at least one product is required")
    if count > limit:
        raise InvalidInput(field, f"{count} products, at most {limit} per call")


def check_productid(value: int, field: str = "productid") -> None:
    if value < 0:
        raise InvalidInput(field, f"must be >= 0, got {value}")


def check_request_id(value: str, field: str = "request_id") -> None:
    if not REQUEST_ID.fullmatch(value):
        raise InvalidInput(field, f"not an id of 32 lowercase hex digits (as ClassifyResponse.request_id): "
                                  f"{value[:64]!r}")


def check_actor(value: str, field: str = "actor") -> None:
    if len(value) > MAX_ACTOR_CHARS:
        raise InvalidInput(field, f"{len(value)} characters, at most {MAX_ACTOR_CHARS}")

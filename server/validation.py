"""Request-level limits (top_k, products per call), checked before a request joins a batch.

What a product may hold (text lengths, image formats and sizes, the text-or-image rule) is
`shopclip.input_policy`'s, shared with catalogue ingest and preprocessing. Each check raises
`InvalidInput` naming the field as the caller spelled it (`top_k`, `products`).
"""

from __future__ import annotations

from shopclip.errors import InvalidInput


def check_top_k(value: int, limit: int, field: str = "top_k") -> None:
    if not 1 <= value <= limit:
        raise InvalidInput(field, f"must be in 1..{limit}, got {value}")


def check_count(count: int, limit: int, field: str = "products") -> None:
    if count == 0:
        raise InvalidInput(field, "at least one product is required")
    if count > limit:
        raise InvalidInput(field, f"{count} products, at most {limit} per call")

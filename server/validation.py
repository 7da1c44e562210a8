"""Request limits, checked before a request joins a batch, so one bad product never costs others a forward.

Each check raises `InvalidInput` naming the field as the caller spelled it (`product.image`,
`products[3].designation`, `top_k`). Images are only opened, never decoded here: Pillow reads the
header, which is enough to reject undecodable files and decompression bombs cheaply on the event loop;
the model's preprocessing decodes later and raises `InvalidInput(field="image")` for the rest
(truncated data, for example).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shopclip.errors import InvalidInput
from shopclip.products import ProductInput

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_image_pixels: int
    max_designation_chars: int
    max_description_chars: int


def check_product(product: ProductInput, limits: Limits, field: str) -> None:
    """`field` is the product's name in the request, e.g. `product` or `products[3]`."""
    if not product.has_text and not product.has_image:
        raise InvalidInput(f"{field}.designation", "a product needs a designation, a description or an image")
    check_length(product.designation, limits.max_designation_chars, f"{field}.designation")
    check_length(product.description, limits.max_description_chars, f"{field}.description")
    if product.image is not None:
        check_image(product.image, limits, f"{field}.image")


def check_length(text: str, limit: int, field: str) -> None:
    if len(text) > limit:
        raise InvalidInput(field, f"{len(text)} characters, at most {limit} accepted")


def check_image(data: bytes, limits: Limits, field: str) -> None:
    if not data:
        raise InvalidInput(field, "empty image: leave the field unset instead")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(field, f"{len(data)} bytes, at most {limits.max_image_bytes} accepted")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:  # header only, no pixel decoding
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise InvalidInput(field, f"decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(field, f"not a decodable {'/'.join(IMAGE_FORMATS)} image ({exc})") from None
    if width * height > limits.max_image_pixels:
        raise InvalidInput(field, f"decompression bomb: {width}x{height} pixels, "
                                  f"at most {limits.max_image_pixels} accepted")


def check_top_k(value: int, limit: int, field: str = "top_k") -> None:
    if not 1 <= value <= limit:
        raise InvalidInput(field, f"must be in 1..{limit}, got {value}")


def check_count(count: int, limit: int, field: str = "products") -> None:
    if count == 0:
        raise InvalidInput(field, "at least one product is required")
    if count > limit:
        raise InvalidInput(field, f"{count} products, at most {limit} per call")

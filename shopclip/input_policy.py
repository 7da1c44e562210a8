"""What shopclip accepts as a product: limits, image formats, the text-or-image rule and image header checks.

One module, used at every entrance: the server checks each request before it joins a batch, catalogue
ingest checks each row before it enters the catalogue, and preprocessing opens images through the same
checks. So the catalogue never holds a product that Classify would refuse, and a limit raised by an
operator (`--max-image-bytes`) is the limit everywhere.

Every check raises `InvalidInput` naming the field as the caller spells it (`product.image`,
`products[3].designation`, `designation` for a catalogue row).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shopclip.errors import InvalidInput
from shopclip.products import ProductInput
from shopclip.settings import option

if TYPE_CHECKING:
    from PIL import Image

# Pillow is imported where an image is read, not here: the CLI and the server's config import the limits.

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class ProductLimits:
    """Defaults sit far above real catalogue products (designations up to 250 characters, descriptions up
    to ~8,000, 500x500 JPEGs of a few dozen KB) and far below what exhausts memory."""

    max_designation_chars: int = option(1_000, "longest accepted designation")
    max_description_chars: int = option(20_000, "longest accepted description")
    max_image_bytes: int = option(10 * 1024 * 1024, "largest accepted encoded image")
    max_image_pixels: int = option(40_000_000, "largest accepted image area (decompression-bomb guard)")
    """About 6300x6300: a few KB of PNG can announce gigapixels."""

    def __post_init__(self) -> None:
        for name in ("max_designation_chars", "max_description_chars", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise InvalidInput(name, f"must be >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = ProductLimits()


def check_product(product: ProductInput, limits: ProductLimits = DEFAULT_LIMITS, field: str = "product") -> None:
    """The whole policy for one product; `field` is its name in the request (`product`, `products[3]`)."""
    check_text(product.designation, product.description, product.has_image, limits, field)
    if product.image is not None:
        check_image(product.image, limits, f"{field}.image")


def check_text(designation: str, description: str, has_image: bool, limits: ProductLimits = DEFAULT_LIMITS,
               field: str = "product") -> None:
    """The text-or-image rule and the text lengths. `field` prefixes the names (`product.designation`);
    an empty `field` names bare columns (`designation`), as catalogue rows do."""
    prefix = f"{field}." if field else ""
    if not has_content(designation, description, has_image):
        raise InvalidInput(f"{prefix}designation", "a product needs a designation, a description or an image")
    _check_length(designation, limits.max_designation_chars, f"{prefix}designation")
    _check_length(description, limits.max_description_chars, f"{prefix}description")


def has_content(designation: str, description: str, has_image: bool) -> bool:
    """The text-or-image rule: something the model can read (blank text does not count)."""
    return bool(designation.strip() or description.strip() or has_image)


def _check_length(text: str, limit: int, field: str) -> None:
    if len(text) > limit:
        raise InvalidInput(field, f"{len(text)} characters, at most {limit} accepted")


def check_image(data: bytes, limits: ProductLimits = DEFAULT_LIMITS, field: str = "image") -> tuple[int, int]:
    """Size, format and announced dimensions, from the header only (cheap enough for the event loop).
    Returns (width, height). Truncated pixel data passes here and fails in `open_image`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(field, f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidInput(field, "empty image: leave the field unset instead")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(field, f"{len(data)} bytes, at most {limits.max_image_bytes} accepted")
    from PIL import Image

    with _reading_image(field):
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            return _check_dimensions(image, limits, field)


def open_image(data: bytes, limits: ProductLimits = DEFAULT_LIMITS, field: str = "image") -> "Image.Image":
    """`check_image`, then the full decode (EXIF orientation applied; an animation's first frame)."""
    from PIL import Image, ImageOps

    check_image(data, limits, field)
    with _reading_image(field):
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        image.load()
        return ImageOps.exif_transpose(image)


def check_image_file(path: Path, limits: ProductLimits = DEFAULT_LIMITS, field: str = "image",
                     decode: bool = True) -> None:
    """A catalogue image file as Classify would take it: the header checks of `check_image`, then (with
    `decode`) a full decode, so a file that would fail at embedding time is caught at ingest."""
    if not path.is_file():
        raise InvalidInput(field, f"image file missing: {path.name}")
    size = path.stat().st_size
    if size > limits.max_image_bytes:  # before reading it: an oversized file is refused unread
        raise InvalidInput(field, f"{size} bytes, at most {limits.max_image_bytes} accepted")
    data = path.read_bytes()
    if decode:
        open_image(data, limits, field)
    else:
        check_image(data, limits, field)


@contextmanager
def _reading_image(field: str) -> Iterator[None]:
    """Pillow's many failure types become one `InvalidInput(field)`; decompression-bomb warnings are errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(field, f"not a decodable image (accepted: {', '.join(ACCEPTED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(field, f"decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt files
        raise InvalidInput(field, f"corrupt image: {exc}") from None


def _check_dimensions(image: "Image.Image", limits: ProductLimits, field: str) -> tuple[int, int]:
    width, height = image.size
    if width == 0 or height == 0:
        raise InvalidInput(field, "image has no pixels")
    if width * height > limits.max_image_pixels:
        raise InvalidInput(field, f"decompression bomb: {width}x{height} pixels, "
                                  f"at most {limits.max_image_pixels} accepted")
    return width, height

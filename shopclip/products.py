"""The one product record that flows from catalogue files and requests into the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductInput:
    """What the model sees of a product. At least one of `designation` or `image` must be present.

    `image` is the encoded file (JPEG/PNG/WebP bytes) exactly as received: decoding and validation
    happen in `shopclip.model.preprocess`, which raises `InvalidInput(field="image", ...)`.
    """

    designation: str = ""
    description: str = ""
    image: bytes | None = None

    @property
    def has_text(self) -> bool:
        return bool(self.designation.strip() or self.description.strip())

    @property
    def has_image(self) -> bool:
        return self.image is not None

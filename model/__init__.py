"""Model core: two-tower CLIP (text + image) with a linear head, bundles, preprocessing. No grpc here."""

from __future__ import annotations

from shopclip.input_policy import DEFAULT_LIMITS, ProductLimits
from shopclip.model.embedder import Embedder, FakeEmbedder

__all__ = ["Embedder", "FakeEmbedder", "load_embedder"]


def load_embedder(spec: str, device: str | None = None, limits: ProductLimits = DEFAULT_LIMITS,
                  read_image_words: bool = True) -> Embedder:
    """The one factory for embedders.

    `spec` is a model bundle directory, or `fake` / `fake:dim=64,classes=1200[,release=b]` for the deterministic
    test double. `device` is `cpu`, `cuda` or None (CUDA when available). `limits` is the input policy the
    embedder checks products and decodes images under. `read_image_words`: where the model has an OCR view, read
    the words on the image of a product without text (off: such products are classified as if none were read).
    """
    if spec == "fake" or spec.startswith("fake:"):
        options = dict(part.split("=", 1) for part in spec[5:].split(",") if part)
        return FakeEmbedder(dim=int(options.get("dim", 32)), codes=range(int(options.get("classes", 27))),
                             limits=limits, release=options.get("release", ""))
    from shopclip.model.bundle import load_bundle_embedder  # torch is imported only for real bundles

    # its `source` is `spec` as given
    return load_bundle_embedder(spec, device=device, limits=limits, read_image_words=read_image_words)

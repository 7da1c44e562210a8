"""A small real model bundle (n-gram text tower, EfficientNet-Lite0 image tower at 64 px, randomly initialised:
no pretrained weights), saved and loaded like a trained one. Unlike the fake embedder it decodes images, so
tests of what the model's preprocessing does with bytes (truncated, CMYK, 16-bit, animated) need it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TINY_BUNDLE_CODES = tuple(range(100, 160))


def tiny_bundle(folder: Path, codes: Sequence[int] = TINY_BUNDLE_CODES, knn_k: int = 4,
                metrics: dict[str, float] | None = None) -> str:
    """Writes the bundle under `folder` and returns its path (a `--bundle` value). A few seconds (torch)."""
    import torch

    from shopclip.model.bundle import save_bundle
    from shopclip.model.clip import build_model
    from shopclip.model.config import ModelConfig
    from shopclip.model.knn import KnnParams

    torch.manual_seed(3)
    model = build_model(ModelConfig(text_towers=["ngram"], ngram_buckets=2**10, ngram_dim=16, image_size=64,
                                    image_extra_trunks=[], image_pretrained=False, embed_dim=32,
                                    codes=list(codes))).eval()
    metadata = {"knn": KnnParams(k=knn_k, weight=0.2).to_dict(), "metrics": metrics or {"test_weighted_f1": 0.61}}
    return str(save_bundle(folder / "bundle", model, metadata=metadata))

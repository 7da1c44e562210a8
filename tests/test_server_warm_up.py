"""A model is warmed up on a text and an image before it serves, so neither path's first request pays for lazy
initialisation (the image trunks' inference graph is built on first use)."""

from __future__ import annotations

import pytest

from shopclip.model import load_embedder
from shopclip.model.preprocess import decode_image
from shopclip.server import app
from shopclip.server.config import ServerConfig


def test_a_loaded_model_has_embedded_a_text_and_an_image(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []

    def recording(bundle: str, device: str, limits, read_image_words=True):  # noqa: ANN001, ANN202 - load_embedder's
        embedder = load_embedder(bundle, device, limits, read_image_words)
        real = embedder.embed
        embedder.embed = lambda products: seen.extend(products) or real(products)
        return embedder

    monkeypatch.setattr(app, "load_embedder", recording)
    app.load_and_warm_up("fake:dim=8,classes=3", ServerConfig(bundle="fake:dim=8,classes=3"))
    assert any(p.has_text and p.image is None for p in seen)
    images = [p.image for p in seen if p.image is not None and not p.has_text]
    assert images and decode_image(images[0]).size == (64, 64)  # a real image the preprocessing accepts

"""The fake embedder (the one `FAKE_BUNDLE` loads) slowed down, recording, or failing: for tests of batching,
deadlines, draining and the error table. Install one with `install_embedder`, which replaces the server's
`load_embedder` for the test."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from shopclip.model import FakeEmbedder
from shopclip.products import ProductInput


class SlowEmbedder(FakeEmbedder):
    """FakeEmbedder whose forward takes `delay_s` and records every designation and batch size it saw;
    with `fail_with`, every forward raises that exception after the delay."""

    def __init__(self, delay_s: float, fail_with: Exception | None = None) -> None:
        super().__init__(dim=32, codes=range(27))  # the same vectors and fingerprint as FAKE_BUNDLE
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.seen: list[str] = []
        self.batch_sizes: list[int] = []

    def embed(self, products: Sequence[ProductInput]) -> np.ndarray:
        self.seen.extend(p.designation for p in products)
        self.batch_sizes.append(len(products))
        time.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return super().embed(products)


def install_embedder(monkeypatch: pytest.MonkeyPatch, embedder: FakeEmbedder) -> FakeEmbedder:
    """Servers created during the test load `embedder` whatever their bundle spec says."""
    from shopclip.server import app

    monkeypatch.setattr(app, "load_embedder", lambda spec, device=None, limits=None, read_image_words=True: embedder)
    return embedder

"""Text towers: the encoders the text side of the two-tower model is assembled from.

A tower turns product texts (already built by `shopclip.model.text.product_text`) into one
unnormalised vector each. Tokenising is separate from the forward pass so that training can tokenise
once, move plain tensors to the device, and cache the outputs of frozen towers.

Every tensor `tokenize` returns has the batch as its first dimension, so a caller may index rows of
a tokenised batch (`{k: v[rows] for k, v in batch.items()}`) and pass the result to `forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TextTower(Protocol):
    """What `model/clip.py` needs of a text tower (an `nn.Module`)."""

    name: str
    """Registry name: "use", "ngram", "open_clip"."""
    output_dim: int
    pretrained: bool
    """True when the weights come from a pretrained model: such towers get the lower learning rate and
    are the ones frozen by `freeze_towers`; trained-from-scratch towers always stay trainable."""

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tensors only, batch first, ready for `.to(device)`."""
        ...

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, output_dim) float, unnormalised."""
        ...


def _build_use(**options: object) -> nn.Module:
    from shopclip.model.use_tower import UseTower

    return UseTower(**options)


def _build_e5(**options: object) -> nn.Module:
    from shopclip.model.e5_tower import E5Tower

    return E5Tower(**options)


def _build_ngram(**options: object) -> nn.Module:
    from shopclip.model.ngram_tower import NgramTower

    return NgramTower(**options)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"use": _build_use, "ngram": _build_ngram, "e5": _build_e5}


def text_tower_names() -> list[str]:
    return sorted(_BUILDERS)


def build_text_tower(name: str, **options: object) -> nn.Module:
    """The one factory for text towers.

    `options` are the tower's constructor arguments: `use` takes `max_tokens` and `pretrained`
    (False skips reading the npz, for towers whose weights come from a bundle next); `ngram` takes
    `buckets`, `dim`, `word_ngrams`, `char_ngrams`. Raises ValueError naming the known towers.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown text tower {name!r}; known: {', '.join(text_tower_names())}") from None
    return builder(**options)

"""The top layers of e5-small fine-tuned for the catalogue's codes: a text view of their own.

Frozen e5 + logistic regression reads a general-purpose sentence vector; fine-tuning lets the top layers
learn which words of a listing decide its code (bench/accuracy.py measures what it adds; figures in the
README). Only the top is tuned, and it starts from the
pretrained layers: it reads the frozen tower's hidden states at `start`, which serving computes anyway
for the frozen e5 output, so the tuned view costs `layers` extra layers per product, not a second tower.

`E5TunedTop(hidden at start, attention mask)` -> (n, 384) L2-normalised pooled output; its classifier is
stored in the ensemble as a `DenseView` over that output (`training.tune_e5.tuned_view`), so the view needs no new
serving code. The bundle keeps these layers in model.safetensors (they are no package's weights).
"""

from __future__ import annotations

import torch
from torch import nn

from shopclip.model.e5_tower import HIDDEN, LAYERS, E5Layer, E5Tower, run_layers

E5_TUNED = "e5_tuned"
"""Feature key and view name."""
LOGIT_SCALE = 10.0
"""Fixed scale of the classifier's input (the pooled output is unit length): cosine logits need it to
reach confident probabilities; learning it as well changes nothing measurable."""


class E5TunedTop(nn.Module):
    def __init__(self, layers: int, num_classes: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not 1 <= layers <= LAYERS:
            raise ValueError(f"e5_tuned_layers must be in [1, {LAYERS}] (0 turns the view off), got {layers}")
        self.start = LAYERS - layers
        self.layers = nn.ModuleList(E5Layer() for _ in range(layers))
        self.classifier = nn.Linear(HIDDEN, num_classes)
        self.to(dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.layers[0].qkv.weight.dtype

    @torch.no_grad()
    def start_from(self, tower: E5Tower) -> None:
        """Copy the pretrained layers the top replaces; the classifier starts at zero (uniform scores)."""
        for mine, pretrained in zip(self.layers, tower.layers[self.start:]):
            mine.load_state_dict(pretrained.state_dict())
        self.classifier.weight.zero_()
        self.classifier.bias.zero_()

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`hidden` from `tower.hidden_states(batch, self.start)` -> (n, 384) float32 unit vectors."""
        return run_layers(self.layers, hidden, attention_mask)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled.to(self.classifier.weight.dtype) * LOGIT_SCALE)

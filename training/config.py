"""`TrainConfig`: every training choice that is not architecture (that is `ModelConfig`).

Kept free of torch imports so the CLI can take its defaults from here without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class TrainConfig:
    """Everything about a training run except the architecture (that is `ModelConfig`)."""

    epochs: int = 12
    """Most epochs of the selection run; the cosine schedule spans them. The best validation epoch is kept."""
    patience: int = 4
    """Stop the selection run after this many epochs without a better validation weighted F1."""
    refit: bool = True
    """After choosing on validation, train again on every non-test product (validation included) for the
    chosen number of epochs, and refit the views on them: the shipped model learns from every label."""
    batch_size: int = 64
    lr: float = 5e-3
    """Learning rate of the parts trained from scratch: n-gram tower, projections, head, logit scale.
    Chosen on validation weighted F1 (head + k-NN) of /work/shared/data: 1e-3 < 2e-3 < 5e-3 > 1e-2."""
    tower_lr: float = 2e-5
    """Learning rate of the pretrained towers when they are not frozen."""
    weight_decay: float = 0.1
    """Strong enough to curb the hashed n-gram table's memorising (0.01: -0.015 val F1; 0.3: no better)."""
    warmup_fraction: float = 0.1
    clip_weight: float = 0.5
    fused_weight: float = 1.0
    modality_weight: float = 0.5
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5
    """0: no class weights, 1: fully balanced (inverse frequency); 0.5 is a softer compromise."""
    ngram_idf: bool = False
    """Weight the n-gram tower's n-grams by IDF fitted on the training texts (as TF-IDF does). Off by default:
    on /work/shared/data it did not help (best val weighted F1 0.595 with, 0.605 without; zero-initialised
    buckets 0.591), as the learned bucket vectors already down-weight uninformative n-grams."""
    freeze_towers: bool | None = None
    """None: frozen and cached on CPU, fine-tuned on CUDA."""
    seed: int = 0
    split_fractions: tuple[float, float] = (0.15, 0.0)
    """(validation, test) share of each class's products. Validation chooses epochs, k-NN and the view
    weights; a test share (off by default) is held out of everything for `shopclip evaluate`."""
    sparse_c: tuple[float, ...] = (0.25, 0.5, 1.0)
    """Candidate C of the LinearSVC on TF-IDF (the sparse text view), chosen on validation."""
    text_view_c: tuple[float, ...] = (3.0, 10.0, 30.0)
    """Candidate C of the logistic regression on each pretrained text tower's output."""
    image_view_c: tuple[float, ...] = (1.0, 3.0, 10.0)
    """Candidate C of the logistic regression on the image trunk's output."""
    e5_tune_epochs: int = 6
    """Most epochs of fine-tuning the e5 top (ModelConfig.e5_tuned_layers); validation chooses the best."""
    e5_tune_lr: float = 1e-4
    """Learning rate of the tuned e5 layers: higher than a full fine-tune's, as only the top learns."""
    e5_tune_head_lr: float = 2e-3
    """Learning rate of the tuned e5 top's new classifier."""
    feature_cache: str | None = None
    """Folder keeping frozen towers' outputs per product across runs (benchmarks, repeated training); keyed
    by the model config and the model code, so a change to either computes them again."""
    device: str | None = None
    workers: int = 0
    """DataLoader workers decoding images when towers are fine-tuned."""
    text_batch: int = 64
    image_batch: int | None = None
    """Images per forward pass when caching the frozen image trunk; None: 1 on CPU (EfficientNet-Lite0's
    depthwise convolutions are fastest per image there), 64 on CUDA."""
    embed_batch: int | None = None
    """Products per forward pass when embedding with live towers (validation, evaluation); None: 8 on CPU
    (small image batches, yet enough texts per USE call), 128 on CUDA."""

    def resolved_device(self) -> "torch.device":
        import torch

        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def frozen(self, device: "torch.device") -> bool:
        return device.type == "cpu" if self.freeze_towers is None else self.freeze_towers

    def image_batch_for(self, device: "torch.device") -> int:
        return self.image_batch or (1 if device.type == "cpu" else 64)

    def embed_batch_for(self, device: "torch.device") -> int:
        return self.embed_batch or (8 if device.type == "cpu" else 128)

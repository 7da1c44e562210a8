"""`TrainConfig`: every training choice that is not architecture (that is `ModelConfig`).

Kept free of torch imports so the CLI can take its defaults from here without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shopclip.errors import InvalidConfig
from shopclip.settings import option

if TYPE_CHECKING:
    import torch


@dataclass
class TrainConfig:
    """Everything about a training run except the architecture (that is `ModelConfig`)."""

    epochs: int = option(12, "most epochs of the selection run (the best validation epoch is kept)")
    """Most epochs of the selection run; the cosine schedule spans them. The best validation epoch is kept."""
    patience: int = option(4, "stop the selection run after this many epochs without a better validation F1")
    """Stop the selection run after this many epochs without a better validation weighted F1."""
    refit: bool = option(True, "after choosing on validation, train again on training + validation products")
    """After choosing on validation, train again on every non-test product (validation included) for the
    chosen number of epochs, and refit the views on them: the shipped model learns from every label."""
    batch_size: int = option(64, "products per training step")
    lr: float = option(5e-3, "learning rate of the n-gram tower, projections and head")
    """Learning rate of the parts trained from scratch: n-gram tower, projections, head, logit scale.
    Chosen on validation weighted F1 (head + k-NN) of /work/shared/data: 1e-3 < 2e-3 < 5e-3 > 1e-2."""
    tower_lr: float = option(2e-5, "learning rate of pretrained towers when fine-tuned")
    """Learning rate of the pretrained towers when they are not frozen."""
    weight_decay: float = option(0.1, "AdamW weight decay")
    """Strong enough to curb the hashed n-gram table's memorising (0.01: -0.015 val F1; 0.3: no better)."""
    warmup_fraction: float = option(0.1, "share of the steps that warm the learning rate up")
    clip_weight: float = option(0.5, "weight of open_clip's ClipLoss between text and image")
    fused_weight: float = option(1.0, "weight of the head's cross-entropy on the fused embedding")
    modality_weight: float = option(0.5, "weight of the head's cross-entropy on text-only and image-only embeddings")
    label_smoothing: float = option(0.1, "label smoothing of the head's cross-entropy")
    class_weight_power: float = option(0.5, "class weights = (1/frequency)**power; 0 disables them")
    """0: no class weights, 1: fully balanced (inverse frequency); 0.5 is a softer compromise."""
    ngram_idf: bool = option(False, "weight the n-gram tower's n-grams by IDF fitted on the training texts")
    """Weight the n-gram tower's n-grams by IDF fitted on the training texts (as TF-IDF does). Off by default:
    on /work/shared/data it did not help (best val weighted F1 0.595 with, 0.605 without; zero-initialised
    buckets 0.591), as the learned bucket vectors already down-weight uninformative n-grams."""
    freeze_towers: bool | None = option(None, "freeze pretrained towers and cache their outputs (default: on CPU only)")
    """None: frozen and cached on CPU, fine-tuned on CUDA."""
    seed: int = option(0, "seed of the split and of training")
    val_fraction: float = option(0.15, "share of each class's products that chooses epochs, k-NN and the "
                                       "views' weights")
    test_fraction: float = option(0.0, "share held out of everything for `shopclip evaluate` (0: the bundle "
                                       "learns from all)")
    sparse_c: tuple[float, ...] = option((0.25, 0.5, 1.0), "candidate C of the LinearSVC on TF-IDF (the sparse "
                                                           "text view)")
    text_view_c: tuple[float, ...] = option((3.0, 10.0, 30.0), "candidate C of the logistic regression on each "
                                                               "pretrained text tower's output")
    image_view_c: tuple[float, ...] = option((1.0, 3.0, 10.0), "candidate C of the logistic regression on the "
                                                               "image trunk's output")
    image_knn_dims: int = option(128, "whitened dimensions of the image neighbour view's memory (0: no such "
                                      "view)")
    """The image neighbour view (`shopclip.model.ensemble.NeighbourView`): the vote of the nearest labelled
    training images in a whitened projection of the trunk's output, kept in the bundle."""
    ocr_view: bool = option(True, "read the words on the images of products without text (Tesseract OCR) "
                                  "and fit the OCR view on them")
    """The OCR view (`shopclip.model.ocr`): left out, with a warning, where Tesseract or its French data is
    missing; the bundle records whether it has one."""
    image_knn_k: int = option(30, "neighbours that vote in the image neighbour view")
    image_knn_temperature: float = option(0.1, "softmax temperature over the image neighbours' similarities")
    e5_tune_epochs: int = option(6, "most epochs of fine-tuning the e5 top (the best validation epoch is kept)")
    """Most epochs of fine-tuning the e5 top (ModelConfig.e5_tuned_layers); validation chooses the best."""
    e5_tune_lr: float = option(1e-4, "learning rate of the tuned e5 layers")
    """Learning rate of the tuned e5 layers: higher than a full fine-tune's, as only the top learns."""
    e5_tune_head_lr: float = option(2e-3, "learning rate of the tuned e5 top's classifier")
    """Learning rate of the tuned e5 top's new classifier."""
    feature_cache: str | None = option(None, "folder keeping frozen towers' outputs per product across runs")
    """Folder keeping frozen towers' outputs per product across runs (benchmarks, repeated training); keyed
    by the model config and the model code, so a change to either computes them again."""
    keep_vectors: str | None = option(None, "folder to keep the new model's vectors of the products it learnt "
                                            "from in, for the promotion gate and the index build to reuse")
    """Folder where the vectors of the products learnt from are kept by model fingerprint and product content
    (indexer/known_vectors.py), so the gate and the index build that follow do not embed them again; the drop
    flow passes its own. None: not kept."""
    device: str | None = option(None, "cpu or cuda (default: cuda when available)")
    threads: int | None = option(None, "CPU threads of training (default: torch's own, every core); on cores a "
                                       "server also uses, fewer leave it its share")
    """torch's CPU threads for the whole run. Two OpenMP teams spinning on the same cores (a server's and
    training's) slow both by far more than half (bench/drop.py --retrain), so a box that also serves trains on
    fewer threads than it has cores."""
    workers: int = option(0, "image-decoding DataLoader workers when towers are fine-tuned")
    """DataLoader workers decoding images when towers are fine-tuned."""
    text_batch: int = option(64, "texts per forward pass when caching frozen text towers")
    image_batch: int | None = option(None, "images per forward pass when caching the frozen image trunk")
    """Images per forward pass when caching the frozen image trunk; None: model.bundle's CPU image batch (the
    trunks' inference graph is fastest per image at a few images), 64 on CUDA."""
    embed_batch: int | None = option(None, "products per forward pass when embedding with live towers")
    """Products per forward pass when embedding with live towers (validation, evaluation); None: 8 on CPU
    (small image batches, yet enough texts per USE call), 128 on CUDA."""

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InvalidConfig(name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise InvalidConfig("val_fraction", "validation and test shares leave nothing to train on")
        for name in ("sparse_c", "text_view_c", "image_view_c"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise InvalidConfig(name, f"expected positive candidates, got {values}")
        if self.threads is not None and self.threads < 1:
            raise InvalidConfig("threads", f"must be >= 1, got {self.threads}")
        for name in ("epochs", "batch_size", "e5_tune_epochs", "image_knn_k"):
            if getattr(self, name) < 1:
                raise InvalidConfig(name, f"must be >= 1, got {getattr(self, name)}")
        if self.image_knn_dims < 0:
            raise InvalidConfig("image_knn_dims", f"must be >= 0 (0: no image neighbour view), got "
                                                  f"{self.image_knn_dims}")
        if self.image_knn_temperature <= 0:
            raise InvalidConfig("image_knn_temperature", f"must be > 0, got {self.image_knn_temperature}")

    @property
    def split_fractions(self) -> tuple[float, float]:
        """(validation, test) share of each class's products."""
        return self.val_fraction, self.test_fraction

    def resolved_device(self) -> "torch.device":
        import torch

        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def frozen(self, device: "torch.device") -> bool:
        return device.type == "cpu" if self.freeze_towers is None else self.freeze_towers

    def image_batch_for(self, device: "torch.device") -> int:
        from shopclip.model.bundle import CPU_BATCH_SIZES

        return self.image_batch or (CPU_BATCH_SIZES["image"] if device.type == "cpu" else 64)

    def embed_batch_for(self, device: "torch.device") -> int:
        return self.embed_batch or (8 if device.type == "cpu" else 128)

"""Fine-tuning the two-tower model on a labelled catalogue folder and writing a model bundle.

Objective per batch (weights in `TrainConfig`):
  clip_weight     * ClipLoss(image, text) over products that have both (open_clip's loss);
  fused_weight    * CE(head(fused embedding));
  modality_weight * (CE(head(text embedding)) + CE(head(image embedding))) so each modality classifies alone.
Cross-entropies are class-weighted (inverse frequency ** class_weight_power) with label smoothing.
AdamW with linear warm-up + cosine decay; pretrained towers get `tower_lr` through `param_groups`.

On CPU the pretrained towers are frozen by default and their outputs cached once (`TowerCache`), so a
run over /work/shared/data takes minutes; on CUDA everything is fine-tuned with bf16 autocast.
Every epoch writes `checkpoint.pt` (resume with `resume=True`); the bundle in `out_dir` always holds the
best epoch by validation weighted F1, then gets k-NN parameters tuned on validation.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shopclip.model.config import ModelConfig
from shopclip.training.config import TrainConfig
from shopclip.training.data import fingerprint, load_products, split_products
from shopclip.training.encoding import (Batch, ImageBatches, ProductInputs, TowerCache, embed, encode_rows,
                                        needs_pixels)
from shopclip.training.metrics import scores, tune_knn

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class EpochResult:
    epoch: int
    loss: float
    val_weighted_f1: float


def class_weights(labels: torch.Tensor, num_classes: int, power: float) -> torch.Tensor:
    """(num_classes,) weights, inverse class frequency ** power, mean 1 over classes seen in `labels`."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = torch.where(counts > 0, (counts.sum() / (num_classes * counts.clamp(min=1))) ** power,
                          torch.ones_like(counts))
    seen = counts > 0
    return weights / weights[seen].mean()


class Objective:
    """The training loss (see module docstring); returns the total and its parts for logging."""

    def __init__(self, config: TrainConfig, weights: torch.Tensor) -> None:
        from open_clip.loss import ClipLoss

        self.config = config
        self.weights = weights
        self.clip_loss = ClipLoss()

    def __call__(self, model, text: torch.Tensor, image: torch.Tensor, fused: torch.Tensor,
                 has_text: torch.Tensor, has_image: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        parts = {"fused": self._ce(model.classify(fused), labels)}
        if cfg.modality_weight and has_text.any():
            parts["text"] = self._ce(model.classify(text[has_text]), labels[has_text])
        if cfg.modality_weight and has_image.any():
            parts["image"] = self._ce(model.classify(image[has_image]), labels[has_image])
        both = has_text & has_image
        if cfg.clip_weight and int(both.sum()) >= 2:
            parts["clip"] = self.clip_loss(image[both].float(), text[both].float(), model.logit_scale.exp())
        factors = {"fused": cfg.fused_weight, "text": cfg.modality_weight, "image": cfg.modality_weight,
                   "clip": cfg.clip_weight}
        total = sum(factors[name] * value for name, value in parts.items())
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.weights.to(logits.device),
                               label_smoothing=self.config.label_smoothing)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run: data, model, optimiser, epochs, checkpoints and the bundle."""

    def __init__(self, data_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
                 config: TrainConfig) -> None:
        from shopclip.model.clip import build_model

        seed_everything(config.seed)
        self.data_dir, self.out_dir, self.config = Path(data_dir), Path(out_dir), config
        self.device = config.resolved_device()
        self.frozen = config.frozen(self.device)
        products = load_products(self.data_dir)
        self.data_fingerprint = fingerprint(products)
        self.split = split_products(products, config.seed, config.split_fractions)
        codes = sorted({p.prdtypecode for p in products})
        self.model = build_model(replace(model_config, codes=codes)).to(self.device)
        if self.frozen:
            self.model.freeze_towers()
        self.inputs = ProductInputs(products, codes)
        self.rows = {name: self.inputs.rows_of(ids) for name, ids in self.split.items()}
        if config.ngram_idf:
            self.model.fit_text_statistics([self.inputs.texts[i] for i in self.rows["train"].tolist()])
        self.cache = TowerCache.build(self.model, self.inputs, self.device, config.text_batch,
                                      config.image_batch_for(self.device)) if self.frozen else None
        self.objective = Objective(config, class_weights(self.inputs.labels[self.rows["train"]], len(codes),
                                                         config.class_weight_power))
        self.optimizer = torch.optim.AdamW(self.model.param_groups(config.tower_lr, config.lr,
                                                                   config.weight_decay))
        steps = config.epochs * math.ceil(len(self.rows["train"]) / config.batch_size)
        self.scheduler = warmup_cosine(self.optimizer, steps, config.warmup_fraction)
        self.history: list[EpochResult] = []
        self.start_epoch = 0
        self.best_f1 = -1.0
        self.best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ epochs

    def batches(self, generator: torch.Generator):
        """Shuffled training batches: row indices only when towers are cached, decoded images otherwise."""
        rows = self.rows["train"][torch.randperm(len(self.rows["train"]), generator=generator)]
        if not needs_pixels(self.cache):
            return [Batch(rows=chunk) for chunk in rows.split(self.config.batch_size)]
        dataset = ImageBatches(self.inputs, self.model, train=True)
        return torch.utils.data.DataLoader(rows.tolist(), batch_size=self.config.batch_size,
                                           collate_fn=dataset.collate, num_workers=self.config.workers,
                                           persistent_workers=False)

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        batches = self.batches(generator)
        total, count = 0.0, 0
        progress = tqdm(batches, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch", leave=False)
        for batch in progress:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                text, image, fused, has_text, has_image = encode_rows(self.model, self.inputs, batch,
                                                                      self.device, self.cache)
                loss, parts = self.objective(self.model, text, image, fused, has_text, has_image,
                                             self.inputs.labels[batch.rows].to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.optimizer.step()
            self.scheduler.step()
            total, count = total + loss.item(), count + 1
            progress.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in parts.items()})
        return total / max(1, count)

    def validate(self) -> float:
        """Weighted F1 of the fused head on the validation products."""
        emb = self.embed("val")
        return scores(self.inputs.labels[self.rows["val"]].numpy(), emb.probs_fused)["weighted_f1"]

    def embed(self, split: str):
        return embed(self.model, self.inputs, self.rows[split], self.device, self.cache,
                     self.config.embed_batch_for(self.device) if needs_pixels(self.cache) else self.config.batch_size,
                     desc=f"embedding {split}")

    def run(self) -> Path:
        """All epochs (from a checkpoint when resumed), then k-NN tuning and the final bundle."""
        epochs = tqdm(range(self.start_epoch, self.config.epochs), desc="training", unit="epoch",
                      initial=self.start_epoch, total=self.config.epochs)
        for epoch in epochs:
            loss = self.train_epoch(epoch)
            val_f1 = self.validate()
            self.history.append(EpochResult(epoch + 1, loss, val_f1))
            if val_f1 > self.best_f1:
                self.best_f1 = val_f1
                self.best_state = copy.deepcopy(self.trainable_state())
            epochs.set_postfix(loss=f"{loss:.3f}", val_f1=f"{val_f1:.4f}", best=f"{self.best_f1:.4f}")
            log.info("epoch %d: loss %.4f, val weighted F1 %.4f", epoch + 1, loss, val_f1)
            self.save_checkpoint(epoch + 1)
        if self.best_state is not None:
            self.load_trainable_state(self.best_state)
        return self.save_bundle()

    # ------------------------------------------------------------------ artifacts

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What training changes: trainable parameters and all buffers. Frozen pretrained weights are left
        out (they are rebuilt from their packages), so checkpoints and the best-epoch copy stay small."""
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        return {name: value for name, value in self.model.state_dict().items() if name not in frozen}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        if unexpected or set(missing) - frozen:
            raise ValueError(f"checkpoint does not fit the model: missing {sorted(set(missing) - frozen)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")

    def save_checkpoint(self, epochs_done: int) -> None:
        """Latest state for `resume`, written atomically (a crash mid-write keeps the previous one)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {"epochs_done": epochs_done, "model": self.trainable_state(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "best_f1": self.best_f1, "best_state": self.best_state,
                 "history": [asdict(h) for h in self.history], "data_fingerprint": self.data_fingerprint}
        tmp = self.out_dir / (CHECKPOINT_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out_dir / CHECKPOINT_FILE)

    def resume(self) -> None:
        """Continue from `out_dir/checkpoint.pt`; refuses a checkpoint made from other data."""
        from shopclip.errors import InvalidInput

        path = self.out_dir / CHECKPOINT_FILE
        if not path.exists():
            raise InvalidInput("resume", f"no checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["data_fingerprint"] != self.data_fingerprint:
            raise InvalidInput("resume", f"{path} was trained on other data (fingerprint differs)")
        self.load_trainable_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.best_f1, self.best_state = state["epochs_done"], state["best_f1"], state["best_state"]
        self.history = [EpochResult(**h) for h in state["history"]]
        log.info("resumed after epoch %d (best val weighted F1 %.4f)", self.start_epoch, self.best_f1)

    def save_bundle(self) -> Path:
        """Tune k-NN on validation over the training vectors, then write the bundle with everything needed
        to reproduce the evaluation (data fingerprint, split, seed, configs, history, metrics)."""
        from shopclip.model.bundle import save_bundle

        train_emb, val_emb = self.embed("train"), self.embed("val")
        val_labels = self.inputs.labels[self.rows["val"]].numpy()
        knn, knn_f1 = tune_knn(val_emb.probs_fused, val_emb.fused, val_labels, train_emb.fused,
                               np.array(self.model.codes)[self.inputs.labels[self.rows["train"]].numpy()],
                               self.model.codes)
        metadata = {
            "knn": knn.to_dict(),
            "training": {
                "data_dir": str(self.data_dir.resolve()), "data_fingerprint": self.data_fingerprint,
                "seed": self.config.seed, "split": self.split, "frozen_towers": self.frozen,
                "device": self.device.type, "config": _json_config(self.config),
                "history": [asdict(h) for h in self.history],
            },
            "metrics": {"val_weighted_f1_head": self.best_f1, "val_weighted_f1_head_knn": knn_f1},
        }
        log.info("k-NN tuned on validation: %s (val weighted F1 head %.4f, head+k-NN %.4f)",
                 knn, self.best_f1, knn_f1)
        return save_bundle(self.out_dir, self.model, metadata=metadata)


def _json_config(config: TrainConfig) -> dict:
    values = asdict(config)
    values["split_fractions"] = list(config.split_fractions)
    return values


def train(data_dir: str | Path, out_dir: str | Path, model_config: ModelConfig | None = None,
          config: TrainConfig | None = None, resume: bool = False) -> Path:
    """Train on a labelled folder and write the bundle to `out_dir`; returns the bundle path."""
    trainer = Trainer(data_dir, out_dir, model_config or ModelConfig(), config or TrainConfig())
    if resume:
        trainer.resume()
    return trainer.run()

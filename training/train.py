"""Fine-tuning the two-tower model on a labelled catalogue folder and writing a model bundle.

Objective per batch (weights in `TrainConfig`):
  clip_weight     * ClipLoss(image, text) over products that have both (open_clip's loss);
  fused_weight    * CE(head(fused embedding));
  modality_weight * (CE(head(text embedding)) + CE(head(image embedding))) so each modality classifies alone.
Cross-entropies are class-weighted (inverse frequency ** class_weight_power) with label smoothing.
AdamW with linear warm-up + cosine decay; pretrained towers get `tower_lr` through `param_groups`.

On CPU the pretrained towers are frozen by default and their outputs cached once (`TowerCache`), so a
run over /work/shared/data takes minutes; on CUDA everything is fine-tuned with bf16 autocast.
Every epoch writes `checkpoint.pt` (resume with `resume=True`). What Classify answers is not the head alone
but the views of `shopclip.model.ensemble` combined with weights fitted on validation; see `Trainer` for the
selection-then-refit sequence that makes the shipped bundle learn from every labelled product.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shopclip.catalogue_files import SourceRow
from shopclip.model.clip import IMAGE_FEATURES
from shopclip.model.config import ModelConfig
from shopclip.model.e5_tuned import E5_TUNED
from shopclip.model.ensemble import GROUPS, EnsembleClassifier, FeatureView, ViewCombiner, ViewInputs
from shopclip.model.knn import KnnParams
from shopclip.training.config import TrainConfig
from shopclip.training.data import fingerprint, load_products, split_products
from shopclip.training.encoding import (Batch, Embeddings, FeatureStore, ImageBatches, ProductInputs, TowerCache,
                                        embed, encode_rows, feature_signatures, image_words, live_tower_features,
                                        needs_pixels)
from shopclip.training.ensemble import ViewSpec, choose_views, fit_views, select_combiner, view_names
from shopclip.training.metrics import K_GRID, TEMPERATURE_GRID, knn_probabilities, nearest, scores
from shopclip.training.tune_e5 import E5Tuning, TuneSettings, tuned_view

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
    """One training run over labelled products: selection on validation, refit on all, bundle.

    1. Selection: the two-tower model trains on the training split, validated every epoch (early stopping
       after `patience` epochs without progress); the best epoch is kept. Views are fitted on the training
       split; the combiner's weights and the k-NN vote's parameters are fitted on validation scores.
    2. Refit (`TrainConfig.refit`): the model starts again from its initial weights and trains on training +
       validation products for the chosen number of epochs (same schedule), and the views are refitted on
       them. What validation chose is kept. The bundle records both what it learnt from and how it chose.
    """

    def __init__(self, products: Sequence[SourceRow], out_dir: str | Path, model_config: ModelConfig,
                 config: TrainConfig, source: str) -> None:
        from shopclip.model.clip import build_model

        seed_everything(config.seed)
        self.out_dir, self.config, self.source = Path(out_dir), config, source
        self.device = config.resolved_device()
        self.frozen = config.frozen(self.device)
        self.data_fingerprint = fingerprint(products)
        self.split = split_products(products, config.seed, config.split_fractions)
        codes = sorted({p.prdtypecode for p in products})
        if not self.frozen:
            # Towers that learn keep float32 weights (Adam on bfloat16 weights loses updates), and e5 itself
            # is fine-tuned, so a separately tuned top over its (moving) hidden states has no place.
            model_config = replace(model_config, tower_precision="float32", e5_tuned_layers=0)
        self.model = build_model(replace(model_config, codes=codes)).to(self.device)
        if self.frozen:
            self.model.freeze_towers()
        self.products = list(products)
        self.inputs = ProductInputs(products, codes)
        self.rows = {name: self.inputs.rows_of(ids) for name, ids in self.split.items()}
        self.fit_rows = self.rows["train"]
        """The products the model and views learn from: the training split, then training + validation."""
        if config.ngram_idf:
            self.model.fit_text_statistics([self.inputs.texts[i] for i in self.fit_rows.tolist()])
        store = FeatureStore(config.feature_cache, feature_signatures(self.model)) if config.feature_cache else None
        self.cache = TowerCache.build(self.model, self.inputs, self.device, config.text_batch,
                                      config.image_batch_for(self.device), store) if self.frozen else None
        self.image_words = self._read_image_words()
        """Words read on the images of products without text (the OCR view's input); None: no OCR view."""
        self.tuning = None
        if self.model.e5_tuned is not None:
            self.model.e5_tuned.float()  # trained in float32 (bfloat16 autocast); served in tower_precision
            self.tuning = E5Tuning(self.model, self.inputs, self.device, config.text_batch)
        self.initial_state = copy.deepcopy(self.trainable_state())
        self.phase = "selection"
        self.history: list[EpochResult] = []
        self.start_epoch = 0
        self.best_f1 = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.selection: dict | None = None
        self._start_optimisation()

    def _read_image_words(self) -> list[str] | None:
        from shopclip.model.ocr import INSTALL_HINT, ocr_available

        if not self.config.ocr_view or not bool((self.inputs.has_image & ~self.inputs.has_text).any()):
            return None
        if not ocr_available():
            log.warning("the OCR view is left out: Tesseract with its French data was not found (%s)", INSTALL_HINT)
            return None
        return image_words(self.inputs, torch.get_num_threads(), self.config.feature_cache)

    def _ocr_engine(self) -> str | None:
        """The Tesseract that read the words the OCR view learnt from (the bundle records it), or None."""
        from shopclip.model.ocr import tesseract_version

        return tesseract_version() if self.image_words is not None else None

    def _start_optimisation(self) -> None:
        """Objective (class weights of the rows learnt from), optimiser and schedule over `epochs`."""
        config = self.config
        self.objective = Objective(config, class_weights(self.inputs.labels[self.fit_rows], len(self.model.codes),
                                                         config.class_weight_power))
        self.optimizer = torch.optim.AdamW(self.model.param_groups(config.tower_lr, config.lr, config.weight_decay))
        steps = config.epochs * math.ceil(len(self.fit_rows) / config.batch_size)
        self.scheduler = warmup_cosine(self.optimizer, steps, config.warmup_fraction)

    # ------------------------------------------------------------------ epochs

    def batches(self, generator: torch.Generator):
        """Shuffled training batches: row indices only when towers are cached, decoded images otherwise."""
        rows = self.fit_rows[torch.randperm(len(self.fit_rows), generator=generator)]
        if not needs_pixels(self.cache):
            return [Batch(rows=chunk) for chunk in rows.split(self.config.batch_size)]
        dataset = ImageBatches(self.inputs, self.model, train=True)
        return torch.utils.data.DataLoader(rows.tolist(), batch_size=self.config.batch_size,
                                           collate_fn=dataset.collate, num_workers=self.config.workers,
                                           persistent_workers=False)

    def train_epoch(self, epoch: int, total: int) -> float:
        self.model.train()
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        batches = self.batches(generator)
        loss_sum, count = 0.0, 0
        progress = tqdm(batches, desc=f"{self.phase} epoch {epoch + 1}/{total}", unit="batch", leave=False)
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
            loss_sum, count = loss_sum + loss.item(), count + 1
            progress.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in parts.items()})
        return loss_sum / max(1, count)

    def validate(self) -> float:
        """Weighted F1 of the fused head on the validation products."""
        emb = self.embed(self.rows["val"], "val")
        return scores(self.inputs.labels[self.rows["val"]].numpy(), emb.probs_fused)["weighted_f1"]

    def embed(self, rows: torch.Tensor, name: str) -> Embeddings:
        return embed(self.model, self.inputs, rows, self.device, self.cache,
                     self.config.embed_batch_for(self.device) if needs_pixels(self.cache) else self.config.batch_size,
                     desc=f"embedding {name}")

    def run(self) -> Path:
        """Selection (from a checkpoint when resumed), refit, views, bundle."""
        if self.phase == "selection":
            self._select()
        if self.phase == "refit":
            self._refit()
        return self.save_bundle()

    def _select(self) -> None:
        has_val = len(self.rows["val"]) > 0
        epochs = tqdm(range(self.start_epoch, self.config.epochs), desc="selection", unit="epoch",
                      initial=self.start_epoch, total=self.config.epochs)
        for epoch in epochs:
            loss = self.train_epoch(epoch, self.config.epochs)
            val_f1 = self.validate() if has_val else -loss  # without validation: the lowest loss
            self.history.append(EpochResult(epoch + 1, loss, val_f1))
            if val_f1 > self.best_f1:
                self.best_f1, self.best_epoch = val_f1, epoch + 1
                self.best_state = copy.deepcopy(self.trainable_state())
            epochs.set_postfix(loss=f"{loss:.3f}", val_f1=f"{val_f1:.4f}", best=f"{self.best_f1:.4f}")
            log.info("epoch %d: loss %.4f, val weighted F1 %.4f", epoch + 1, loss, val_f1)
            self.save_checkpoint(epoch + 1)
            if epoch + 1 - self.best_epoch >= self.config.patience:
                log.info("no better validation F1 for %d epochs: stopping at epoch %d", self.config.patience, epoch + 1)
                break
        if self.best_state is not None:
            self.load_trainable_state(self.best_state)
            self.best_state = None  # chosen and loaded: later checkpoints need not carry a second model
        self.selection = self._select_classifier() if has_val else None
        if self.config.refit and has_val:
            self.phase, self.start_epoch = "refit", 0
            self.fit_rows = torch.cat([self.rows["train"], self.rows["val"]])
            self.load_trainable_state(self.initial_state)
            self._start_optimisation()
            self.save_checkpoint(0)
        else:
            self.phase = "done"

    def _refit(self) -> None:
        """Train from the initial weights on training + validation for the chosen number of epochs (the
        two-tower model, then the tuned e5 top)."""
        seed_everything(self.config.seed)
        for epoch in tqdm(range(self.start_epoch, self.best_epoch), desc="refit on all", unit="epoch",
                          initial=self.start_epoch, total=self.best_epoch):
            loss = self.train_epoch(epoch, self.best_epoch)
            log.info("refit epoch %d: loss %.4f", epoch + 1, loss)
            self.save_checkpoint(epoch + 1)
        if self.tuning is not None:
            self._reset_tuned_top()
            self.tuning.tune(self.fit_rows, self.tune_settings(), (self.selection or {}).get(
                "e5_tuned_epochs", self.config.e5_tune_epochs))
        self.phase = "done"

    # ------------------------------------------------------------------ tuned e5 top

    def tune_settings(self) -> TuneSettings:
        return TuneSettings(lr=self.config.e5_tune_lr, head_lr=self.config.e5_tune_head_lr, seed=self.config.seed)

    def _reset_tuned_top(self) -> None:
        """Back to the pretrained layers and a zero classifier, as `build_model` made it."""
        prefix = "e5_tuned."
        self.model.e5_tuned.load_state_dict({k[len(prefix):]: v for k, v in self.initial_state.items()
                                             if k.startswith(prefix)})

    def _tune_for_selection(self) -> int:
        """Tune on the training split, keeping the best validation epoch; returns that epoch."""
        self._reset_tuned_top()
        epoch, curve = self.tuning.tune(self.rows["train"], self.tune_settings(), self.config.e5_tune_epochs,
                                        val_rows=self.rows["val"])
        log.info("tuned e5: best validation epoch %d of %s", epoch, [round(f, 4) for f in curve])
        return epoch

    def _with_tuned_view(self, dense: list[FeatureView]) -> list[FeatureView]:
        return dense + [tuned_view(self.model.e5_tuned)] if self.tuning is not None else dense

    # ------------------------------------------------------------------ classifier

    def view_inputs(self, rows: torch.Tensor, embeddings: Embeddings) -> ViewInputs:
        """What the views read for `rows`: texts, modality masks, frozen towers' outputs, the clip head."""
        has_image = (self.cache.image_ok[rows] if self.cache is not None else self.inputs.has_image[rows]).numpy()
        features = self.cache.features(rows) if self.cache is not None else live_tower_features(
            self.model, self.inputs, rows, self.device, self.config.embed_batch_for(self.device))
        if self.tuning is not None:
            features[E5_TUNED] = self.tuning.pooled(rows)
        words = None if self.image_words is None else [self.image_words[i] for i in rows.tolist()]
        return ViewInputs(texts=[self.inputs.texts[i] for i in rows.tolist()],
                          has_text=self.inputs.has_text[rows].numpy(), has_image=has_image, features=features,
                          clip_log_probs=np.log(np.clip(embeddings.probs_fused, 1e-12, None)), ocr_texts=words)

    def view_sources(self) -> dict[str, str]:
        """Feature key -> modality of the dense views: every pretrained text tower and the image trunk."""
        sources = {name: "text" for name in self.model.pretrained_text_towers()}
        if self.model.image_tower.pretrained:
            sources[IMAGE_FEATURES] = "image"
        return sources

    def view_spec(self) -> ViewSpec:
        config = self.config
        return ViewSpec(sparse_c=tuple(config.sparse_c), text_c=tuple(config.text_view_c),
                        image_c=tuple(config.image_view_c), image_knn_dims=config.image_knn_dims,
                        image_knn_k=config.image_knn_k, image_knn_temperature=config.image_knn_temperature,
                        ocr=self.image_words is not None)

    def _select_classifier(self) -> dict:
        """Views fitted on the training split; combiner and k-NN vote fitted on validation."""
        train_rows, val_rows = self.rows["train"], self.rows["val"]
        tuned_epochs = self._tune_for_selection() if self.tuning is not None else 0
        train_emb, val_emb = self.embed(train_rows, "train"), self.embed(val_rows, "val")
        val_inputs = self.view_inputs(val_rows, val_emb)
        labels = self.inputs.labels[val_rows].numpy()
        sparse, dense, chosen_c = choose_views(self.view_inputs(train_rows, train_emb),
                                               self.inputs.labels[train_rows].numpy(), val_inputs, labels,
                                               len(self.model.codes), self.view_spec(), self.view_sources())
        dense = self._with_tuned_view(dense)
        provisional = EnsembleClassifier(sparse, dense, ViewCombiner([], {}, {}))
        view_scores, present = provisional.view_scores(val_inputs)
        reference_codes = np.array(self.model.codes)[self.inputs.labels[train_rows].numpy()]
        indices, sims = nearest(val_emb.fused, train_emb.fused, max(K_GRID))

        def vote(k: int, temperature: float) -> np.ndarray:
            return knn_probabilities(indices, sims, reference_codes, self.model.codes, k, temperature)

        names = view_names(sparse, dense)
        selection = select_combiner(view_scores, present, self.inputs.has_text[val_rows].numpy(), labels, names,
                                    vote, K_GRID, TEMPERATURE_GRID)
        figures = {**selection.figures, "val_weighted_f1_head": self.best_f1, "best_epoch": self.best_epoch}
        if tuned_epochs:
            figures["e5_tuned_epochs"] = tuned_epochs
        for name in names:
            rows = present[name]
            if rows.any():
                figures[f"val_weighted_f1_{name}"] = scores(labels[rows], view_scores[name][rows])["weighted_f1"]
        log.info("classifier chosen on validation: k-NN k=%d T=%.2f, weights %s; %s", selection.knn_k,
                 selection.knn_temperature, selection.combiner.with_knn, figures)
        return {"combiner": asdict(selection.combiner), "knn": {"k": selection.knn_k,
                                                              "temperature": selection.knn_temperature},
                "view_c": chosen_c, "figures": figures, "e5_tuned_epochs": tuned_epochs}

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
        from shopclip.atomic import replace_atomically

        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {"phase": self.phase, "epochs_done": epochs_done, "model": self.trainable_state(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "best_f1": self.best_f1, "best_epoch": self.best_epoch, "best_state": self.best_state,
                 "selection": json.dumps(self.selection), "history": [asdict(h) for h in self.history],
                 "data_fingerprint": self.data_fingerprint}
        with replace_atomically(self.out_dir / CHECKPOINT_FILE) as temporary:
            torch.save(state, temporary)

    def resume(self) -> None:
        """Continue from `out_dir/checkpoint.pt`; refuses a checkpoint made from other data."""
        from shopclip.errors import InvalidInput

        path = self.out_dir / CHECKPOINT_FILE
        if not path.exists():
            raise InvalidInput("resume", f"no checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["data_fingerprint"] != self.data_fingerprint:
            raise InvalidInput("resume", f"{path} was trained on other data (fingerprint differs)")
        self.phase = state["phase"]
        if self.phase == "refit":
            self.fit_rows = torch.cat([self.rows["train"], self.rows["val"]])
            self._start_optimisation()
        self.load_trainable_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.best_f1, self.best_state = state["epochs_done"], state["best_f1"], state["best_state"]
        self.best_epoch, self.selection = state["best_epoch"], json.loads(state["selection"])
        self.history = [EpochResult(**h) for h in state["history"]]
        log.info("resumed in %s after epoch %d (best val weighted F1 %.4f)", self.phase, self.start_epoch,
                 self.best_f1)

    def save_bundle(self) -> Path:
        """Views refitted on every product learnt from, the combiner chosen on validation, and everything
        needed to reproduce the evaluation (data fingerprint, split, seed, configs, history, choices)."""
        from shopclip.model.bundle import save_bundle

        fit_emb = self.embed(self.fit_rows, "all training products")
        chosen_c = (self.selection or {}).get("view_c", {})
        sparse, dense = fit_views(self.view_inputs(self.fit_rows, fit_emb), self.inputs.labels[self.fit_rows].numpy(),
                                  len(self.model.codes), self.view_spec(), self.view_sources(), chosen_c)
        dense = self._with_tuned_view(dense)
        selection = self.selection or self._no_validation_selection(sparse, dense)
        classifier = EnsembleClassifier(sparse, dense, ViewCombiner(**selection["combiner"]),
                                        metadata={"chosen_on": "validation" if self.selection else "defaults",
                                                  "view_c": chosen_c, **selection["figures"]})
        learnt_from = sorted(self.inputs.productids[self.fit_rows.numpy()].tolist())
        metadata = {
            "knn": KnnParams(k=selection["knn"]["k"], temperature=selection["knn"]["temperature"]).to_dict(),
            "training": {
                "data_dir": self.source, "data_fingerprint": self.data_fingerprint,
                "seed": self.config.seed, "split": self.split, "frozen_towers": self.frozen,
                "ocr": self._ocr_engine(),
                "device": self.device.type, "config": _json_config(self.config),
                "history": [asdict(h) for h in self.history],
                "trained_on": {"products": len(learnt_from), "refit_on_validation": bool(
                    self.config.refit and self.selection), "epochs": self.best_epoch or self.config.epochs,
                    "productids_sha256": productids_digest(learnt_from)},
            },
            "metrics": {"val_weighted_f1_head": self.best_f1,
                        "val_weighted_f1_classify": selection["figures"].get("val_weighted_f1", -1.0)},
        }
        bundle = save_bundle(self.out_dir, self.model, metadata=metadata, classifier=classifier)
        if self.config.keep_vectors:
            self._keep_vectors(bundle, fit_emb)
        return bundle

    def _keep_vectors(self, bundle: Path, fit_emb: Embeddings) -> None:
        """The vectors of the products learnt from, as the bundle embeds them (the fused vector of the final
        weights from the same tower outputs), for the gate and the index build to reuse."""
        from shopclip.indexer.known_vectors import keep_vectors
        from shopclip.model.bundle import read_bundle_config

        fingerprint = str(read_bundle_config(bundle)["fingerprint"])
        products = [self.products[i] for i in self.fit_rows.tolist()]
        keep_vectors(self.config.keep_vectors, fingerprint, products, fit_emb.fused)
        log.info("kept the vectors of %d products for model %s in %s", len(products), fingerprint,
                 self.config.keep_vectors)

    def _no_validation_selection(self, sparse, dense) -> dict:
        """Without validation products nothing can be fitted: every view counts once, k-NN with defaults."""
        names = view_names(sparse, dense)
        weights = {group: [1.0] * len(names) for group in GROUPS}
        combiner = ViewCombiner(names, with_knn={g: w + [1.0] for g, w in weights.items()}, without_knn=weights)
        defaults = KnnParams()
        return {"combiner": asdict(combiner), "knn": {"k": defaults.k, "temperature": defaults.temperature},
                "figures": {}}


def productids_digest(productids: Sequence[int]) -> str:
    """`training.trained_on.productids_sha256` of a bundle that learnt from these products (sorted productids)."""
    import hashlib

    return hashlib.sha256(",".join(map(str, productids)).encode()).hexdigest()[:16]


def _json_config(config: TrainConfig) -> dict:
    values = asdict(config)
    values["split_fractions"] = list(config.split_fractions)
    return values


def train(data_dir: str | Path, out_dir: str | Path, model_config: ModelConfig | None = None,
          config: TrainConfig | None = None, resume: bool = False, source: str | None = None) -> Path:
    """Train on a labelled folder and write the bundle to `out_dir`; returns the bundle path. `source` is what
    the bundle records as its data (default: the folder; an s3:// URI when the folder is its local copy)."""
    return train_products(load_products(data_dir), out_dir, model_config, config, resume,
                          source=source or str(Path(data_dir).resolve()))


def train_products(products: Sequence[SourceRow], out_dir: str | Path, model_config: ModelConfig | None = None,
                   config: TrainConfig | None = None, resume: bool = False, source: str = "") -> Path:
    """Train on these labelled products (a folder's, a benchmark fold's) and write the bundle to `out_dir`."""
    config = config or TrainConfig()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    trainer = Trainer(products, out_dir, model_config or ModelConfig(), config, source)
    if resume:
        trainer.resume()
    return trainer.run()

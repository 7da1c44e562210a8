"""Fine-tuning the top of e5 (`shopclip.model.e5_tuned`) for the codes, apart from the two-tower loss.

The frozen bottom runs once per product: `E5Tuning` keeps every text product's hidden states where the
tuned top starts (bfloat16 where that is native, ~100 MB for 3,000 products), so an epoch runs only the
top layers. The recipe is the usual one for fine-tuning a transformer on a few thousand labelled texts:
AdamW, a low learning rate for the pretrained layers and a higher one for the new classifier, linear
warm-up then linear decay, label smoothing, and the epoch chosen on validation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from shopclip.model.e5_tuned import E5_TUNED, LOGIT_SCALE, E5TunedTop
from shopclip.model.ensemble import DenseView
from shopclip.model.precision import native_bfloat16
from shopclip.training.encoding import ProductInputs

log = logging.getLogger(__name__)

BATCH_SIZE = 32
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class TuneSettings:
    """The optimiser's settings; how many epochs is each `tune` call's own (selection, then the refit)."""

    lr: float = 1e-4
    """Learning rate of the tuned layers (top layers take more than a full fine-tune's 1e-5..5e-5)."""
    head_lr: float = 2e-3
    """Learning rate of the new classifier."""
    seed: int = 0


class E5Tuning:
    """Hidden states of the text products at the tuned top's start, and the loop that tunes it on some rows."""

    def __init__(self, model, inputs: ProductInputs, device: torch.device, batch_size: int = 64) -> None:
        self.model, self.inputs, self.device = model, inputs, device
        self.top: E5TunedTop = model.e5_tuned
        self._bfloat16 = native_bfloat16()  # asked once, not per batch
        self.hidden: dict[int, torch.Tensor] = {}
        text_rows = torch.nonzero(inputs.has_text).flatten().tolist()
        with torch.inference_mode():
            for start in tqdm(range(0, len(text_rows), batch_size), desc="e5 hidden states", unit="batch",
                              leave=False):
                rows = text_rows[start:start + batch_size]
                tokens = {k: v.to(device) for k, v in model.tokenize([inputs.texts[i] for i in rows]).items()}
                hidden, mask = model.e5_hidden_states(tokens)
                for j, row in enumerate(rows):
                    self.hidden[row] = hidden[j, :int(mask[j].sum())].clone()

    def text_rows(self, rows: torch.Tensor) -> list[int]:
        return [row for row in rows.tolist() if row in self.hidden]

    def _batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(self.hidden[row]) for row in rows)
        hidden = torch.zeros(len(rows), length, self.hidden[rows[0]].shape[-1], dtype=self.hidden[rows[0]].dtype,
                             device=self.device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            hidden[i, :len(self.hidden[row])] = self.hidden[row]
            mask[i, :len(self.hidden[row])] = 1
        return hidden, mask

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bfloat16)

    def tune(self, rows: torch.Tensor, settings: TuneSettings, epochs: int,
             val_rows: torch.Tensor | None = None) -> tuple[int, list[float]]:
        """Train the top on `rows` (text rows only are used) for `epochs`, the schedule spanning them.
        With `val_rows`, keep the epoch of best validation weighted F1: (that epoch, F1 per epoch);
        without, the last epoch: (epochs, [])."""
        from shopclip.training.metrics import scores

        fit = self.text_rows(rows)
        labels = self.inputs.labels
        optimizer = torch.optim.AdamW([
            {"params": self.top.layers.parameters(), "lr": settings.lr},
            {"params": self.top.classifier.parameters(), "lr": settings.head_lr}], weight_decay=WEIGHT_DECAY)
        steps = max(1, epochs * math.ceil(len(fit) / BATCH_SIZE))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear(steps))
        generator = np.random.default_rng(settings.seed)
        best_epoch, best_f1, best_state, curve = epochs, -1.0, None, []
        for epoch in tqdm(range(epochs), desc="tuning e5", unit="epoch", leave=False):
            self.top.train()
            order = [fit[i] for i in generator.permutation(len(fit))]
            for start in range(0, len(order), BATCH_SIZE):
                chunk = order[start:start + BATCH_SIZE]
                hidden, mask = self._batch(chunk)
                with self._autocast():
                    logits = self.top.logits(self.top(hidden, mask)).float()
                loss = F.cross_entropy(logits, labels[chunk].to(self.device), label_smoothing=LABEL_SMOOTHING)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            if val_rows is not None:
                val = self.text_rows(val_rows)
                f1 = scores(labels[val].numpy(), self.log_probs(val))["weighted_f1"]
                curve.append(f1)
                log.info("e5 tuning epoch %d: loss %.4f, val weighted F1 %.4f", epoch + 1, loss.item(), f1)
                if f1 > best_f1:
                    best_epoch, best_f1 = epoch + 1, f1
                    best_state = {k: v.clone() for k, v in self.top.state_dict().items()}
        if best_state is not None:
            self.top.load_state_dict(best_state)
        self.top.eval()
        return best_epoch, curve

    def pooled(self, rows: Sequence[int] | torch.Tensor) -> np.ndarray:
        """(len(rows), 384) tuned output; zero rows for products without text (the view skips them)."""
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        out = np.zeros((len(rows), self.top.layers[0].qkv.in_features), dtype=np.float32)
        present = [i for i, row in enumerate(rows) if row in self.hidden]
        self.top.eval()
        with torch.no_grad(), self._autocast():
            for start in range(0, len(present), 128):
                chunk = present[start:start + 128]
                hidden, mask = self._batch([rows[i] for i in chunk])
                out[chunk] = self.top(hidden, mask).float().cpu().numpy()
        return out

    def log_probs(self, rows: Sequence[int]) -> np.ndarray:
        view = tuned_view(self.top)
        return view.scores(self.pooled(rows))


def tuned_view(top: E5TunedTop) -> DenseView:
    """The tuned classifier as an ensemble view over the top's output (the same softmax it was trained as)."""
    weight = top.classifier.weight.detach().float().cpu().numpy().astype(np.float64).T * LOGIT_SCALE
    bias = top.classifier.bias.detach().float().cpu().numpy().astype(np.float64)
    return DenseView(E5_TUNED, E5_TUNED, "text", weight, bias)


def _warmup_linear(total_steps: int):  # noqa: ANN202 - a LambdaLR factor
    warmup = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor

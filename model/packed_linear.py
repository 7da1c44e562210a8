"""`PackedLinear`: an `nn.Linear` whose bfloat16 inference on CPU runs on weights packed once for oneDNN.

`F.linear` on bfloat16 re-lays the weight into oneDNN's blocked format on every call; for a frozen tower
that repacking is a large share of the forward (bench/serve.py shows the whole effect). Packing once and
calling oneDNN's own linear skips it with identical results. Training,
float32, other devices and any torch without these ops take plain `F.linear`; the state dict is the
`nn.Linear` one, so bundles and checkpoints do not change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_PACKED_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class PackedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packs(x):
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])
        filler = row_bucket(rows.shape[0]) - rows.shape[0]
        padded = F.pad(rows, (0, 0, 0, filler)) if filler else rows  # a caller may bring whole buckets
        out = _PACKED_LINEAR(padded, self._packed_weight(), self.bias, "none", [], "")
        return out[:rows.shape[0]].reshape(*x.shape[:-1], self.out_features)

    def __getstate__(self) -> dict:
        """Without the packed copy: an opaque oneDNN tensor can be neither copied nor pickled."""
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        return state

    def _packs(self, x: torch.Tensor) -> bool:
        return pads_rows(x) and x.dtype == self.weight.dtype

    def _packed_weight(self) -> torch.Tensor:
        # Keyed by storage and version: load_state_dict, .to() and in-place edits all invalidate it.
        key = (self.weight.data_ptr(), _version(self.weight))
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            cached = (key, _PACK(self.weight.detach(), None))
            self.__dict__["_packed"] = cached
        return cached[1]


def pads_rows(x: torch.Tensor) -> bool:
    """Whether `PackedLinear` (with weights in x's dtype) runs `x` on packed weights, its rows padded to
    `row_bucket`: a caller that packs rows itself can bring them at that size and spare each linear a copy."""
    return (_PACKED_LINEAR is not None and _PACK is not None and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.bfloat16)


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor (made under inference_mode) keeps no version counter
        return None


def row_bucket(rows: int) -> int:
    """`rows` rounded up to a multiple of 16 up to 64, then to the next of eight even steps per power of two
    (72, 80, ..., 128, 144, ..., 256, 288, ...): at most 12.5% padding, about 8 shapes per doubling.

    oneDNN compiles a kernel for every new input shape (about 1 ms each for bfloat16) and keeps the
    last 1024; the server's batches, and the e5 tower's packed real tokens, have every row count from 1 to
    thousands, so unpadded, nearly every forward compiled its kernels again. Padded, a few dozen shapes per
    weight serve every batch."""
    if rows <= 64:
        return max(16, -(-rows // 16) * 16)
    step = 1 << ((rows - 1).bit_length() - 4)
    return -(-rows // step) * step

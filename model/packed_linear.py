"""`PackedLinear`: an `nn.Linear` whose inference on CPU runs on weights packed once.

bfloat16: `F.linear` re-lays the weight into oneDNN's blocked format on every call; for a frozen tower
that repacking is a large share of the forward (bench/serve.py shows the whole effect). Packing once and
calling oneDNN's own linear skips it with identical results.

int8 (`quantise_linears`, the "int8" tower precision): the weight is quantised once, per output row
(symmetric, 8 bits), and each call quantises its input rows on the fly (fbgemm's dynamic linear, which
accumulates in int32 and returns float32). Where the CPU multiplies int8 in hardware (AVX512-VNNI) that is
faster than bfloat16 without AMX; its outputs differ from float by quantisation noise, which is why it is a
precision the bundle records (training computes its frozen features the same way) and not a silent swap.

Training (gradients), other devices and any torch without these ops take plain `F.linear`; the state dict is
the `nn.Linear` one, so bundles and checkpoints do not change.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.nn import functional as F

_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_PACKED_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
try:
    _INT8_PREPACK, _INT8_LINEAR = torch.ops.quantized.linear_prepack, torch.ops.quantized.linear_dynamic
except (AttributeError, RuntimeError):  # a torch built without quantized kernels
    _INT8_PREPACK = _INT8_LINEAR = None


class PackedLinear(nn.Linear):
    int8: bool = False
    """Set by `quantise_linears`: inference without gradients on CPU runs on int8 weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._runs_int8(x):
            return self._int8_forward(x)
        if not self._packs(x):
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])
        filler = row_bucket(rows.shape[0]) - rows.shape[0]
        padded = F.pad(rows, (0, 0, 0, filler)) if filler else rows  # a caller may bring whole buckets
        out = _PACKED_LINEAR(padded, self._packed_weight(), self.bias, "none", [], "")
        return out[:rows.shape[0]].reshape(*x.shape[:-1], self.out_features)

    def pads_rows(self, x: torch.Tensor) -> bool:
        """Whether `x` would run on bfloat16 packed weights, its rows padded to `row_bucket`: a caller that packs
        rows itself (the e5 tower) can bring them at that size and spare each linear a copy."""
        return not self._runs_int8(x) and self._packs(x)

    def __getstate__(self) -> dict:
        """Without the packed copies: opaque oneDNN / fbgemm objects can be neither copied nor pickled."""
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        state.pop("_int8_packed", None)
        return state

    def _packs(self, x: torch.Tensor) -> bool:
        return (_PACKED_LINEAR is not None and _PACK is not None and not torch.is_grad_enabled()
                and x.device.type == "cpu" and x.dtype == torch.bfloat16 == self.weight.dtype)

    def _runs_int8(self, x: torch.Tensor) -> bool:
        return (self.int8 and _int8_engine() and not torch.is_grad_enabled()
                and x.device.type == "cpu" and x.is_floating_point())

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        out = _INT8_LINEAR(rows, self._int8_weight(), _reduce_range())
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _int8_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), _version(self.weight), self.weight.dtype)
        cached = self.__dict__.get("_int8_packed")
        if cached is None or cached[0] != key:
            cached = (key, _INT8_PREPACK(quantise_rows(self.weight.detach()),
                                          None if self.bias is None else self.bias.detach().float()))
            self.__dict__["_int8_packed"] = cached
        return cached[1]

    def _packed_weight(self) -> torch.Tensor:
        # Keyed by storage and version: load_state_dict, .to() and in-place edits all invalidate it.
        key = (self.weight.data_ptr(), _version(self.weight))
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            cached = (key, _PACK(self.weight.detach(), None))
            self.__dict__["_packed"] = cached
        return cached[1]


@functools.cache
def _int8_engine() -> bool:
    """Whether this torch runs int8 linears on fbgemm (x86). Elsewhere (qnnpack on ARM, a torch without
    quantized kernels) int8 layers compute in their float type: slower than int8 might be, never wrong."""
    return _INT8_LINEAR is not None and torch.backends.quantized.engine in ("x86", "fbgemm")


@functools.cache
def _reduce_range() -> bool:
    """Whether inputs are quantised to 7 bits, not 8. Without VNNI, x86 int8 kernels add pairs of products in
    16 bits, which 8-bit inputs can overflow; with VNNI they accumulate in 32 bits, and the eighth bit halves
    the rounding noise (e5-small's pooled output: cosine to float32 0.9965 against 0.987 on product texts)."""
    try:
        return not torch.cpu._is_vnni_supported()
    except AttributeError:  # a torch without the probe: the safe choice
        return True


def quantise_rows(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) float weight -> qint8, one symmetric scale per output row (its largest magnitude maps to 127)."""
    weight = weight.float()
    scales = (weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated upstream; the pinned torch has them, and
        warnings.simplefilter("ignore", UserWarning)  # tests/test_model_packed_linear.py fails when they go
        return torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)


def quantise_linears(*modules: nn.Module | None) -> None:
    """Every `PackedLinear` inside `modules` runs on int8 weights at inference (see the module docstring)."""
    for module in modules:
        for linear in (module.modules() if module is not None else ()):
            if isinstance(linear, PackedLinear):
                linear.int8 = True


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

"""The float type a frozen transformer tower computes in: one decision, so training features and serving agree.

bfloat16 keeps float32's range with an 8-bit mantissa: on e5-small its pooled outputs stay within cosine
0.99995 of float32 (tests/test_text_e5_tower.py), and where the CPU multiplies bfloat16 in hardware (AMX or
AVX512-BF16, as on the machines this runs on) a batched forward is about four times faster. Elsewhere
bfloat16 is emulated and slower than float32, so "auto" picks it only where it is native.

"int8" keeps the layers in that float type (what "auto" picks) and runs their matrix products on int8 weights
when nothing is being trained (`model/packed_linear.py`): faster where the CPU has int8 dot products but no
bfloat16 tiles, at a cost in accuracy that bench/accuracy.py measures. A bundle records its precision, so a model
is served as it was trained and evaluated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # model/config.py reads PRECISIONS: importing it must not load torch
    import torch

PRECISIONS = ("auto", "float32", "bfloat16", "int8")


def native_bfloat16() -> bool:
    """True when bfloat16 matrix products run in hardware here (a CUDA device, AMX tiles or AVX512-BF16)."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these probes: assume emulation
        return False


def resolve_precision(name: str) -> "torch.dtype":
    """The float type the layers hold and compute in: "auto" and "int8" -> bfloat16 where native, else float32;
    "float32" and "bfloat16" as named."""
    import torch

    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name in ("auto", "int8"):
        return torch.bfloat16 if native_bfloat16() else torch.float32
    return getattr(torch, name)


def quantises_linears(name: str) -> bool:
    """Whether the towers' linear layers run on int8 weights at inference."""
    return name == "int8"

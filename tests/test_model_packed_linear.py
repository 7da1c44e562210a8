"""`PackedLinear`: nn.Linear's results and state dict, whichever path computes them."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from shopclip.model.packed_linear import PackedLinear, quantise_linears, quantise_rows, row_bucket


@pytest.fixture
def layer() -> PackedLinear:
    torch.manual_seed(0)
    return PackedLinear(48, 24).to(torch.bfloat16).eval()


def _plain(layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())


@pytest.mark.parametrize("shape", [(1, 48), (3, 7, 48), (130, 48)])
def test_inference_matches_a_plain_linear_at_any_row_count(layer: PackedLinear, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape).to(torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == (*shape[:-1], 24) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _plain(layer, x), atol=0.05, rtol=0.02)


def test_changed_weights_are_repacked(layer: PackedLinear) -> None:
    x = torch.randn(5, 48).to(torch.bfloat16)
    with torch.inference_mode():
        layer(x)
        layer.weight.mul_(-1)
        flipped = layer(x)
    torch.testing.assert_close(flipped.float(), _plain(layer, x), atol=0.05, rtol=0.02)


def test_training_takes_the_differentiable_path(layer: PackedLinear) -> None:
    x = torch.randn(4, 48).to(torch.bfloat16)
    layer(x).float().sum().backward()
    assert layer.weight.grad is not None


def test_copies_and_pickles_after_packing(layer: PackedLinear) -> None:
    x = torch.randn(2, 48).to(torch.bfloat16)
    with torch.inference_mode():
        expected = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), expected)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_row_buckets_cover_every_count_with_bounded_padding() -> None:
    buckets = {row_bucket(rows) for rows in range(1, 5000)}
    assert len(buckets) < 64
    for rows in range(1, 5000):
        padding = row_bucket(rows) - rows
        assert 0 <= padding < 16 if rows <= 64 else 0 <= padding <= rows // 8, rows
    assert all(row_bucket(row_bucket(rows)) == row_bucket(rows) for rows in range(1, 5000))  # callers pre-pad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_inference_stays_within_quantisation_noise_of_a_plain_linear(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    layer = PackedLinear(384, 96).to(dtype).eval()
    quantise_linears(layer)
    x = torch.randn(37, 384).to(dtype)
    with torch.inference_mode():
        out = layer(x)
    expected = _plain(layer, x)
    assert out.shape == (37, 96) and out.dtype == dtype
    cosines = torch.nn.functional.cosine_similarity(out.float(), expected, dim=1)
    assert cosines.min() > 0.995
    assert not torch.allclose(out.float(), expected, atol=1e-4)  # it really ran on int8 weights
    assert not layer.pads_rows(x)  # fbgemm needs no row buckets


def test_int8_weights_keep_every_row_within_half_a_step() -> None:
    torch.manual_seed(2)
    weight = torch.randn(16, 32) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different scales
    quantised = quantise_rows(weight)
    steps = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((quantised.dequantize() - weight).abs() <= steps / 2 + 1e-7).all()


def test_int8_layers_train_and_pickle_as_plain_linears() -> None:
    torch.manual_seed(3)
    layer = PackedLinear(48, 24)
    quantise_linears(layer)
    x = torch.randn(4, 48)
    out = layer(x)  # gradients: the float path, exactly nn.Linear
    torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None
    with torch.inference_mode():
        expected = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.int8
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), expected)
    with torch.no_grad():
        layer.weight.mul_(-1)
        torch.testing.assert_close(layer(x), -expected + 2 * layer.bias, atol=0.05, rtol=0.05)  # re-quantised


def test_int8_layers_compute_in_their_float_type_where_torch_quantises_on_another_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On ARM torch quantises with qnnpack, whose dynamic linear fbgemm's per-row weights are not made for."""
    from shopclip.model import packed_linear

    torch.manual_seed(4)
    layer = PackedLinear(48, 24).eval()
    quantise_linears(layer)
    x = torch.randn(5, 48)
    with torch.inference_mode():
        assert not torch.allclose(layer(x), _plain(layer, x), atol=1e-5)  # int8 here, on fbgemm
    monkeypatch.setattr(torch.backends.quantized, "engine", "qnnpack", raising=False)
    packed_linear._int8_engine.cache_clear()
    try:
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), _plain(layer, x))
    finally:
        monkeypatch.undo()
        packed_linear._int8_engine.cache_clear()

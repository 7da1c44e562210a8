"""`PackedLinear`: nn.Linear's results and state dict, whichever path computes them."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from shopclip.model.packed_linear import PackedLinear, row_bucket


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

"""Model assembly: shapes, one shared normalised space, fusion, cached tower features, freezing, parameter groups."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from PIL import Image

from shopclip.errors import InvalidInput
from shopclip.model.clip import IMAGE_FEATURES, ShopClipModel, build_model
from shopclip.model.config import ModelConfig, OpenClipSpec


def small_config(**overrides: object) -> ModelConfig:
    """A fast model: hashed n-gram text tower, ImageNet EfficientNet-Lite0 at 64 px, 1234 classes."""
    values = dict(text_towers=["ngram"], ngram_buckets=2**10, ngram_dim=16, image_size=64,
                  image_extra_trunks=[], embed_dim=32,
                  codes=list(range(10, 10 + 1234)))
    values.update(overrides)
    return ModelConfig(**values)


def png(colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (80, 80), (255, 255, 255))
    image.paste(colour, (20, 20, 60, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model() -> ShopClipModel:
    torch.manual_seed(0)
    return build_model(small_config()).eval()


TEXTS = ["Chaise de jardin en bois massif", "Jeu vidéo PS4 aventure", "Poupée mannequin et accessoires"]


def test_config_round_trips_through_json() -> None:
    config = small_config(backbone="open_clip:ViT-B-32=/models/clip.pt")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_refuses_unknown_keys_and_duplicate_codes() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "layers": 3})
    with pytest.raises(ValueError, match="codes"):
        ModelConfig(codes=[10, 40, 10])
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(backbone="open_clip:=/x.pt")


@pytest.mark.parametrize("backbone, arch, checkpoint", [
    ("open_clip:ViT-B-32=/m/clip.pt", "ViT-B-32", "/m/clip.pt"),
    ("open_clip:RN50", "RN50", None),
    ("open_clip:local-dir:/models/xlm", "local-dir:/models/xlm", None),
])
def test_open_clip_option_parses(backbone: str, arch: str, checkpoint: str | None) -> None:
    assert OpenClipSpec.parse(backbone) == OpenClipSpec(arch, checkpoint)


def test_embeddings_share_one_normalised_space(model: ShopClipModel) -> None:
    tokens = model.tokenize(TEXTS)
    assert tokens and all(key.startswith("ngram.") for key in tokens)
    pixels = torch.stack([model.preprocess_image(png(c)) for c in [(200, 0, 0), (0, 200, 0), (0, 0, 200)]])
    with torch.inference_mode():
        text, image = model.encode_text(tokens), model.encode_image(pixels)
        logits = model.classify(model.fuse(text, image, torch.tensor([True] * 3), torch.tensor([True] * 3)))
    assert text.shape == image.shape == (3, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3)) and torch.allclose(image.norm(dim=-1), torch.ones(3))
    assert logits.shape == (3, 1234) and len(model.codes) == 1234
    assert not torch.allclose(text[0], text[1])  # different titles, different vectors


def test_fusion_puts_single_modality_products_in_the_same_space(model: ShopClipModel) -> None:
    text, image = torch.randn(4, 32), torch.randn(4, 32)
    has_text, has_image = torch.tensor([True, False, True, False]), torch.tensor([False, True, True, False])
    image[0] = float("nan")  # whatever a missing modality holds must not leak into the fused vector
    fused = model.fuse(text, image, has_text, has_image)
    normalise = torch.nn.functional.normalize
    assert torch.allclose(fused[0], normalise(text[0], dim=0), atol=1e-6)
    assert torch.allclose(fused[1], normalise(image[1], dim=0), atol=1e-6)
    assert torch.allclose(fused[2], normalise(normalise(text[2], dim=0) + normalise(image[2], dim=0), dim=0))
    assert torch.equal(fused[3], torch.zeros(32))


def test_learned_image_weight_moves_only_products_with_both_modalities(model: ShopClipModel) -> None:
    text, image = torch.randn(3, 32), torch.randn(3, 32)
    has_text, has_image = torch.tensor([True, False, True]), torch.tensor([False, True, True])
    before = model.fuse(text, image, has_text, has_image)
    with torch.no_grad():
        model.log_image_weight.fill_(math.log(0.25))
    try:
        after = model.fuse(text, image, has_text, has_image)
    finally:
        with torch.no_grad():
            model.log_image_weight.zero_()
    normalise = torch.nn.functional.normalize
    assert torch.allclose(after[:2], before[:2])  # a single modality is normalised: its weight cannot matter
    expected = normalise(normalise(text[2], dim=0) + 0.25 * normalise(image[2], dim=0), dim=0)
    assert torch.allclose(after[2], expected, atol=1e-6)
    assert model.log_image_weight.requires_grad


def test_state_dicts_from_before_the_image_weight_load_with_equal_weights(model: ShopClipModel) -> None:
    state = {k: v for k, v in model.state_dict().items() if k != "log_image_weight"}
    model.load_state_dict(state)  # strict
    assert float(model.log_image_weight) == 0.0


def test_preprocess_image_names_the_field(model: ShopClipModel) -> None:
    with pytest.raises(InvalidInput) as caught:
        model.preprocess_image(b"\x89PNG broken")
    assert caught.value.field == "image"
    assert model.preprocess_image(png((1, 2, 3)), train=True).shape == (3, 64, 64)


def test_cached_tower_features_give_the_live_embeddings(model: ShopClipModel) -> None:
    tokens = model.tokenize(TEXTS)
    pixels = torch.stack([model.preprocess_image(png((30 * i, 0, 0))) for i in range(3)])
    features = model.tower_features(tokens, pixels)
    assert set(features) == {IMAGE_FEATURES}  # the n-gram tower is trained from scratch: never cached
    assert features[IMAGE_FEATURES].shape == (3, 1280)
    with torch.inference_mode():
        assert torch.allclose(model.encode_image(None, precomputed=features[IMAGE_FEATURES]),
                              model.encode_image(pixels), atol=1e-6)
        assert torch.allclose(model.encode_text(tokens, precomputed=features), model.encode_text(tokens))
    with pytest.raises(ValueError, match="ngram"):
        model.encode_text(None, precomputed=features)


def test_frozen_towers_stay_still_while_the_rest_learns() -> None:
    torch.manual_seed(1)
    model = build_model(small_config(codes=[10, 40, 50]))
    model.freeze_towers()
    model.train()
    assert not model.image_tower.trunk.training  # batch-norm statistics of a frozen trunk do not move
    assert model.text_towers["ngram"].training
    trunk_before = {k: v.clone() for k, v in model.image_tower.trunk.state_dict().items()}
    optimiser = torch.optim.AdamW(model.param_groups(tower_lr=1e-4, lr=1e-2, weight_decay=0.01))
    pixels = torch.stack([model.preprocess_image(png((0, 50 * i, 0)), train=True) for i in range(3)])
    tokens = model.tokenize(TEXTS)
    fused = model.fuse(model.encode_text(tokens), model.encode_image(pixels), torch.ones(3, dtype=torch.bool),
                       torch.ones(3, dtype=torch.bool))
    loss = torch.nn.functional.cross_entropy(model.classify(fused) * model.logit_scale.exp(), torch.tensor([0, 1, 2]))
    loss.backward()
    assert model.text_towers["ngram"].bag.weight.grad is not None
    assert model.image_tower.projection.proj.weight.grad is not None and model.logit_scale.grad is not None
    optimiser.step()
    after = model.image_tower.trunk.state_dict()
    assert all(torch.equal(trunk_before[k], after[k]) for k in trunk_before)
    model.freeze_towers(text=False, image=False)
    assert all(p.requires_grad for p in model.parameters())


def test_param_groups_give_pretrained_towers_the_lower_rate(model: ShopClipModel) -> None:
    model.freeze_towers(text=False, image=False)
    groups = model.param_groups(tower_lr=1e-5, lr=1e-3, weight_decay=0.05)
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    trunk = {id(p) for p in model.image_tower.trunk.parameters()}
    for group in groups:
        in_trunk = {id(p) in trunk for p in group["params"]}
        assert len(in_trunk) == 1
        assert group["lr"] == (1e-5 if in_trunk.pop() else 1e-3)
        assert group["weight_decay"] == (0.05 if all(p.ndim >= 2 for p in group["params"]) else 0.0)
    model.freeze_towers()
    assert not any(id(p) in trunk for group in model.param_groups(1e-5, 1e-3, 0.0) for p in group["params"])

"""open_clip backbone: any architecture with a local checkpoint loads by one option, with open_clip's own
tokenizer and preprocessing; tested with a tiny randomly initialised open_clip model saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from shopclip.model.clip import build_model
from shopclip.model.config import ModelConfig
from support.images import jpeg_bytes

TINY_ARCH = "shopclip-test-tiny-vit"
TINY_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """Register the tiny architecture, randomly initialise it and save its weights like a real checkpoint."""
    folder = tmp_path_factory.mktemp("open_clip")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder)
    torch.manual_seed(3)
    reference = open_clip.create_model(TINY_ARCH).eval()
    with torch.no_grad():
        reference.logit_scale.fill_(2.5)  # not the default: proves the checkpoint's value is kept
    checkpoint = folder / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    return checkpoint, reference


PRODUCT_PHOTO = jpeg_bytes((60, 40), (30, 90, 160), box=(10, 5, 50, 35))
"""A product on white: shopclip's decode crops the white border, then open_clip's transform resizes the rest."""


def test_one_option_loads_the_checkpoint_with_open_clips_tokenizer_and_transform(tiny_checkpoint) -> None:
    checkpoint, reference = tiny_checkpoint
    model = build_model(ModelConfig(backbone=f"open_clip:{TINY_ARCH}={checkpoint}", codes=[10, 40, 50])).eval()
    assert model.config.embed_dim == 24 and model.config.text_towers == ["open_clip"]
    assert model.logit_scale.item() == pytest.approx(2.5)
    texts = ["lampe de chevet", "console de jeux"]
    tokens = model.tokenize(texts)
    assert torch.equal(tokens["open_clip.ids"], open_clip.get_tokenizer(TINY_ARCH)(texts))
    _, _, open_clip_eval = open_clip.create_model_and_transforms(TINY_ARCH)
    pixels = model.preprocess_image(PRODUCT_PHOTO)
    assert pixels.shape == (3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model.encode_text(tokens), reference.encode_text(tokens["open_clip.ids"], normalize=True),
                              atol=1e-5)
        assert torch.allclose(model.encode_image(pixels[None]), reference.encode_image(pixels[None], normalize=True),
                              atol=1e-5)
    # open_clip's own eval transform, applied after shopclip's decode + white-border crop
    from shopclip.model.preprocess import prepare_image
    assert torch.allclose(pixels, open_clip_eval(prepare_image(PRODUCT_PHOTO)))


def test_pretrained_open_clip_towers_freeze_and_cache(tiny_checkpoint) -> None:
    checkpoint, _ = tiny_checkpoint
    model = build_model(ModelConfig(backbone=f"open_clip:{TINY_ARCH}={checkpoint}", codes=[1, 2])).eval()
    tokens = model.tokenize(["sac à dos"])
    pixels = model.preprocess_image(PRODUCT_PHOTO)[None]
    features = model.tower_features(tokens, pixels)
    assert set(features) == {"open_clip", "image"}
    with torch.inference_mode():
        assert torch.allclose(model.encode_text(None, precomputed=features), model.encode_text(tokens), atol=1e-6)
    model.freeze_towers()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"logit_scale", "log_image_weight", "head.weight", "head.bias"}


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(Exception, match="no-such-arch|not found|Unknown"):
        build_model(ModelConfig(backbone="open_clip:no-such-arch"))

"""Image tower: ImageNet EfficientNet-Lite0 weights really load (mapping checked; a slow test classifies a photo)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from shopclip.model.image_tower import (build_timm_image_tower, imagenet_weights_path, load_imagenet_weights,
                                        map_imagenet_state_dict)
from shopclip.model.preprocess import ImageTransform

# ImageNet classes that describe sklearn's china.jpg (a Chinese temple roof).
FITTING_IMAGENET_CLASSES = {497: "church", 698: "palace", 663: "monastery", 442: "bell cote"}


@pytest.fixture(scope="module")
def imagenet_source() -> OrderedDict:
    return torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)


def test_pretrained_tower_trunk_holds_the_imagenet_tensors(imagenet_source: OrderedDict) -> None:
    tower = build_timm_image_tower("efficientnet_lite0", embed_dim=32, image_size=224, pretrained=True)
    trunk_state = tower.trunk.state_dict()
    assert len(imagenet_source) == 296 and len(trunk_state) == 294  # headless: the ImageNet classifier stays out
    for (_, source), (_, loaded) in zip(imagenet_source.items(), trunk_state.items()):
        assert torch.equal(source, loaded)
    assert tower.pretrained and tower.feature_dim == 1280
    assert tower(torch.zeros(2, 3, 224, 224)).shape == (2, 32)


def test_mapping_refuses_a_shape_mismatch(imagenet_source: OrderedDict) -> None:
    tower = build_timm_image_tower("efficientnet_lite0", embed_dim=8, image_size=224, pretrained=False)
    target = tower.trunk.state_dict()
    broken = OrderedDict(imagenet_source)
    broken["_blocks.3._project_conv.weight"] = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="_blocks.3._project_conv.weight"):
        map_imagenet_state_dict(broken, target)


def test_mapping_refuses_a_shifted_order(imagenet_source: OrderedDict) -> None:
    target = build_timm_image_tower("efficientnet_lite0", 8, 224, pretrained=False).trunk.state_dict()
    items = list(imagenet_source.items())
    items[1], items[2] = items[2], items[1]  # bn weight <-> bias: same shape, different kind
    with pytest.raises(ValueError, match="does not map"):
        map_imagenet_state_dict(OrderedDict(items), target)


def test_mapping_refuses_extra_tensors_that_are_not_the_classifier(imagenet_source: OrderedDict) -> None:
    target = build_timm_image_tower("efficientnet_lite0", 8, 224, pretrained=False).trunk.state_dict()
    extra = OrderedDict(list(imagenet_source.items())[:-2])
    extra["something.else"] = torch.zeros(3)
    extra["_fc.bias"] = torch.zeros(1000)
    with pytest.raises(ValueError, match="cannot fill"):
        map_imagenet_state_dict(extra, target)


def test_no_offline_weights_for_other_trunks() -> None:
    with pytest.raises(ValueError, match="image_pretrained"):
        build_timm_image_tower("mobilenetv3_small_050", 8, 224, pretrained=True)


@pytest.mark.slow
def test_imagenet_head_recognises_a_real_photo() -> None:
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_image

    classifier = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    load_imagenet_weights(classifier)  # all 296 tensors, ImageNet head included
    pixels = ImageTransform(224)(Image.fromarray(np.asarray(load_sample_image("china.jpg"))))
    with torch.inference_mode():
        top5 = classifier(pixels[None]).softmax(-1)[0].topk(5).indices.tolist()
    assert set(top5) & set(FITTING_IMAGENET_CLASSES), f"top-5 {top5} has none of {FITTING_IMAGENET_CLASSES}"

"""Image tower: ImageNet EfficientNet-Lite weights really load (mapping checked; a slow test classifies a photo),
and extra trunks each read the image at their own size, their outputs concatenated."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from shopclip.errors import InvalidConfig
from shopclip.model.config import ModelConfig, TrunkSpec
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


def test_extra_trunks_read_the_image_at_their_own_size_and_are_concatenated() -> None:
    torch.manual_seed(0)
    tower = build_timm_image_tower("efficientnet_lite0", embed_dim=16, image_size=64, pretrained=False,
                                   extra_trunks=(TrunkSpec("efficientnet_lite2", 48),)).eval()
    seen: list[tuple[int, ...]] = []
    for trunk in tower.trunks:
        trunk.register_forward_pre_hook(lambda _module, args: seen.append(tuple(args[0].shape[-2:])))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = tower.features(pixels)
        main_alone = tower.trunk(pixels)
    assert seen[:2] == [(64, 64), (48, 48)]
    assert tower.feature_dim == 1280 + 1280 and features.shape == (2, 2560)
    torch.testing.assert_close(features[:, :1280], main_alone)  # the main trunk reads the pixels untouched
    assert tower(pixels).shape == (2, 16)  # the projection reads both trunks


def test_an_extra_trunk_holds_its_own_package_weights() -> None:
    tower = build_timm_image_tower("efficientnet_lite0", embed_dim=8, image_size=64, pretrained=True,
                                   extra_trunks=(TrunkSpec("efficientnet_lite2", 64),))
    source = torch.load(imagenet_weights_path("efficientnet_lite2"), map_location="cpu", weights_only=True)
    extra = tower.extra_trunks[0].state_dict()
    assert len(extra) == len(source) - 2  # headless
    for (_, expected), (_, loaded) in zip(source.items(), extra.items()):
        assert torch.equal(expected, loaded)
    lite0 = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(next(iter(lite0.values())), next(iter(tower.trunk.state_dict().values())))


@pytest.mark.parametrize("spec", ["efficientnet_lite2", "efficientnet_lite2@", "@320", "efficientnet_lite2@big",
                                  "efficientnet_lite2@0", "resnet50@224"])
def test_a_bad_extra_trunk_is_refused_naming_the_option(spec: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        ModelConfig(image_extra_trunks=[spec])
    assert caught.value.field == "image_extra_trunks" and spec.split("@")[0] in str(caught.value)


def test_a_random_extra_trunk_may_be_any_timm_name_and_the_pixels_fit_the_largest() -> None:
    config = ModelConfig(image_pretrained=False, image_size=224, image_extra_trunks=["mobilenetv3_small_050@256"])
    assert config.extra_trunks == (TrunkSpec("mobilenetv3_small_050", 256),) and config.pixel_size == 256
    assert ModelConfig(image_size=288, image_extra_trunks=["efficientnet_lite1@240"]).pixel_size == 288


def test_a_bundle_config_from_before_extra_trunks_has_none() -> None:
    recorded = {key: value for key, value in ModelConfig(image_size=224).to_dict().items()
                if key != "image_extra_trunks"}
    config = ModelConfig.from_dict(recorded)
    assert config.image_extra_trunks == [] and config.pixel_size == 224


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


def _small_tower(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_timm_image_tower("efficientnet_lite0", embed_dim=16, image_size=64, pretrained=False,
                                  extra_trunks=(TrunkSpec("efficientnet_lite2", 48),), **extra)


@pytest.mark.parametrize("batch", [1, 3])
def test_inference_features_equal_the_eager_features_at_any_batch(batch: int) -> None:
    tower = _small_tower().eval()
    pixels = torch.randn(batch, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(tower.inference_features(pixels), tower.features(pixels), atol=1e-4, rtol=1e-4)
    assert tower._graph._graph is not None  # really the frozen graph, not the eager fallback


def test_the_inference_graph_follows_new_trunk_weights() -> None:
    tower, other = _small_tower().eval(), build_timm_image_tower(
        "efficientnet_lite0", embed_dim=16, image_size=64, pretrained=False,
        extra_trunks=(TrunkSpec("efficientnet_lite2", 48),)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = tower.inference_features(pixels)
    tower.load_state_dict(other.state_dict())  # what loading a bundle into a built model does
    with torch.inference_mode():
        after = tower.inference_features(pixels)
        torch.testing.assert_close(after, other.features(pixels), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, after)


def test_inference_features_run_eagerly_while_a_trunk_trains() -> None:
    tower = _small_tower().train()
    pixels = torch.randn(2, 3, 64, 64)
    tower.inference_features(pixels).sum().backward()  # gradients reach the trunk: the eager path
    assert tower.trunk.conv_stem.weight.grad is not None and tower._graph._graph is None
    assert tower.projection.training  # building no graph left every mode as it was


def test_building_the_graph_leaves_the_projection_mode_alone() -> None:
    tower = _small_tower()
    for trunk in tower.trunks:
        trunk.eval()  # frozen trunks in a model that trains its projection
    with torch.no_grad():
        tower.inference_features(torch.randn(2, 3, 64, 64))
    assert tower._graph._graph is not None and tower.projection.training


def test_a_graph_that_cannot_be_built_leaves_the_eager_path(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    tower = _small_tower().eval()
    monkeypatch.setattr(torch.jit, "trace", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("no tracer")))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(tower.inference_features(pixels), tower.features(pixels))
    assert "could not be built (no tracer)" in caplog.text


def test_a_copied_tower_builds_its_own_graph() -> None:
    import copy

    tower = _small_tower().eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        tower.inference_features(pixels)
    twin = copy.deepcopy(tower)
    with torch.inference_mode():
        torch.testing.assert_close(twin.inference_features(pixels), tower.features(pixels), atol=1e-4, rtol=1e-4)
    assert twin._graph is not tower._graph and twin._graph._graph is not None

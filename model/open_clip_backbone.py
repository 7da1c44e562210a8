"""Any open_clip architecture as the shopclip backbone: `open_clip:ARCH=/path/to/checkpoint`.

The whole model comes from open_clip's public API: `create_model_and_transforms(arch, pretrained=path)`
builds it and loads the local checkpoint, `get_tokenizer(arch)` gives its tokenizer, and its own
train/eval transforms preprocess images (after shopclip's safe decode and white-border crop, which
are about the input, not the model). Its two towers already project into one aligned space, so the
assembly adds no projection on top and keeps the checkpoint's `logit_scale`.

A bundle must rebuild the architecture without the original checkpoint or a registered config, so
`OpenClipParts.rebuild_cfg` (open_clip's own `model_cfg` + `preprocess_cfg`) is stored in the bundle's
config.json; `build_open_clip(spec, rebuild_cfg=...)` then creates the model through open_clip's
`local-dir:` schema from that config alone, and the bundle's safetensors fill the weights.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from shopclip.model.config import OpenClipSpec
from shopclip.model.image_tower import ImageTower, quiet_open_clip_init
from shopclip.input_policy import DEFAULT_LIMITS, ProductLimits
from shopclip.model.preprocess import ImageInput, prepare_image

LOCAL_DIR_PREFIX = "local-dir:"


class OpenClipTextTower(nn.Module):
    """The text half of an open_clip model as a shopclip text tower (see model/text_towers.py)."""

    name = "open_clip"

    def __init__(self, clip: nn.Module, tokenizer: Callable[..., torch.Tensor], output_dim: int,
                 pretrained: bool) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.output_dim = output_dim
        self.pretrained = pretrained

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"ids": self.tokenizer(list(texts))}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.clip.encode_text(batch["ids"], normalize=False)


class OpenClipImageTransform:
    """shopclip's safe decode + content crop, then the model's own open_clip transform."""

    def __init__(self, train: Callable, evaluate: Callable, preprocess_cfg: dict[str, Any]) -> None:
        self._train, self._evaluate = train, evaluate
        self.preprocess_cfg = preprocess_cfg

    def __call__(self, image: ImageInput, train: bool = False, field: str = "image",
                 limits: ProductLimits = DEFAULT_LIMITS) -> torch.Tensor:
        return self.from_prepared(prepare_image(image, field, limits), train)

    def from_prepared(self, prepared: Image.Image, train: bool = False) -> torch.Tensor:
        """The model's transform on `prepare_image`'s output."""
        return (self._train if train else self._evaluate)(prepared)

    def to_dict(self) -> dict[str, Any]:
        return {"open_clip": self.preprocess_cfg, "content_crop": True}


@dataclass
class OpenClipParts:
    """What the assembly takes from one open_clip model."""

    text_tower: OpenClipTextTower
    image_tower: ImageTower
    image_transform: OpenClipImageTransform
    embed_dim: int
    logit_scale: float
    """Log of the contrastive temperature's inverse, as open_clip stores it."""
    rebuild_cfg: dict[str, Any]
    """open_clip's `model_cfg` and `preprocess_cfg`: enough to rebuild the architecture from JSON."""


def build_open_clip(spec: OpenClipSpec, rebuild_cfg: dict[str, Any] | None = None) -> OpenClipParts:
    """From the spec's checkpoint, or (bundle loading) randomly initialised from `rebuild_cfg`."""
    import open_clip

    if rebuild_cfg is None:
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(spec.arch, pretrained=spec.checkpoint)
        tokenizer = open_clip.get_tokenizer(spec.arch)
        rebuild_cfg = {"model_cfg": _model_cfg(spec.arch),
                       "preprocess_cfg": open_clip.get_model_preprocess_cfg(model)}
    else:
        with tempfile.TemporaryDirectory(prefix="shopclip-open_clip-") as folder:
            (Path(folder) / "open_clip_config.json").write_text(json.dumps(rebuild_cfg))
            with quiet_open_clip_init():  # the bundle's safetensors fill the weights next
                model, train_tf, eval_tf = open_clip.create_model_and_transforms(LOCAL_DIR_PREFIX + folder)
            tokenizer = open_clip.get_tokenizer(LOCAL_DIR_PREFIX + folder)
    return _split(model, tokenizer, train_tf, eval_tf, rebuild_cfg, pretrained=_is_pretrained(spec))


def _is_pretrained(spec: OpenClipSpec) -> bool:
    """Weights from a checkpoint (lower learning rate, frozen by freeze_towers); the flag is a property of
    the spec, so a model rebuilt from a bundle keeps it."""
    return spec.checkpoint is not None or spec.arch.startswith(LOCAL_DIR_PREFIX)


def _model_cfg(arch: str) -> dict[str, Any]:
    import open_clip

    if arch.startswith(LOCAL_DIR_PREFIX):
        config_path = Path(arch[len(LOCAL_DIR_PREFIX):]) / "open_clip_config.json"
        return json.loads(config_path.read_text())["model_cfg"]
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"backbone: unknown open_clip architecture {arch!r}")
    return model_cfg


def _split(model: nn.Module, tokenizer: Callable, train_tf: Callable, eval_tf: Callable,
           rebuild_cfg: dict[str, Any], pretrained: bool) -> OpenClipParts:
    """Hand the vision tower to the image side and the rest (text side) to the text tower.

    The text tower keeps the CLIP module for its `encode_text`; its `visual` is swapped for an Identity
    and its `logit_scale` moves to the assembly, so no tensor is owned twice (safetensors refuses
    shared tensors, and an optimiser would step them twice).
    """
    visual = model.visual
    model.visual = nn.Identity()
    embed_dim = int(rebuild_cfg["model_cfg"]["embed_dim"])
    logit_scale = float(model.logit_scale.detach().reshape(-1)[0])
    del model.logit_scale  # the assembly owns the one trainable logit_scale, initialised from this value
    return OpenClipParts(
        text_tower=OpenClipTextTower(model, tokenizer, embed_dim, pretrained),
        image_tower=ImageTower(name="open_clip", trunk=visual, projection=nn.Identity(), feature_dim=embed_dim,
                               output_dim=embed_dim, pretrained=pretrained),
        image_transform=OpenClipImageTransform(train_tf, eval_tf, rebuild_cfg["preprocess_cfg"]),
        embed_dim=embed_dim, logit_scale=logit_scale, rebuild_cfg=rebuild_cfg)

"""`ShopClipModel`: text towers + image tower -> one L2-normalised space, plus a linear head.

Text side: each text tower's output is L2-normalised (so no tower dominates by scale), the outputs are
concatenated and one linear projection maps them to `embed_dim`. Image side: the image tower's trunk
then its projection. Fusion: the sum of the available normalised modality embeddings, re-normalised,
so a product with only text or only an image lands in the same space. The head classifies fused vectors.

Two backbones, chosen by `ModelConfig.backbone` in `_build_parts` (the one place that decides):
- `shopclip`: text towers from `model/text_towers.py` (default USE-multilingual, e5-small, hashed n-grams),
  EfficientNet-Lite0 and -Lite2 trunks with ImageNet weights, trainable projections.
- `open_clip:ARCH=/ckpt`: both towers of one open_clip model; they are already aligned, so the
  projections are identities and `logit_scale` starts from the checkpoint's.

Frozen towers (`freeze_towers`) stay in eval mode through `train()`, so cached `tower_features` equal
what the towers would compute live (batch-norm statistics and dropout do not move).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from shopclip.model.config import SHOPCLIP_BACKBONE, ModelConfig
from shopclip.model.e5_tuned import E5_TUNED, E5TunedTop
from shopclip.model.image_tower import ImageTower, build_timm_image_tower
from shopclip.model.packed_linear import quantise_linears
from shopclip.model.precision import quantises_linears, resolve_precision
from shopclip.input_policy import DEFAULT_LIMITS, ProductLimits
from shopclip.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageInput, ImageTransform

IMAGE_FEATURES = "image"
"""Key of the image trunk's output in `tower_features` (text towers use their own names)."""
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
"""CLIP's initial temperature, stored as a log like open_clip."""
class ImagePreprocessor(Protocol):
    """Bytes or a PIL image -> the image tower's input (`ImageTransform`, `OpenClipImageTransform`)."""

    def __call__(self, image: ImageInput, train: bool = False, field: str = "image",
                 limits: ProductLimits = DEFAULT_LIMITS) -> torch.Tensor: ...

    def from_prepared(self, prepared: Image.Image, train: bool = False) -> torch.Tensor:
        """The same from `prepare_image(image)`, already decoded and cropped."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


class ShopClipModel(nn.Module):
    """open_clip-compatible two-tower model (`encode_text`, `encode_image`, `logit_scale`) with a linear head."""

    def __init__(self, config: ModelConfig, text_towers: Mapping[str, nn.Module], text_projection: nn.Module,
                 image_tower: ImageTower, image_transform: ImagePreprocessor, logit_scale: float,
                 architecture: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.codes = list(config.codes)
        self.text_towers = nn.ModuleDict(text_towers)
        self.text_projection = text_projection
        self.image_tower = image_tower
        self.image_transform = image_transform
        self.architecture = architecture
        """JSON facts beyond `config` that a bundle needs to rebuild this model (open_clip's model config)."""
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.log_image_weight = nn.Parameter(torch.zeros(()))
        """Fusion weight of the image (exp of it; starts at 1): learned, because a weak image next to a strong
        title must count less than the title, and the head alone cannot lower it (that would also shrink the
        logits of image-only products)."""
        self.head = nn.Linear(config.embed_dim, len(self.codes))
        self.e5_tuned = _tuned_top(config, self.text_towers)
        """The fine-tuned top of e5 (a view of the ensemble, trained apart from the two-tower loss), or None."""
        if quantises_linears(config.tower_precision):
            quantise_linears(self.text_towers, self.e5_tuned)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "log_image_weight", torch.zeros(()))  # bundles from before: equal weights
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- inputs --------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every tower's inputs in one flat dict, keys `<tower>.<key>`, batch first."""
        tokens = {}
        for name, tower in self.text_towers.items():
            tokens.update({f"{name}.{key}": value for key, value in tower.tokenize(texts).items()})
        return tokens

    def preprocess_image(self, image: bytes | Image.Image, train: bool = False) -> torch.Tensor:
        """(3, H, W) float tensor; raises InvalidInput(field="image") on undecodable or unsafe input."""
        return self.image_transform(image, train=train)

    # -- towers --------------------------------------------------------------------------------------
    def encode_text(self, tokens: Mapping[str, torch.Tensor] | None, normalize: bool = True,
                    precomputed: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(n, embed_dim). Towers found in `precomputed` (from `tower_features`) are not run again."""
        parts = [F.normalize(self._text_tower_output(name, tower, tokens, precomputed), dim=-1)
                 for name, tower in self.text_towers.items()]
        embedding = self.text_projection(torch.cat(parts, dim=-1))
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def _text_tower_output(self, name: str, tower: nn.Module, tokens: Mapping[str, torch.Tensor] | None,
                           precomputed: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        if precomputed is not None and name in precomputed:
            return precomputed[name]
        prefix = f"{name}."
        batch = {key[len(prefix):]: value for key, value in (tokens or {}).items() if key.startswith(prefix)}
        if not batch:
            raise ValueError(f"encode_text: no tokens and no precomputed features for text tower {name!r}")
        return tower(batch)

    def encode_image(self, pixels: torch.Tensor | None, normalize: bool = True,
                     precomputed: torch.Tensor | None = None) -> torch.Tensor:
        """(n, embed_dim). `precomputed` is the trunk output (`tower_features(...)["image"]`)."""
        if precomputed is None and pixels is None:
            raise ValueError("encode_image: pass pixels or precomputed trunk features")
        features = precomputed if precomputed is not None else self.image_tower.inference_features(pixels)
        embedding = self.image_tower.project(features)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def pretrained_text_towers(self) -> list[str]:
        return [name for name, tower in self.text_towers.items() if tower.pretrained]

    @torch.no_grad()
    def tower_features(self, tokens: Mapping[str, torch.Tensor] | None = None,
                       pixels: torch.Tensor | None = None, tuned: bool = False) -> dict[str, torch.Tensor]:
        """Outputs of the pretrained (freezable) towers, to cache once while they are frozen:
        `{tower name: (n, output_dim)}` for pretrained text towers, `{"image": (n, feature_dim)}` for a
        pretrained image trunk. Trainable-from-scratch parts (n-gram tower, projections) are left out.
        `tuned` adds the fine-tuned e5 top's output under "e5_tuned", from the same e5 forward."""
        features = {}
        if tokens is not None:
            for name in self.pretrained_text_towers():
                if tuned and name == "e5" and self.e5_tuned is not None:
                    features["e5"], features[E5_TUNED] = self._e5_outputs(tokens)
                else:
                    features[name] = self._text_tower_output(name, self.text_towers[name], tokens, None)
        if pixels is not None and self.image_tower.pretrained:
            features[IMAGE_FEATURES] = self.image_tower.inference_features(pixels)
        return features

    def e5_hidden_states(self, tokens: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states where the tuned top starts, attention mask) of the e5 tower's inputs."""
        batch = {key[len("e5."):]: value for key, value in tokens.items() if key.startswith("e5.")}
        return self.text_towers["e5"].hidden_states(batch, self.e5_tuned.start), batch["attention_mask"]

    def _e5_outputs(self, tokens: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self.e5_hidden_states(tokens)
        frozen = self.text_towers["e5"].forward_from_layer(hidden, mask, self.e5_tuned.start)
        return frozen, self.e5_tuned(hidden, mask)

    # -- fusion and head -----------------------------------------------------------------------------
    def fuse(self, text_emb: torch.Tensor, image_emb: torch.Tensor, has_text: torch.Tensor,
             has_image: torch.Tensor) -> torch.Tensor:
        """L2-normalised weighted sum of the modalities each row has (rows without one may hold anything
        there): text + exp(log_image_weight) * image. A row with neither modality comes out as zero."""
        text = torch.where(has_text[:, None], F.normalize(text_emb, dim=-1), torch.zeros_like(text_emb))
        image = torch.where(has_image[:, None], F.normalize(image_emb, dim=-1), torch.zeros_like(image_emb))
        return F.normalize(text + self.log_image_weight.exp().to(image.dtype) * image, dim=-1)

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """Logits (n, len(codes))."""
        return self.head(fused)

    # -- training helpers ----------------------------------------------------------------------------
    def fit_text_statistics(self, texts: Sequence[str]) -> None:
        """Corpus statistics of the text towers that have them (the n-gram tower's IDF), from training texts."""
        for tower in self.text_towers.values():
            if hasattr(tower, "fit_idf"):
                tower.fit_idf([text for text in texts if text])

    def freeze_towers(self, text: bool = True, image: bool = True) -> None:
        """Freeze (True) or unfreeze (False) the pretrained towers; n-gram tower, projections, head and
        logit_scale always stay trainable."""
        for name in self.pretrained_text_towers():
            self.text_towers[name].requires_grad_(not text)
        if self.image_tower.pretrained:
            for trunk in self.image_tower.trunks:
                trunk.requires_grad_(not image)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        candidates = [self.text_towers[name] for name in self.pretrained_text_towers()] + self.image_tower.trunks
        return [module for module in candidates
                if any(True for _ in module.parameters()) and not any(p.requires_grad for p in module.parameters())]

    def train(self, mode: bool = True) -> "ShopClipModel":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def param_groups(self, tower_lr: float, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: pretrained towers at `tower_lr`, everything else at `lr`; no weight decay on
        biases, norms and `logit_scale` (1-d tensors), as in open_clip's trainer. Frozen parameters and
        empty groups are left out."""
        pretrained = {id(p) for name in self.pretrained_text_towers() for p in self.text_towers[name].parameters()}
        if self.image_tower.pretrained:
            pretrained |= {id(p) for trunk in self.image_tower.trunks for p in trunk.parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        apart = {id(p) for p in self.e5_tuned.parameters()} if self.e5_tuned is not None else set()
        for parameter in self.parameters():
            if parameter.requires_grad and id(parameter) not in apart:  # the tuned e5 top has its own loop
                key = (id(parameter) in pretrained, parameter.ndim >= 2)
                groups.setdefault(key, []).append(parameter)
        return [{"params": params, "lr": tower_lr if is_tower else lr,
                 "weight_decay": weight_decay if decays else 0.0}
                for (is_tower, decays), params in sorted(groups.items())]


@dataclass
class _Parts:
    text_towers: dict[str, nn.Module]
    text_projection: nn.Module
    image_tower: ImageTower
    image_transform: ImagePreprocessor
    logit_scale: float
    architecture: dict[str, Any]
    config: ModelConfig


def build_model(config: ModelConfig) -> ShopClipModel:
    """A new model with pretrained towers loaded as the config says (ImageNet, USE, open_clip checkpoint)."""
    return assemble(config, load_pretrained=True)


def assemble(config: ModelConfig, load_pretrained: bool, architecture: dict[str, Any] | None = None) -> ShopClipModel:
    """Build the architecture; `load_pretrained=False` skips reading pretrained weights because a bundle's
    weights follow (with the bundle's `architecture` facts, e.g. an open_clip model config)."""
    parts = _build_parts(config, load_pretrained, architecture or {})
    model = ShopClipModel(parts.config, parts.text_towers, parts.text_projection, parts.image_tower,
                          parts.image_transform, parts.logit_scale, parts.architecture)
    if load_pretrained and model.e5_tuned is not None:
        model.e5_tuned.start_from(model.text_towers["e5"])
    return model


def _build_parts(config: ModelConfig, load_pretrained: bool, architecture: dict[str, Any]) -> _Parts:
    if config.backbone == SHOPCLIP_BACKBONE:
        return _shopclip_parts(config, load_pretrained)
    return _open_clip_parts(config, architecture.get("open_clip") if not load_pretrained else None)


def _shopclip_parts(config: ModelConfig, load_pretrained: bool) -> _Parts:
    from shopclip.model.text_towers import build_text_tower

    if not config.text_towers:
        raise ValueError("text_towers: at least one text tower is needed")
    towers = {name: build_text_tower(name, **_text_tower_options(name, config, load_pretrained))
              for name in config.text_towers}
    text_dim = sum(tower.output_dim for tower in towers.values())
    image_tower = build_timm_image_tower(config.image_tower, config.embed_dim, config.image_size,
                                         pretrained=config.image_pretrained and load_pretrained,
                                         extra_trunks=config.extra_trunks)
    image_tower.pretrained = config.image_pretrained  # where the weights come from, even when a bundle fills them
    return _Parts(text_towers=towers, text_projection=nn.Linear(text_dim, config.embed_dim, bias=False),
                  image_tower=image_tower,
                  image_transform=ImageTransform(config.pixel_size, IMAGENET_MEAN, IMAGENET_STD),
                  logit_scale=INITIAL_LOGIT_SCALE, architecture={}, config=config)


def _tuned_top(config: ModelConfig, towers: Mapping[str, nn.Module]) -> E5TunedTop | None:
    """The tuned e5 top when the config asks for it, the e5 tower is there and there are codes to learn."""
    if not config.e5_tuned_layers or "e5" not in towers or not config.codes:
        return None
    return E5TunedTop(config.e5_tuned_layers, len(config.codes), resolve_precision(config.tower_precision))


def _text_tower_options(name: str, config: ModelConfig, load_pretrained: bool) -> dict[str, Any]:
    """ModelConfig fields -> the constructor options of each text tower (model/text_towers.py)."""
    if name == "ngram":
        return {"buckets": config.ngram_buckets, "dim": config.ngram_dim}
    if name == "use":
        return {"pretrained": load_pretrained, "dtype": resolve_precision(config.tower_precision)}
    if name == "e5":
        return {"pretrained": load_pretrained, "max_tokens": config.e5_max_tokens,
                "dtype": resolve_precision(config.tower_precision)}
    return {}


def _open_clip_parts(config: ModelConfig, rebuild_cfg: dict[str, Any] | None) -> _Parts:
    from shopclip.model.open_clip_backbone import build_open_clip

    parts = build_open_clip(config.open_clip, rebuild_cfg=rebuild_cfg)
    # The backbone decides text towers, dims and preprocessing; the config records what was built.
    built = replace(config, text_towers=[parts.text_tower.name], embed_dim=parts.embed_dim,
                    image_tower=parts.image_tower.name, image_pretrained=parts.image_tower.pretrained,
                    image_size=int(_first(parts.rebuild_cfg["preprocess_cfg"].get("size", config.image_size))))
    return _Parts(text_towers={parts.text_tower.name: parts.text_tower}, text_projection=nn.Identity(),
                  image_tower=parts.image_tower, image_transform=parts.image_transform,
                  logit_scale=parts.logit_scale, architecture={"open_clip": parts.rebuild_cfg}, config=built)


def _first(size: int | Sequence[int]) -> int:
    return size if isinstance(size, int) else size[0]

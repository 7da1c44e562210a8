"""Turning labelled products into model inputs and embeddings, for training and evaluation alike.

`ProductInputs` holds what the model needs of every product (text, image file, label index).
`TowerCache` holds the outputs of frozen towers for every product, computed once, so a frozen-tower
epoch only runs the cheap trainable parts (n-gram tower, projections, head): minutes on a CPU.
`image_words` reads the words printed on the images of products without text (the OCR view's input), cached
per product like the towers' outputs.
`encode_rows` is the one place a batch of products becomes text, image and fused embeddings, from
raw inputs or from the cache, with gradients when training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from shopclip.errors import InvalidInput
from shopclip.catalogue_files import SourceRow
from shopclip.model.clip import IMAGE_FEATURES
from shopclip.model.text import product_text
from shopclip.training.data import has_image, has_text

Decoded = TypeVar("Decoded")

log = logging.getLogger(__name__)


class ProductInputs:
    """Texts, image paths and label indices of products, in a fixed order (row i = products[i])."""

    def __init__(self, products: Sequence[SourceRow], codes: Sequence[int]) -> None:
        index_of = {code: i for i, code in enumerate(codes)}
        unknown = sorted({p.prdtypecode for p in products} - set(index_of))
        if unknown:
            raise InvalidInput("prdtypecode", f"codes unknown to the model: {unknown[:10]}")
        self.productids = np.array([p.productid for p in products], dtype=np.int64)
        self.texts = [product_text(p.designation, p.description) if has_text(p) else "" for p in products]
        self.image_paths = [Path(p.image_path) if has_image(p) else None for p in products]
        self.has_text = torch.tensor([bool(t) for t in self.texts], dtype=torch.bool)
        self.has_image = torch.tensor([path is not None for path in self.image_paths], dtype=torch.bool)
        self.labels = torch.tensor([index_of[p.prdtypecode] for p in products], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.texts)

    def rows_of(self, productids: Sequence[int]) -> torch.Tensor:
        """Row indices of these productids (all must be present)."""
        position = {int(pid): i for i, pid in enumerate(self.productids)}
        return torch.tensor([position[int(pid)] for pid in productids], dtype=torch.long)

    def decoded_image(self, row: int, decode: Callable[[bytes], Decoded], outcome: str) -> Decoded | None:
        """`decode` of the row's image file; None when it has none, and None logged ("image of product <id>
        <outcome>: why") when the file cannot be read or decoded: the product then counts as having no image."""
        path = self.image_paths[row]
        if path is None:
            return None
        try:
            return decode(path.read_bytes())
        except (InvalidInput, OSError) as exc:
            log.warning("image of product %d %s: %s", self.productids[row], outcome, exc)
            return None

    def load_pixels(self, model, rows: torch.Tensor, train: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(pixels of the rows whose image decoded, mask over `rows` of those rows).

        An image the model cannot decode is logged and the product counted as having no image.
        """
        tensors, ok = [], []
        for row in rows.tolist():
            pixels = self.decoded_image(row, lambda data: model.preprocess_image(data, train=train), "skipped")
            ok.append(pixels is not None)
            if pixels is not None:
                tensors.append(pixels)
        return (torch.stack(tensors) if tensors else None), torch.tensor(ok, dtype=torch.bool)


@dataclass
class Batch:
    """Rows of a `ProductInputs` plus their decoded images (only in full fine-tuning)."""

    rows: torch.Tensor
    pixels: torch.Tensor | None = None
    image_ok: torch.Tensor | None = None
    """Per row: has an image that decoded (the rows of `pixels`); None when images come from the cache."""


class ImageBatches(torch.utils.data.Dataset):
    """Dataset for a DataLoader that decodes and augments images in worker processes."""

    def __init__(self, inputs: ProductInputs, model, train: bool) -> None:
        self.inputs, self.model, self.train = inputs, model, train

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, row: int) -> int:
        return row

    def collate(self, rows: list[int]) -> Batch:
        rows_tensor = torch.tensor(rows, dtype=torch.long)
        pixels, ok = self.inputs.load_pixels(self.model, rows_tensor, self.train)
        return Batch(rows=rows_tensor, pixels=pixels, image_ok=ok)


TEXT_FEATURE_CODE = ("text.py", "use_tower.py", "e5_tower.py", "packed_linear.py", "precision.py",
                     "open_clip_backbone.py")
"""The model modules that decide what a frozen text tower outputs for a product (cleaning, tokenising, forward)."""
IMAGE_FEATURE_CODE = ("preprocess.py", "image_tower.py", "open_clip_backbone.py")
"""Likewise for the frozen image trunk (decoding, cropping, forward)."""
IMAGE_CONFIG = ("backbone", "image_tower", "image_size", "image_extra_trunks", "image_pretrained")
"""The ModelConfig fields the image trunk's outputs depend on (text towers: every field but the image ones)."""


def feature_signatures(model) -> dict[str, str]:
    """Per feature key (each pretrained text tower, "image"): a digest of what decides those outputs, so a change
    to one side (an e5 option, the image crop) recomputes that side only. Text: the model config without the
    label map and the image fields, the dtypes the towers compute in, TEXT_FEATURE_CODE; image: IMAGE_CONFIG and
    IMAGE_FEATURE_CODE; both: the versions of the packages the weights come from."""
    import shopclip.model as model_package
    from shopclip.model.bundle import library_versions

    config = model.config.to_dict()
    # "auto" precisions resolve per machine: the dtypes the towers really compute in are part of the key.
    dtypes = {name: str(tower.compute_dtype) for name, tower in model.text_towers.items()
              if hasattr(tower, "compute_dtype")}
    text_config = {k: v for k, v in config.items() if k != "codes" and (k == "backbone" or k not in IMAGE_CONFIG)}
    folder = Path(model_package.__file__).parent
    text = _digest({"config": text_config, "dtypes": dtypes, "versions": library_versions()},
                   [folder / name for name in TEXT_FEATURE_CODE])
    image = _digest({"config": {k: config[k] for k in IMAGE_CONFIG}, "versions": library_versions()},
                    [folder / name for name in IMAGE_FEATURE_CODE])
    return {**{name: text for name in model.pretrained_text_towers()}, IMAGE_FEATURES: image}


def _digest(described: dict, files: Sequence[Path]) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class FeatureStore:
    """Frozen towers' outputs per productid on disk (`TrainConfig.feature_cache`): one npz per feature key
    and signature, so folds of a benchmark and repeated runs compute each product's tower outputs once."""

    def __init__(self, folder: str | Path, signatures: Mapping[str, str]) -> None:
        """`signatures` from `feature_signatures`: a key without one is never stored."""
        self.folder, self.signatures = Path(folder), dict(signatures)

    def _path(self, key: str) -> Path | None:
        signature = self.signatures.get(key)
        return None if signature is None else self.folder / f"{key}-{signature}.npz"

    def load(self, key: str) -> dict[int, np.ndarray]:
        path = self._path(key)
        if path is None or not path.is_file():
            return {}
        with np.load(path) as stored:
            return dict(zip(stored["productids"].tolist(), stored["features"]))

    def save(self, key: str, features: dict[int, np.ndarray]) -> None:
        from shopclip.atomic import replace_atomically

        if not features or self._path(key) is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        ids = np.array(sorted(features), dtype=np.int64)
        with replace_atomically(self._path(key)) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, productids=ids, features=np.stack([features[i] for i in ids.tolist()]))


OCR_CODE = ("preprocess.py", "ocr.py")
"""The model modules that decide which words are read on an image (cropping, enlarging, Tesseract's options)."""


def image_words(inputs: ProductInputs, workers: int, cache_folder: str | Path | None = None) -> list[str]:
    """Words read on the image of each product without text ("" for the others, for an image without words
    and everywhere when Tesseract is missing). With `cache_folder`, words already read there by the same
    Tesseract and code are reused and new ones added (`ocr-<signature>.json`)."""
    import json

    import shopclip.model as model_package
    from shopclip.atomic import write_json_atomically
    from shopclip.model.ocr import read_words, tesseract_version
    from shopclip.model.preprocess import prepare_image

    rows = torch.nonzero(inputs.has_image & ~inputs.has_text).squeeze(1).tolist()
    version = tesseract_version()
    if version is None:
        return [""] * len(inputs)
    folder = Path(model_package.__file__).parent
    path = None if cache_folder is None else Path(cache_folder) / (
        f"ocr-{_digest({'tesseract': version}, [folder / name for name in OCR_CODE])}.json")
    known = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    missing = [row for row in rows if str(inputs.productids[row]) not in known]

    def prepared(row: int):  # noqa: ANN202 - a PIL image or None
        return inputs.decoded_image(row, prepare_image, "not read for words")

    read = read_words(missing, workers, prepared, progress="reading words on images")
    known.update({str(inputs.productids[row]): words for row, words in zip(missing, read)})
    if path is not None and missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, known, indent=None)
    words = [""] * len(inputs)
    for row in rows:
        words[row] = known[str(inputs.productids[row])]
    return words


class TowerCache:
    """Outputs of the model's frozen towers for every product (`ShopClipModel.tower_features`)."""

    def __init__(self, text: dict[str, torch.Tensor], image: dict[str, torch.Tensor],
                 image_ok: torch.Tensor) -> None:
        self.text, self.image, self.image_ok = text, image, image_ok

    @classmethod
    @torch.no_grad()
    def build(cls, model, inputs: ProductInputs, device: torch.device, text_batch: int,
              image_batch: int, store: FeatureStore | None = None) -> "TowerCache":
        """Tower outputs of every product; those found in `store` are read, the others computed (and saved)."""
        model.eval()
        text_keys = model.pretrained_text_towers()
        image_keys = [IMAGE_FEATURES] if model.image_tower.pretrained else []  # a trainable trunk runs live
        stored = {key: store.load(key) if store else {} for key in text_keys + image_keys}
        text_rows = _missing(torch.nonzero(inputs.has_text).squeeze(1), inputs, stored, text_keys)
        image_rows = _missing(torch.nonzero(inputs.has_image).squeeze(1), inputs, stored, image_keys)
        computed: dict[str, dict[int, np.ndarray]] = {key: {} for key in stored}
        for chunk in tqdm(_chunks(text_rows, text_batch), desc="caching text towers", unit="batch", leave=False):
            tokens = _to(model.tokenize([inputs.texts[i] for i in chunk]), device)
            _collect(computed, model.tower_features(tokens=tokens), inputs.productids[chunk.numpy()])
        failed: set[int] = set()
        for chunk in tqdm(_chunks(image_rows, image_batch), desc="caching image tower", unit="batch", leave=False):
            pixels, ok = inputs.load_pixels(model, chunk, train=False)
            failed |= set(inputs.productids[chunk[~ok].numpy()].tolist())
            if pixels is not None:
                _collect(computed, model.tower_features(pixels=pixels.to(device)),
                         inputs.productids[chunk[ok].numpy()])
        if store is not None:
            for key, values in computed.items():
                if values:
                    store.save(key, {**stored[key], **values})
        return cls._assemble(inputs, {key: {**stored[key], **computed[key]} for key in stored}, text_keys,
                             image_keys, failed, device)

    @classmethod
    def _assemble(cls, inputs: ProductInputs, features: dict[str, dict[int, np.ndarray]], text_keys: list[str],
                  image_keys: list[str], failed: set[int], device: torch.device) -> "TowerCache":
        """Full-length tensors (zeros for products without that modality) from per-product features."""
        def tensor(key: str, mask: torch.Tensor) -> torch.Tensor:
            values = features[key]
            dim = len(next(iter(values.values())))
            out = torch.zeros((len(inputs), dim))
            for row in torch.nonzero(mask).squeeze(1).tolist():
                vector = values.get(int(inputs.productids[row]))
                if vector is not None:
                    out[row] = torch.from_numpy(np.asarray(vector, dtype=np.float32))
            return out.to(device)

        image_ok = inputs.has_image & torch.tensor([int(pid) not in failed for pid in inputs.productids],
                                                   dtype=torch.bool)
        text = {key: tensor(key, inputs.has_text) for key in text_keys if features[key]}
        image = {key: tensor(key, image_ok) for key in image_keys if features[key]}
        return cls(text, image, image_ok)

    def features(self, rows: torch.Tensor) -> dict[str, np.ndarray]:
        """Every cached tower output of `rows`, as numpy, by feature key (what the views read)."""
        return {key: value[rows.to(value.device)].float().cpu().numpy()
                for key, value in {**self.text, **self.image}.items()}

    @property
    def has_images(self) -> bool:
        """False when the image trunk is trainable: images are then decoded for every batch."""
        return bool(self.image)

    def text_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor] | None:
        return {key: value[rows] for key, value in self.text.items()} or None

    def image_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The image trunk's cached output for `rows` (the one tensor `encode_image(precomputed=)` takes)."""
        (value,) = self.image.values()
        return value[rows]


def _chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`rows` in chunks of `size`; none for no rows (torch.split would give one empty chunk)."""
    return list(rows.split(size)) if len(rows) else []


def _missing(rows: torch.Tensor, inputs: ProductInputs, stored: dict[str, dict[int, np.ndarray]],
             keys: list[str]) -> torch.Tensor:
    """The rows whose product lacks a stored output of one of `keys` (all of them without a store)."""
    if not keys:
        return rows[:0]
    keep = [row for row in rows.tolist() if any(int(inputs.productids[row]) not in stored[key] for key in keys)]
    return torch.tensor(keep, dtype=torch.long)


def _collect(out: dict[str, dict[int, np.ndarray]], features: dict[str, torch.Tensor], productids: np.ndarray
             ) -> None:
    for key, value in features.items():
        array = value.float().cpu().numpy()
        out[key].update(zip(productids.tolist(), array))


def needs_pixels(cache: TowerCache | None) -> bool:
    """Whether batches must carry decoded images (no cache, or a cache without the image trunk)."""
    return cache is None or not cache.has_images


def _to(tokens: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in tokens.items()}


def encode_rows(model, inputs: ProductInputs, batch: Batch, device: torch.device,
                cache: TowerCache | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """(text_emb, image_emb, fused, has_text, has_image) for a batch, all on `device`.

    A modality a product lacks is a zero row in its embedding and False in its mask; `fused` is the
    model's fusion of what each product has. Gradients flow when called outside `no_grad`.
    """
    rows = batch.rows
    has_text_mask = inputs.has_text[rows]
    has_image_mask = batch.image_ok if needs_pixels(cache) else cache.image_ok[rows]
    text_emb = _encode_text(model, inputs, rows[has_text_mask], device, cache)
    image_emb = _encode_image(model, batch, rows[has_image_mask], device, cache)
    n, dim = len(rows), model.config.embed_dim
    text_full = _place(text_emb, has_text_mask, n, dim, device)
    image_full = _place(image_emb, has_image_mask, n, dim, device)
    has_text_dev, has_image_dev = has_text_mask.to(device), has_image_mask.to(device)
    fused = model.fuse(text_full, image_full, has_text_dev, has_image_dev)
    return text_full, image_full, fused, has_text_dev, has_image_dev


def _encode_text(model, inputs: ProductInputs, rows: torch.Tensor, device: torch.device,
                 cache: TowerCache | None) -> torch.Tensor | None:
    if len(rows) == 0:
        return None
    tokens = _to(model.tokenize([inputs.texts[i] for i in rows.tolist()]), device)
    precomputed = cache.text_rows(rows.to(_cache_device(cache.text))) if cache is not None else None
    return model.encode_text(tokens, precomputed=precomputed)


def _encode_image(model, batch: Batch, rows: torch.Tensor, device: torch.device,
                  cache: TowerCache | None) -> torch.Tensor | None:
    if len(rows) == 0:
        return None
    if not needs_pixels(cache):
        return model.encode_image(None, precomputed=cache.image_rows(rows.to(_cache_device(cache.image))))
    return model.encode_image(batch.pixels.to(device))


def _cache_device(store: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(store.values())).device if store else torch.device("cpu")


def _place(values: torch.Tensor | None, mask: torch.Tensor, n: int, dim: int, device: torch.device) -> torch.Tensor:
    """Rows of `values` at the True positions of `mask` in an (n, dim) tensor of zeros (autograd-safe)."""
    if values is None:
        return torch.zeros((n, dim), device=device)
    full = torch.zeros((n, dim), device=device, dtype=values.dtype)
    return full.index_copy(0, torch.nonzero(mask).squeeze(1).to(device), values)


@dataclass
class Embeddings:
    """Numpy embeddings and head probabilities of a set of products (evaluation, k-NN)."""

    text: np.ndarray
    image: np.ndarray
    fused: np.ndarray
    has_text: np.ndarray
    has_image: np.ndarray
    probs_text: np.ndarray
    probs_image: np.ndarray
    probs_fused: np.ndarray


@torch.no_grad()
def embed(model, inputs: ProductInputs, rows: torch.Tensor, device: torch.device, cache: TowerCache | None,
          batch_size: int, desc: str = "embedding") -> Embeddings:
    """Embeddings and per-modality head probabilities of `rows`, in eval mode.

    A product lacking a modality gets that modality's head probabilities from a zero embedding
    (the head's bias alone: its prior), so every table row scores the same products.
    """
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    loader_dataset = ImageBatches(inputs, model, train=False)
    for chunk in tqdm(rows.split(batch_size), desc=desc, unit="batch", leave=False):
        batch = loader_dataset.collate(chunk.tolist()) if needs_pixels(cache) else Batch(rows=chunk)
        text, image, fused, has_t, has_i = encode_rows(model, inputs, batch, device, cache)
        outputs = {"text": text, "image": image, "fused": fused, "has_text": has_t, "has_image": has_i,
                   "probs_text": _softmax(model.classify(text)), "probs_image": _softmax(model.classify(image)),
                   "probs_fused": _softmax(model.classify(fused))}
        for key, value in outputs.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy() if value.dtype != torch.bool
                                             else value.cpu().numpy())
    return Embeddings(**{key: np.concatenate(values) for key, values in parts.items()})


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def live_tower_features(model, inputs: ProductInputs, rows: torch.Tensor, device: torch.device,
                        batch_size: int) -> dict[str, np.ndarray]:
    """Pretrained towers' outputs of `rows` computed now (towers being fine-tuned have no cache), by key;
    rows without the modality hold zeros."""
    model.eval()
    out: dict[str, np.ndarray] = {}

    def put(key: str, positions: list[int], values: torch.Tensor) -> None:
        if key not in out:
            out[key] = np.zeros((len(rows), values.shape[1]), dtype=np.float32)
        out[key][positions] = values.float().cpu().numpy()

    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        positions = list(range(start, start + len(chunk)))
        text_pos = [p for p, row in zip(positions, chunk.tolist()) if inputs.has_text[row]]
        if text_pos:
            tokens = _to(model.tokenize([inputs.texts[int(rows[p])] for p in text_pos]), device)
            for key, value in model.tower_features(tokens=tokens).items():
                put(key, text_pos, value)
        pixels, ok = inputs.load_pixels(model, chunk, train=False)
        if pixels is not None and model.image_tower.pretrained:
            image_pos = [p for p, good in zip(positions, ok.tolist()) if good]
            for key, value in model.tower_features(pixels=pixels.to(device)).items():
                put(key, image_pos, value)
    return out

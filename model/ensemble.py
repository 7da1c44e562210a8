"""What Classify computes from a product: several views, each a linear model, combined by fitted weights.

On a few thousand labelled products no single view wins everywhere: TF-IDF + a linear SVM reads the exact
words and character n-grams of a title, frozen multilingual sentence encoders (USE, e5) know what unseen
words mean, the image knows products without text, and labelled neighbours in the index vote for codes
the linear models cannot separate. Each view is kept for what it does best:

- `SparseTextView` ("tfidf"): TF-IDF of word 1-2 grams and char_wb 2-5 grams of the product text (the same
  analysers as scikit-learn's, re-implemented here so serving needs no scikit-learn), linear SVM scores.
- `SparseTextView` ("ocr"): the same kind of model over the words read on the image of a product without text
  (`shopclip.model.ocr`), fitted on product texts and on the words read on the training images; it reads
  book covers, game boxes and packaging that the image trunks see only as pictures.
- `DenseView` ("use", "e5", "image"): a softmax linear head (logistic regression) over one pretrained
  tower's L2-normalised output, read from the same forward pass that makes the product's vector.
- "clip": the two-tower model's own head on the fused vector (log-probabilities).
- `NeighbourView` ("image_knn"): the vote of the nearest labelled training products in one tower's output,
  kept in the bundle in a whitened low-dimensional projection (log of the smoothed vote). On image trunk
  features it separates codes the linear head cannot, for products the index vote barely helps (image only).
- "knn": the vote of the labelled neighbours found in the published index (log of the smoothed vote).

`ViewCombiner` adds the views a product has, each scaled by a non-negative weight of the product's group
("text": the product has text, with or without an image; "image_only"), and takes the softmax. The weights
are fitted on validation products by minimising log-loss (`shopclip.training.ensemble`), so the scale of
each view is learned with its weight and the combined probabilities are calibrated by construction: the
server's abstain threshold keeps meaning what it says. A second set of weights without the k-NN view
serves when no index is loaded.

Pure numpy: the server and evaluation call exactly this code; fitting lives in training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.model.knn import exact_search, knn_votes

CLIP_VIEW = "clip"
KNN_VIEW = "knn"
OCR_VIEW = OCR_MODALITY = "ocr"
"""The sparse view over the words read on a product's image, and the modality it reads."""
TEXT_GROUP, IMAGE_ONLY_GROUP = "text", "image_only"
GROUPS = (TEXT_GROUP, IMAGE_ONLY_GROUP)
ARRAYS_FILE = "classifier.safetensors"
VOCABULARY_FILE = "classifier_vocabulary.json"
CLASSIFIER_FILES = (ARRAYS_FILE, VOCABULARY_FILE)
"""Every file `EnsembleClassifier.save` writes into a bundle."""
KNN_SMOOTHING = 0.01
"""Share of the uniform vote mixed into the k-NN vote before its log: a code no neighbour voted for is
unlikely, not impossible (log 0 would veto every other view)."""
MISSING_CLASS_BIAS = -30.0
"""Bias of a class a view never saw in training (e.g. a code with images only, for a text view)."""

_WORD_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
_WHITESPACE_RUN_RE = re.compile(r"\s\s+")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_scores(votes: np.ndarray) -> np.ndarray:
    """The k-NN view's scores: log of the vote, smoothed towards uniform by KNN_SMOOTHING."""
    classes = votes.shape[1]
    return np.log((1.0 - KNN_SMOOTHING) * votes.astype(np.float64) + KNN_SMOOTHING / classes)


# -- analysers (scikit-learn's, so a vocabulary fitted there means the same here) ----------------------------

def word_ngrams(text: str, ngram_range: tuple[int, int] = (1, 2)) -> list[str]:
    """scikit-learn's `analyzer="word"` with its defaults: lowercase, tokens of 2+ word characters, n-grams."""
    tokens = _WORD_TOKEN_RE.findall(text.lower())
    low, high = ngram_range
    grams = list(tokens) if low == 1 else []
    for n in range(max(2, low), high + 1):
        grams += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return grams


@lru_cache(maxsize=200_000)
def _word_char_ngrams(word: str, low: int, high: int) -> tuple[str, ...]:
    padded = f" {word} "
    grams: list[str] = []
    for n in range(low, high + 1):
        grams += [padded[i:i + n] for i in range(max(1, len(padded) - n + 1))]
        if len(padded) <= n:  # a word no longer than n counts once, as in scikit-learn
            break
    return tuple(grams)


def char_wb_ngrams(text: str, ngram_range: tuple[int, int] = (2, 5)) -> list[str]:
    """scikit-learn's `analyzer="char_wb"`: lowercase, character n-grams inside space-padded words.
    Per-word results are cached: catalogue vocabulary repeats, and this runs on the serving thread."""
    low, high = ngram_range
    grams: list[str] = []
    for word in _WHITESPACE_RUN_RE.sub(" ", text.lower()).split():
        grams += _word_char_ngrams(word, low, high)
    return grams


ANALYSERS = {"word": word_ngrams, "char_wb": char_wb_ngrams}


@dataclass
class TfidfPart:
    """One TF-IDF vectoriser (sublinear tf, idf, L2 norm) over a fixed vocabulary."""

    analyser: str
    ngram_range: tuple[int, int]
    vocabulary: dict[str, int]
    idf: np.ndarray
    _word_ids: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    """char_wb only: a word's known n-gram ids. A word's char n-grams depend on the word alone and catalogue
    words repeat, so each is looked up once (this runs on the serving thread, under the GIL)."""

    def transform(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(feature ids, values) of one text: (1 + log tf) * idf, L2-normalised; unknown n-grams dropped."""
        ids, counts = np.unique(self._known_ids(text), return_counts=True)
        if not len(ids):
            return ids, np.zeros(0)
        values = (1.0 + np.log(counts)) * self.idf[ids]
        return ids, values / np.linalg.norm(values)

    def _known_ids(self, text: str) -> np.ndarray:
        """Vocabulary id of every n-gram of `text` the vocabulary knows, repeats kept."""
        if self.analyser != "char_wb":
            return _ids_in(self.vocabulary, ANALYSERS[self.analyser](text, self.ngram_range))
        words = _WHITESPACE_RUN_RE.sub(" ", text.lower()).split()  # as char_wb_ngrams splits
        if not words:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self._char_ids_of_word(word) for word in words])

    def _char_ids_of_word(self, word: str) -> np.ndarray:
        ids = self._word_ids.get(word)
        if ids is None:
            if len(self._word_ids) >= _WORD_CACHE_SIZE:
                self._word_ids.clear()
            low, high = self.ngram_range
            ids = self._word_ids[word] = _ids_in(self.vocabulary, _word_char_ngrams(word, low, high))
        return ids


_WORD_CACHE_SIZE = 1 << 17


def _ids_in(vocabulary: Mapping[str, int], grams: Sequence[str]) -> np.ndarray:
    known = [index for index in map(vocabulary.get, grams) if index is not None]
    return np.array(known, dtype=np.int64)


@dataclass
class SparseTextView:
    """TF-IDF word and char_wb n-grams of the product text -> linear (SVM) scores per class."""

    name: str
    parts: list[TfidfPart]
    weight: np.ndarray
    """(sum of the parts' vocabulary sizes, classes): the parts' features are concatenated."""
    bias: np.ndarray
    modality: str = "text"

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        out = np.tile(self.bias.astype(np.float64), (len(texts), 1))
        for row, text in enumerate(texts):
            offset = 0
            for part in self.parts:
                ids, values = part.transform(text)
                if len(ids):
                    out[row] += values @ self.weight[ids + offset]
                offset += len(part.vocabulary)
        return out


@dataclass
class DenseView:
    """A softmax linear head over one tower's L2-normalised output -> log-probabilities."""

    name: str
    source: str
    """Key of the features it reads: a text tower's name or "image" (the image trunk)."""
    modality: str
    weight: np.ndarray
    """(feature dim, classes)."""
    bias: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.bias)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return log_softmax(l2_normalise(features.astype(np.float64)) @ self.weight + self.bias)


@dataclass
class NeighbourView:
    """Labelled products' outputs of one tower as a memory -> log of their k-NN vote (`knn_scores`).

    Features are L2-normalised, centred, projected on their principal directions scaled by the inverse
    singular values (whitening: every direction counts alike, so a few dominant ones do not decide the
    neighbours) and L2-normalised again; similarity is the cosine there."""

    name: str
    source: str
    modality: str
    mean: np.ndarray
    """(feature dim,) mean of the normalised training features."""
    projection: np.ndarray
    """(feature dim, reduced dim) whitening projection."""
    keys: np.ndarray
    """(products, reduced dim) float32, the projected training products."""
    labels: np.ndarray
    """(products,) class index of each key."""
    num_classes: int
    k: int
    temperature: float

    def project(self, features: np.ndarray) -> np.ndarray:
        centred = l2_normalise(features.astype(np.float64)) - self.mean
        return l2_normalise(centred @ self.projection).astype(np.float32)

    def scores(self, features: np.ndarray) -> np.ndarray:
        similarities, rows = exact_search(self.project(features), self.keys, self.k)
        votes = knn_votes(self.labels[rows], similarities, range(self.num_classes), self.temperature)
        return knn_scores(votes)


FeatureView = DenseView | NeighbourView
"""A view that reads a tower's output (`ViewInputs.features[view.source]`)."""


@dataclass
class ViewInputs:
    """What the views read for a batch of products."""

    texts: list[str]
    """Product text (`product_text`) per product, "" without text."""
    has_text: np.ndarray
    has_image: np.ndarray
    features: dict[str, np.ndarray]
    """Tower outputs by source name, (n, dim), rows of products lacking that modality are ignored."""
    clip_log_probs: np.ndarray | None = None
    """(n, classes) log-probabilities of the two-tower model's head on the fused vector."""
    ocr_texts: list[str] | None = None
    """Words read on each product's image (`shopclip.model.ocr`), "" where none were read; None: not read."""

    def take(self, rows: Sequence[int] | np.ndarray) -> "ViewInputs":
        rows = np.asarray(rows, dtype=np.int64)
        return ViewInputs([self.texts[i] for i in rows.tolist()], self.has_text[rows], self.has_image[rows],
                          {key: value[rows] for key, value in self.features.items()},
                          None if self.clip_log_probs is None else self.clip_log_probs[rows],
                          None if self.ocr_texts is None else [self.ocr_texts[i] for i in rows.tolist()])

    def sparse_texts(self, modality: str) -> tuple[list[str], np.ndarray]:
        """What a sparse view of `modality` reads and which products have it: the product text ("text") or
        the words read on the image ("ocr")."""
        if modality == OCR_MODALITY:
            texts = self.ocr_texts if self.ocr_texts is not None else [""] * len(self.texts)
            return texts, np.array([bool(text) for text in texts], dtype=bool)
        return self.texts, np.asarray(self.has_text, dtype=bool)


@dataclass
class ViewCombiner:
    """Weights per group over `view_names` (+ "knn" last in the `with_knn` set); see the module docstring."""

    view_names: list[str]
    with_knn: dict[str, list[float]]
    without_knn: dict[str, list[float]]

    def combine(self, scores: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], groups: np.ndarray,
                knn_votes: np.ndarray | None) -> np.ndarray:
        """Probabilities (n, classes): softmax of the weighted sum of the present views' scores."""
        names = list(self.view_names)
        table = self.without_knn
        if knn_votes is not None:
            names, table = names + [KNN_VIEW], self.with_knn
            scores = {**scores, KNN_VIEW: knn_scores(knn_votes)}
            present = {**present, KNN_VIEW: np.ones(len(groups), dtype=bool)}
        logits = np.zeros_like(next(iter(scores.values())), dtype=np.float64)
        for g, group in enumerate(GROUPS):
            rows = groups == g
            if not rows.any():
                continue
            for name, weight in zip(names, table[group]):
                if weight:
                    logits[rows] += weight * np.where(present[name][rows, None], scores[name][rows], 0.0)
        return softmax(logits).astype(np.float32)


def group_of(has_text: np.ndarray) -> np.ndarray:
    """Group index (into GROUPS) of each product: 0 with text, 1 image only."""
    return np.where(np.asarray(has_text, dtype=bool), 0, 1)


@dataclass
class EnsembleClassifier:
    """The views and their combiner: everything Classify needs beyond the two-tower model and the index."""

    sparse_views: list[SparseTextView]
    dense_views: list[FeatureView]
    combiner: ViewCombiner
    uses_clip_head: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    """How it was fitted (validation figures, sizes): JSON, stored in the bundle's config."""

    @property
    def reads_ocr(self) -> bool:
        """True when a view reads the words on product images: the embedder must then read them."""
        return any(view.modality == OCR_MODALITY for view in self.sparse_views)

    def view_scores(self, inputs: ViewInputs) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(scores, present) per view name, each (n, classes) / (n,)."""
        scores, present = {}, {}
        for view in self.sparse_views:
            texts, has = inputs.sparse_texts(view.modality)
            full = np.zeros((len(texts), len(view.bias)))
            if has.any():
                full[has] = view.scores([texts[i] for i in np.nonzero(has)[0]])
            scores[view.name], present[view.name] = full, has
        for view in self.dense_views:
            has = np.asarray(inputs.has_image if view.modality == "image" else inputs.has_text, dtype=bool)
            full = np.zeros((len(has), view.num_classes))
            if has.any():
                full[has] = view.scores(inputs.features[view.source][has])
            scores[view.name], present[view.name] = full, has
        if self.uses_clip_head:
            if inputs.clip_log_probs is None:
                raise ValueError("view inputs: the classifier uses the clip head but got no clip_log_probs")
            scores[CLIP_VIEW] = inputs.clip_log_probs.astype(np.float64)
            present[CLIP_VIEW] = np.asarray(inputs.has_text, dtype=bool) | np.asarray(inputs.has_image, dtype=bool)
        return scores, present

    def probabilities(self, inputs: ViewInputs, knn_votes: np.ndarray | None) -> np.ndarray:
        scores, present = self.view_scores(inputs)
        return self.combiner.combine(scores, present, group_of(inputs.has_text), knn_votes)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write ARRAYS_FILE and VOCABULARY_FILE into `folder`; returns the JSON for the bundle's config."""
        from safetensors.numpy import save_file

        from shopclip.atomic import replace_atomically, write_json_atomically

        folder = Path(folder)
        arrays: dict[str, np.ndarray] = {}
        vocabularies: dict[str, dict[str, int]] = {}
        views = []
        for view in self.sparse_views:
            arrays[f"{view.name}.weight"], arrays[f"{view.name}.bias"] = view.weight, view.bias
            parts = []
            for p, part in enumerate(view.parts):
                key = f"{view.name}.{p}"
                arrays[f"{key}.idf"] = part.idf
                vocabularies[key] = part.vocabulary
                parts.append({"analyser": part.analyser, "ngram_range": list(part.ngram_range)})
            views.append({"name": view.name, "kind": "sparse_text", "modality": view.modality, "parts": parts})
        for view in self.dense_views:
            entry = {"name": view.name, "kind": "dense", "source": view.source, "modality": view.modality}
            if isinstance(view, NeighbourView):
                arrays[f"{view.name}.mean"], arrays[f"{view.name}.projection"] = view.mean, view.projection
                # keys and labels keep their own dtypes: the memory grows with the catalogue
                arrays[f"{view.name}.keys"] = view.keys.astype(np.float16)
                arrays[f"{view.name}.labels"] = view.labels.astype(np.int32)
                entry.update(kind="neighbours", num_classes=view.num_classes, k=view.k,
                             temperature=view.temperature)
            else:
                arrays[f"{view.name}.weight"], arrays[f"{view.name}.bias"] = view.weight, view.bias
            views.append(entry)
        with replace_atomically(folder / ARRAYS_FILE) as temporary:
            save_file({k: np.ascontiguousarray(v if v.dtype in (np.float16, np.int32) else v.astype(np.float32))
                       for k, v in arrays.items()}, str(temporary))
        write_json_atomically(folder / VOCABULARY_FILE, vocabularies, indent=None)
        return {"views": views, "uses_clip_head": self.uses_clip_head,
                "combiner": {"view_names": self.combiner.view_names, "with_knn": self.combiner.with_knn,
                             "without_knn": self.combiner.without_knn},
                "metadata": self.metadata}

    @classmethod
    def load(cls, folder: str | Path, config: Mapping[str, Any]) -> "EnsembleClassifier":
        from safetensors.numpy import load_file

        folder = Path(folder)
        arrays = {k: v.astype(np.float64) if v.dtype == np.float32 else v
                  for k, v in load_file(str(folder / ARRAYS_FILE)).items()}
        vocabularies = json.loads((folder / VOCABULARY_FILE).read_text())
        sparse, dense = [], []
        for view in config["views"]:
            name = view["name"]
            if view["kind"] == "neighbours":
                dense.append(NeighbourView(name, view["source"], view["modality"], arrays[f"{name}.mean"],
                                           arrays[f"{name}.projection"], arrays[f"{name}.keys"].astype(np.float32),
                                           arrays[f"{name}.labels"].astype(np.int64), int(view["num_classes"]),
                                           int(view["k"]), float(view["temperature"])))
                continue
            weight, bias = arrays[f"{name}.weight"], arrays[f"{name}.bias"]
            if view["kind"] == "sparse_text":
                parts = [TfidfPart(part["analyser"], tuple(part["ngram_range"]), vocabularies[f"{name}.{p}"],
                                   arrays[f"{name}.{p}.idf"]) for p, part in enumerate(view["parts"])]
                sparse.append(SparseTextView(name, parts, weight, bias, view["modality"]))
            else:
                dense.append(DenseView(name, view["source"], view["modality"], weight, bias))
        combiner = ViewCombiner(**config["combiner"])
        return cls(sparse, dense, combiner, bool(config.get("uses_clip_head", True)), dict(config.get("metadata", {})))

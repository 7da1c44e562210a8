"""Hashed word + character n-gram tower: the sub-word statistics that make TF-IDF strong on titles.

Rakuten titles are full of model numbers, brand names, sizes and half-translated words ("PS4",
"1/10 RC", "Kinderwagen") that a sentence encoder smooths away; TF-IDF over word and char_wb n-grams
is the strongest single text baseline on this data. This tower keeps that signal in the network:
each text becomes the weighted sum of learned bucket vectors (an `nn.EmbeddingBag`, as in fastText)
over its hashed n-grams.

- n-grams: word 1-2 grams and character 2-5 grams inside word boundaries (like scikit-learn's
  `char_wb`: each word padded with one space on both sides), on lower-cased `\\w+` words.
- hashing: `zlib.crc32` of the kind-tagged n-gram, so ids are the same in every process, machine and
  Python version (Python's `hash()` is salted per process). Bucket 0 is reserved for padding.
- weights: sublinear term frequency `1 + log(count)` times the bucket's inverse document frequency, then
  L2-normalised within the word group and within the char group, so a long description does not drown
  the title's words in character n-grams: scikit-learn's `TfidfVectorizer(sublinear_tf=True)` per group.
  The IDF is a buffer fitted on the training texts (`fit_idf`) and saved with the weights; it starts at
  ones (plain tf), which is also what a bundle written before IDF existed loads with.

With the default initialisation (N(0, 1/dim)) the untrained tower is a random projection of that
weighted n-gram vector: texts sharing n-grams are already close, and training only has to sharpen it.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

_WORD_RE = re.compile(r"\w+")
PADDING_ID = 0
DEFAULT_MAX_CHARS = 2000
"""n-grams are taken from at most this many leading characters: bounds the padded batch for texts
that did not go through `product_text` (which caps at 1000)."""


def iter_word_ngrams(words: Sequence[str], orders: tuple[int, int]) -> Iterable[str]:
    low, high = orders
    for n in range(low, high + 1):
        for start in range(len(words) - n + 1):
            yield " ".join(words[start:start + n])


def iter_char_ngrams(words: Sequence[str], orders: tuple[int, int]) -> Iterable[str]:
    """scikit-learn `char_wb`: n-grams of " word ", a word shorter than n counted once whole."""
    low, high = orders
    for word in words:
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) <= n:
                yield padded
                break
            for start in range(len(padded) - n + 1):
                yield padded[start:start + n]


class NgramTower(nn.Module):
    """Text tower over hashed n-grams: `tokenize(texts)` then `forward(batch)` -> (n, dim)."""

    name = "ngram"
    pretrained = False

    def __init__(self, buckets: int = 2**18, dim: int = 128, word_ngrams: tuple[int, int] = (1, 2),
                 char_ngrams: tuple[int, int] = (2, 5), max_chars: int = DEFAULT_MAX_CHARS) -> None:
        super().__init__()
        if buckets < 2 or dim < 1:
            raise ValueError(f"ngram tower needs buckets >= 2 and dim >= 1, got buckets={buckets}, dim={dim}")
        for label, (low, high) in (("word_ngrams", word_ngrams), ("char_ngrams", char_ngrams)):
            if not 1 <= low <= high:
                raise ValueError(f"{label} must be (min, max) with 1 <= min <= max, got {(low, high)}")
        self.buckets, self.output_dim = buckets, dim
        self.word_orders, self.char_orders = tuple(word_ngrams), tuple(char_ngrams)
        self.max_chars = max_chars
        self.bag = nn.EmbeddingBag(buckets, dim, mode="sum", padding_idx=PADDING_ID)
        nn.init.normal_(self.bag.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.bag.weight[PADDING_ID].zero_()
        self.register_buffer("idf", torch.ones(buckets))
        # A word's char n-grams depend on the word alone, and catalogue words repeat: hashing each word once
        # halves tokenising, which runs under the GIL in the server's forward thread.
        self._word_char_ids = functools.lru_cache(maxsize=1 << 16)(self._char_ids_of_word)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "idf", torch.ones(self.buckets))  # bundles from before IDF: plain tf
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_idf(self, texts: Sequence[str]) -> None:
        """Smoothed IDF over `texts` (scikit-learn's: ln((1 + n) / (1 + df)) + 1); unseen buckets get the
        largest value, as an n-gram never seen in training would."""
        document_frequency = np.zeros(self.buckets, dtype=np.float64)
        for text in texts:
            document_frequency[self._distinct_buckets(text)] += 1
        idf = torch.from_numpy(np.log((1.0 + len(texts)) / (1.0 + document_frequency)) + 1.0)
        self.idf.copy_(idf.to(self.idf.dtype))

    def bucket(self, kind: str, gram: str) -> int:
        """Stable bucket of one n-gram; `kind` keeps the word "ab" and the char n-gram "ab" apart."""
        return 1 + zlib.crc32(f"{kind}:{gram}".encode()) % (self.buckets - 1)

    def _char_ids_of_word(self, word: str) -> np.ndarray:
        """Bucket of every char n-gram of one word, repeats kept (counted later with the rest of the text)."""
        return np.fromiter((self.bucket("c", gram) for gram in iter_char_ngrams([word], self.char_orders)),
                           dtype=np.int64)

    def _group_ids(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Bucket of every word n-gram and of every char n-gram of one text, repeats kept."""
        words = _WORD_RE.findall(text[:self.max_chars].lower())
        word_ids = np.fromiter((self.bucket("w", gram) for gram in iter_word_ngrams(words, self.word_orders)),
                               dtype=np.int64)
        char_ids = np.concatenate([self._word_char_ids(word) for word in words]) if words else word_ids[:0]
        return word_ids, char_ids

    def _distinct_buckets(self, text: str) -> np.ndarray:
        """The distinct buckets of one text."""
        return np.unique(np.concatenate(self._group_ids(text)))

    def weighted_arrays(self, text: str, idf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distinct buckets, their weights) for one text: sublinear tf x idf, each group L2-normalised, a bucket
        shared by the two groups (a hash collision) summed. Vectorised: it runs under the GIL when serving."""
        idf = self.idf.detach().cpu().numpy() if idf is None else idf
        buckets, weights = [], []
        for ids in self._group_ids(text):
            if len(ids):
                distinct, counts = np.unique(ids, return_counts=True)
                group = (1.0 + np.log(counts)) * idf[distinct].astype(np.float64)
                buckets.append(distinct)
                weights.append(group / (np.sqrt((group * group).sum()) or 1.0))
        if not buckets:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        distinct, where = np.unique(np.concatenate(buckets), return_inverse=True)
        return distinct, np.bincount(where, weights=np.concatenate(weights), minlength=len(distinct))

    def weighted_ids(self, text: str, idf: np.ndarray | None = None) -> dict[int, float]:
        """Bucket -> weight for one text (see `weighted_arrays`)."""
        buckets, weights = self.weighted_arrays(text, idf)
        return dict(zip(buckets.tolist(), weights.tolist()))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`ids` (n, L) bucket ids right-padded with 0, and their `weights` (0 on padding)."""
        idf = self.idf.detach().cpu().numpy()
        per_text = [self.weighted_arrays(text, idf) for text in texts]
        width = max((len(buckets) for buckets, _ in per_text), default=1) or 1
        ids = np.zeros((len(texts), width), dtype=np.int64)
        weights = np.zeros((len(texts), width), dtype=np.float32)
        for row, (buckets, values) in enumerate(per_text):
            ids[row, :len(buckets)] = buckets
            weights[row, :len(buckets)] = values
        return {"ids": torch.from_numpy(ids), "weights": torch.from_numpy(weights)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Packs the padded batch into one flat bag list, so padding costs nothing."""
        ids, weights = batch["ids"], batch["weights"]
        real = ids != PADDING_ID
        counts = real.sum(dim=1)
        offsets = counts.cumsum(0) - counts
        return self.bag(ids[real], offsets, per_sample_weights=weights[real].to(self.bag.weight.dtype))

    def extra_repr(self) -> str:
        return f"buckets={self.buckets}, dim={self.output_dim}, word={self.word_orders}, char={self.char_orders}"

"""k-NN voting over labelled neighbours, its combination with the linear head, and exact neighbour search.

Shared by evaluation (which tunes `KnnParams` on validation) and the server (which applies the
bundle's tuned params), so both classify with exactly the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class KnnParams:
    k: int = 10
    """Neighbours that vote."""
    weight: float = 0.5
    """Share of the k-NN vote in the final probabilities: p = (1 - weight) * head + weight * knn."""
    temperature: float = 0.05
    """Softmax temperature over neighbour similarities: lower trusts the closest neighbours more."""
    sharpness: float = 1.0
    """Calibration of the combined probabilities: p ** sharpness, renormalised (temperature scaling, fitted on
    validation log-loss). It never changes the ranking; it makes a probability mean what it says, so the
    server's abstain threshold routes the products it should (head + k-NN is underconfident without it)."""
    head_sharpness: float = 1.0
    """The same for the head alone, which is what a server without an index answers with."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "KnnParams":
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})


def knn_votes(neighbor_codes: np.ndarray, neighbor_scores: np.ndarray, codes: Sequence[int], temperature: float,
              labelled: np.ndarray | None = None) -> np.ndarray:
    """Probabilities over `codes` for each query, (n, len(codes)), from its (n, k) neighbour codes and scores.

    Each neighbour votes with weight softmax(score / temperature) over its query's voters; a query with no
    voter gets the uniform vote. A neighbour votes when `labelled` (default: all) and its code is one of
    `codes`: unlabelled catalogue products, unknown codes and the padding of rows with fewer than k neighbours
    do not. One numpy pass: the server votes for a whole batch in less time than a python loop took for one.
    """
    neighbor_codes = np.asarray(neighbor_codes, dtype=np.int64)
    scores = np.asarray(neighbor_scores, dtype=np.float64).reshape(neighbor_codes.shape)
    order = np.argsort(np.asarray(codes, dtype=np.int64), kind="stable")
    sorted_codes = np.asarray(codes, dtype=np.int64)[order]
    position = np.clip(np.searchsorted(sorted_codes, neighbor_codes), 0, len(sorted_codes) - 1)
    votes = sorted_codes[position] == neighbor_codes
    if labelled is not None:
        votes &= np.asarray(labelled, dtype=bool).reshape(votes.shape)
    logits = np.where(votes, scores / temperature, -np.inf)
    top = logits.max(axis=1, keepdims=True, initial=-np.inf)
    weights = np.where(votes, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    probs = np.zeros((len(neighbor_codes), len(sorted_codes)), dtype=np.float64)
    rows = np.broadcast_to(np.arange(len(neighbor_codes))[:, None], votes.shape)
    np.add.at(probs, (rows[votes], order[position][votes]), weights[votes])
    total = probs.sum(axis=1, keepdims=True)
    probs = np.where(total > 0, probs / np.where(total > 0, total, 1.0), 1.0 / len(sorted_codes))
    return probs.astype(np.float32)


def combine(head_probs: np.ndarray, knn_probs: np.ndarray, weight: float) -> np.ndarray:
    """Convex combination of head and k-NN probabilities (rows stay normalised)."""
    return ((1.0 - weight) * head_probs + weight * knn_probs).astype(np.float32)


def calibrate(probs: np.ndarray, sharpness: float) -> np.ndarray:
    """Rows of `probs` raised to `sharpness` and renormalised (1.0 leaves them as they are)."""
    if sharpness == 1.0:
        return probs.astype(np.float32)
    logp = sharpness * np.log(np.clip(probs.astype(np.float64), 1e-12, None))
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


SHARPNESS_GRID = tuple(float(x) for x in np.round(np.geomspace(0.25, 16.0, 49), 4))


def fit_sharpness(probs: np.ndarray, labels: np.ndarray) -> float:
    """The `calibrate` exponent minimising log-loss of `labels` (class indices) on these (validation) rows."""
    def log_loss(sharpness: float) -> float:
        calibrated = calibrate(probs, sharpness)
        return float(-np.log(np.clip(calibrated[np.arange(len(labels)), labels], 1e-12, None)).mean())

    return min(SHARPNESS_GRID + (1.0,), key=log_loss) if len(labels) else 1.0


def final_probabilities(head_probs: np.ndarray, knn_probs: np.ndarray | None, params: KnnParams) -> np.ndarray:
    """What Classify answers: head + k-NN combined and calibrated, or the calibrated head without an index."""
    if knn_probs is None:
        return calibrate(head_probs, params.head_sharpness)
    return calibrate(combine(head_probs, knn_probs, params.weight), params.sharpness)


EXACT_CHUNK_ROWS = 65_536
"""Reference rows scored per matrix product in `exact_search`: bounds the scratch to queries x 64k floats."""


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (q, min(k, n)), best first: exhaustive inner product as one BLAS product per chunk.

    Serves flat indexes: for small query batches one BLAS product beats faiss.IndexFlatIP's path in the
    wheel (about 2.5x on one core when this was written). Ties keep the lower row first.
    """
    k = min(k, len(vectors))
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), EXACT_CHUNK_ROWS):
        scores = np.asarray(queries @ np.asarray(vectors[start:start + EXACT_CHUNK_ROWS]).T, dtype=np.float32)
        keep = min(k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_rows = np.concatenate([best_rows, top + start], axis=1)
    order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_rows, order, axis=1)

"""k-NN voting over labelled neighbours and its combination with the linear head.

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "KnnParams":
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})


def knn_vote(neighbor_codes: Sequence[int | None], neighbor_scores: Sequence[float], codes: Sequence[int],
             temperature: float) -> np.ndarray:
    """Probabilities over `codes` from one query's neighbours (unlabelled or unknown codes do not vote).

    Each neighbour votes with weight softmax(score / temperature); with no voter the result is uniform.
    """
    index_of = {code: i for i, code in enumerate(codes)}
    probs = np.zeros(len(codes), dtype=np.float64)
    voters = [(index_of[c], s) for c, s in zip(neighbor_codes, neighbor_scores) if c is not None and c in index_of]
    if not voters:
        probs[:] = 1.0 / len(codes)
        return probs.astype(np.float32)
    idx = np.array([i for i, _ in voters])
    scores = np.array([s for _, s in voters], dtype=np.float64) / temperature
    weights = np.exp(scores - scores.max())
    np.add.at(probs, idx, weights)
    return (probs / probs.sum()).astype(np.float32)


def combine(head_probs: np.ndarray, knn_probs: np.ndarray, weight: float) -> np.ndarray:
    """Convex combination of head and k-NN probabilities (rows stay normalised)."""
    return ((1.0 - weight) * head_probs + weight * knn_probs).astype(np.float32)

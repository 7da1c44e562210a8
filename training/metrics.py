"""Scores, calibration, and exact k-NN voting over reference vectors (the grids validation searches).

Pure numpy + scikit-learn: the same arithmetic scores every row of the evaluation table, and the
k-NN vote is `shopclip.model.knn.knn_votes`, the function the server applies, so tuned parameters
mean the same thing in both places.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shopclip.model.knn import exact_search
from shopclip.model.knn import knn_votes

K_GRID = (5, 10, 20, 40)
TEMPERATURE_GRID = (0.02, 0.05, 0.1, 0.2)


def scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Weighted F1 (the challenge metric), macro F1, accuracy and top-3 accuracy of class scores.

    `labels` are class indices (n,), `probs` any per-class scores (n, classes) where higher is better.
    Macro F1 averages over the classes present in `labels` or predicted, as scikit-learn does.
    """
    from sklearn.metrics import accuracy_score, f1_score

    predicted = probs.argmax(axis=1)
    top = min(3, probs.shape[1])
    top3 = np.argpartition(-probs, top - 1, axis=1)[:, :top]
    return {
        "weighted_f1": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "top3_accuracy": float((top3 == labels[:, None]).any(axis=1).mean()),
        "n": int(len(labels)),
    }


ABSTAIN_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """How far the top probability is from accuracy (expected calibration error over `bins` equal-width bins),
    and what abstaining below each threshold of ABSTAIN_THRESHOLDS does: the share of products answered and
    the accuracy on those. This is what `serve --abstain-threshold` trades."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = sum(abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
              for b in range(bins) if (which == b).any())
    abstain = {}
    for threshold in ABSTAIN_THRESHOLDS:
        answered = confidence >= threshold
        abstain[f"{threshold:.1f}"] = {"answered": float(answered.mean()),
                                       "accuracy_answered": float(correct[answered].mean()) if answered.any() else None}
    return {"ece": float(ece), "mean_confidence": float(confidence.mean()), "accuracy": float(correct.mean()),
            "abstain": abstain}


def nearest(queries: np.ndarray, references: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: (indices, similarities), each (n, k), best first (the server's flat search)."""
    scores, rows = exact_search(np.asarray(queries, dtype=np.float32), np.asarray(references, dtype=np.float32), k)
    return rows, scores


def knn_probabilities(neighbor_indices: np.ndarray, neighbor_scores: np.ndarray, reference_codes: np.ndarray,
                      codes: Sequence[int], k: int, temperature: float) -> np.ndarray:
    """(n, classes) k-NN vote of the first `k` neighbours of each query, via the server's `knn_votes`."""
    return knn_votes(reference_codes[neighbor_indices[:, :k]], neighbor_scores[:, :k], codes, temperature)

"""FAISS indexes over L2-normalised vectors (inner product = cosine) and their quality check.

* `flat`: exact inner product, the default below `approx_threshold` vectors.
* `ivf`: IVF over 8-bit scalar-quantised codes, re-ranked exactly (IndexRefineFlat) from the full vectors.
* `hnsw`: HNSW graph over 8-bit codes, re-ranked the same way.

Approximate indexes are checked against exact search on a sample of queries; the search effort (nprobe,
efSearch) is raised step by step until recall@k reaches the requested floor, and the build reports the
recall it measured so that publishing can refuse an index that never got there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from shopclip.indexer.options import INDEX_KINDS, AnnParams

log = logging.getLogger(__name__)

EFFORT_LADDER_STEPS = 6
"""How many times the search effort may double while chasing the recall floor."""


@dataclass(frozen=True)
class RecallReport:
    recall: float
    k: int
    queries: int
    effort: int
    """nprobe (ivf) or efSearch (hnsw) that reached `recall`; 0 for flat."""


def resolve_kind(count: int, params: AnnParams) -> str:
    if params.kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, not {params.kind!r}")
    if params.kind != "auto":
        return params.kind
    return "ivf" if count >= params.approx_threshold else "flat"


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def build_index(vectors: np.ndarray, kind: str, params: AnnParams):
    """A FAISS index over `vectors` (n, d) float32 rows; index ids are row positions."""
    import faiss

    count, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    if kind == "ivf":
        base = _trained_ivf(vectors, params)
    elif kind == "hnsw":
        base = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = params.ef_construction
        base.train(_training_sample(vectors, 65_536))
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index = faiss.IndexRefineFlat(base)  # adds go to the codes and to the exact store used for re-ranking
    index.k_factor = float(params.rerank_factor)
    index.add(vectors)
    set_search_effort(index, kind, params.nprobe if kind == "ivf" else params.ef_search)
    return index


def _training_sample(vectors: np.ndarray, limit: int) -> np.ndarray:
    if len(vectors) <= limit:
        return vectors
    rows = np.random.default_rng(0).choice(len(vectors), limit, replace=False)
    return vectors[np.sort(rows)]


def _trained_ivf(vectors: np.ndarray, params: AnnParams):
    """An empty IVF-SQ8 index trained (on GPU when present) on a sample of 64 points per list."""
    import faiss

    count, dim = vectors.shape
    nlist = params.nlist or max(1, int(math.sqrt(count)))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    sample = _training_sample(vectors, 64 * nlist)
    if params.use_gpu and gpu_count() > 0:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        gpu_index.train(sample)
        return faiss.index_gpu_to_cpu(gpu_index)
    index.train(sample)
    return index


def set_search_effort(index, kind: str, effort: int) -> None:
    """nprobe for ivf, efSearch for hnsw; nothing for flat."""
    import faiss

    if kind == "flat":
        return
    base = faiss.downcast_index(index.base_index)
    if kind == "ivf":
        faiss.extract_index_ivf(base).nprobe = int(effort)
    else:
        base.hnsw.efSearch = int(effort)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool = True) -> np.ndarray:
    """Ground truth ids (q, k) by exhaustive inner product."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if use_gpu and gpu_count() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index.search(queries, k)[1]


def sample_queries(vectors: np.ndarray, count: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Catalogue vectors nudged off themselves: realistic 'similar product' queries that are not exact hits."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(count, len(vectors)), replace=False)
    queries = vectors[rows] + noise * rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32) \
        / math.sqrt(vectors.shape[1])
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def knn_intersection(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k found (faiss contrib `knn_intersection_measure`, ignoring -1)."""
    k = truth.shape[1]
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def tune_recall(index, kind: str, queries: np.ndarray, truth: np.ndarray, min_recall: float,
                start_effort: int) -> RecallReport:
    """Measure recall@k against `truth`, doubling the search effort until it reaches `min_recall`.

    The index is left at the effort reported (the lowest that met the floor, else the highest tried)."""
    k = truth.shape[1]
    if kind == "flat":
        return RecallReport(knn_intersection(index.search(queries, k)[1], truth), k, len(queries), 0)
    effort = start_effort
    for step in range(EFFORT_LADDER_STEPS + 1):
        set_search_effort(index, kind, effort)
        recall = knn_intersection(index.search(queries, k)[1], truth)
        log.info("%s effort %d: recall@%d %.4f", kind, effort, k, recall)
        if recall >= min_recall or step == EFFORT_LADDER_STEPS:
            return RecallReport(recall, k, len(queries), effort)
        effort *= 2
    raise AssertionError("unreachable")

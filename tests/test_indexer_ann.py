"""Approximate indexes checked against exact search on seeded synthetic clustered vectors (cf. faiss
tests/test_contrib.py): quality never drops as search effort grows; the tuner reaches the floor it is given."""

from __future__ import annotations

import numpy as np
import pytest

from shopclip.indexer import ann
from shopclip.model import knn


def clustered(count: int, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(5000)
    queries = ann.sample_queries(vectors, 200, seed=1)
    return vectors, queries, ann.exact_neighbours(vectors, queries, 10)


def test_flat_is_exact(dataset) -> None:
    vectors, queries, truth = dataset
    index = ann.build_index(vectors, "flat", ann.AnnParams())
    assert ann.knn_intersection(index.search(queries, 10)[1], truth) == 1.0


@pytest.mark.parametrize("kind, efforts", [("ivf", [1, 2, 4, 8, 16]), ("hnsw", [4, 8, 16, 32, 64])])
def test_recall_never_drops_as_effort_grows(dataset, kind: str, efforts: list[int]) -> None:
    vectors, queries, truth = dataset
    index = ann.build_index(vectors, kind, ann.AnnParams(nlist=64, hnsw_m=8, ef_construction=16))
    recalls = []
    for effort in efforts:
        ann.set_search_effort(index, kind, effort)
        recalls.append(ann.knn_intersection(index.search(queries, 10)[1], truth))
    assert all(later >= earlier - 1e-9 for earlier, later in zip(recalls, recalls[1:])), recalls
    assert recalls[0] < 1.0  # the smallest effort really is approximate, so the test can fail
    assert recalls[-1] >= 0.95


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tuner_raises_effort_until_the_floor(dataset, kind: str) -> None:
    vectors, queries, truth = dataset
    index = ann.build_index(vectors, kind, ann.AnnParams(nlist=64, hnsw_m=8, ef_construction=16))
    report = ann.tune_recall(index, kind, queries, truth, min_recall=0.97, start_effort=1)
    assert report.recall >= 0.97 and report.effort > 1
    assert ann.knn_intersection(index.search(queries, 10)[1], truth) == pytest.approx(report.recall)


def test_auto_kind_switches_at_the_threshold() -> None:
    params = ann.AnnParams(approx_threshold=1000)
    assert ann.resolve_kind(999, params) == "flat"
    assert ann.resolve_kind(1000, params) == "ivf"
    with pytest.raises(ValueError):
        ann.resolve_kind(10, ann.AnnParams(kind="lsh"))


def test_knn_intersection_counts_overlap_and_ignores_missing() -> None:
    truth = np.array([[1, 2, 3, 4]])
    assert ann.knn_intersection(np.array([[4, 3, 9, -1]]), truth) == 0.5


def test_the_cli_help_states_the_auto_threshold_it_applies() -> None:
    """The CLI may not import numpy (client installs), so its help repeats the number: keep them equal."""
    import argparse

    from shopclip.indexer import cli

    parser = argparse.ArgumentParser()
    cli._add_build_options(parser)
    action = next(a for a in parser._actions if a.dest == "approx_threshold")
    assert str(ann.AnnParams.approx_threshold) in action.help
    assert cli._build_options(parser.parse_args([])).ann.approx_threshold == ann.AnnParams.approx_threshold


@pytest.mark.parametrize("chunk_rows", [7, 65_536])
def test_exact_search_matches_a_full_sort_across_chunks(monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    monkeypatch.setattr(knn, "EXACT_CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[31] = vectors[4]  # a tie: the lower row comes first
    queries = np.concatenate([vectors[4:5], rng.standard_normal((3, 8)).astype(np.float32)])
    scores, rows = knn.exact_search(queries, vectors, 6)
    full = queries @ vectors.T
    expected_rows = np.stack([np.lexsort((np.arange(50), -row))[:6] for row in full])
    assert np.array_equal(rows, expected_rows)
    assert np.allclose(scores, np.take_along_axis(full, expected_rows, axis=1))
    assert list(rows[0][:2]) == [4, 31]
    assert knn.exact_search(queries, vectors[:3], 6)[1].shape == (4, 3)  # k larger than the index

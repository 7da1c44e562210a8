"""Build: incremental embedding, bad images, published search vs exact search, read side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from shopclip.errors import InvalidInput, NotFound, NotReady
from shopclip.indexer.ann import AnnParams
from shopclip.indexer.build import BuildOptions, build_and_publish, needs_build
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import ingest_folder
from shopclip.indexer.published import current_version, open_current
from shopclip.model import load_embedder
from shopclip.products import ProductInput
from support.index import synthetic_drop


class CountingEmbedder:
    """Wraps the factory's fake and records what was embedded; rejects images that are not JPEG."""

    def __init__(self, spec: str = "fake:dim=32,classes=4") -> None:
        self.inner = load_embedder(spec)
        self.fingerprint, self.release = self.inner.fingerprint, self.inner.release
        self.dim, self.codes = self.inner.dim, self.inner.codes
        self.source = self.inner.source
        self.seen: list[ProductInput] = []

    def embed(self, products: Sequence[ProductInput]) -> np.ndarray:
        for i, product in enumerate(products):
            if product.image is not None and not product.image.startswith(b"\xff\xd8\xff"):
                raise InvalidInput(f"products[{i}].image", "not a decodable image")
        self.seen += products
        return self.inner.embed(products)

    def classify_vectors(self, vectors: np.ndarray) -> np.ndarray:
        return self.inner.classify_vectors(vectors)

    def describe(self) -> dict:
        return self.inner.describe()


SMALL = BuildOptions(embed_batch=8, commit_every=16)


def catalogue_with(tmp_path: Path, productids: range) -> Catalogue:
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(synthetic_drop(tmp_path / "drop", productids), catalogue)
    return catalogue


def test_build_embeds_only_changed_rows_a_new_classifier_reuses_every_vector_and_new_weights_re_embed_all(
        tmp_path: Path) -> None:
    catalogue = catalogue_with(tmp_path, range(1, 41))
    embedder = CountingEmbedder()
    first = build_and_publish(catalogue, tmp_path / "index", embedder, SMALL)
    assert first.embedded == 40 and len(embedder.seen) == 40
    assert not needs_build(tmp_path / "index", catalogue, embedder)

    ingest_folder(synthetic_drop(tmp_path / "drop2", [3, 41, 42], word="nouveau"), catalogue)
    embedder.seen.clear()
    second = build_and_publish(catalogue, tmp_path / "index", embedder, SMALL)
    assert second.embedded == 3
    assert sorted(p.designation.split()[-1] for p in embedder.seen) == ["3", "41", "42"]
    assert second.manifest["counts"]["vectors"] == 42

    retrained_classifier = CountingEmbedder("fake:dim=32,classes=4,release=b")
    assert needs_build(tmp_path / "index", catalogue, retrained_classifier)  # its manifest tells servers
    third = build_and_publish(catalogue, tmp_path / "index", retrained_classifier, SMALL)
    assert third.embedded == 0 and retrained_classifier.seen == []  # same weights: every vector is reused
    assert (third.manifest["model"]["fingerprint"], third.manifest["model"]["release"]) == (
        embedder.fingerprint, retrained_classifier.release)
    assert not needs_build(tmp_path / "index", catalogue, retrained_classifier)

    other_model = CountingEmbedder("fake:dim=16,classes=4")
    assert needs_build(tmp_path / "index", catalogue, other_model)
    fourth = build_and_publish(catalogue, tmp_path / "index", other_model, SMALL)
    assert fourth.embedded == 42 and open_current(tmp_path / "index").dim == 16


def test_corrupt_image_falls_back_to_text_and_is_recorded(tmp_path: Path) -> None:
    catalogue = catalogue_with(tmp_path, range(1, 10))
    image = tmp_path / "drop" / "images" / "image_5001_product_1.jpg"
    image.write_bytes(b"GIF89a-not-really")  # corrupted after ingest: the builder must cope
    build_and_publish(catalogue, tmp_path / "index", CountingEmbedder(), SMALL)
    row = catalogue.products([1]).to_pylist()[0]
    assert row["embedding"] is not None and "image" in row["embed_note"]
    index = open_current(tmp_path / "index")
    text_only = load_embedder("fake:dim=32,classes=4").embed([ProductInput(row["designation"], row["description"])])
    assert np.allclose(index.vector(1), text_only[0], atol=1e-6)


def test_read_side_search_matches_exact_search(tmp_path: Path) -> None:
    catalogue = catalogue_with(tmp_path, range(1, 61))
    build_and_publish(catalogue, tmp_path / "index", CountingEmbedder(), SMALL)
    index = open_current(tmp_path / "index")
    assert len(index) == 60 and index.version == current_version(tmp_path / "index")
    query = index.vector(7)
    all_vectors = np.stack([index.vector(pid) for pid in range(1, 61)])
    expected = np.argsort(-(all_vectors @ query), kind="stable")[:5] + 1
    hits = index.search(query[None, :], 5)[0]
    assert [hit.productid for hit in hits][0] == 7
    assert set(hit.productid for hit in hits) == set(expected.tolist())
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))

    code = index.product(7).prdtypecode
    same_code = index.search(query, 5, code=code, exclude=[7])[0]
    assert same_code and all(hit.prdtypecode == code and hit.productid != 7 for hit in same_code)
    assert all(a.score >= b.score for a, b in zip(same_code, same_code[1:]))
    assert index.search(query, 3, code=123456) == [[]]
    assert index.product(7).designation.endswith("modèle 7")
    with pytest.raises(NotFound):
        index.product(999)
    titles = index.titles([60, 999, 7, 0])
    assert titles[0] == (index.product(60).designation, index.product(60).imageid)
    assert titles[2][0].endswith("modèle 7") and titles[1] == titles[3] == ("", None)
    with pytest.raises(InvalidInput):
        index.search(np.zeros((1, 5), np.float32), 3)


def test_unlabelled_products_are_searchable_without_a_code(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(synthetic_drop(tmp_path / "drop", range(1, 9), labelled=False), catalogue)
    build_and_publish(catalogue, tmp_path / "index", CountingEmbedder(), SMALL)
    index = open_current(tmp_path / "index")
    assert index.manifest["counts"]["unlabelled"] == 8
    assert all(hit.prdtypecode is None for hit in index.search(index.vector(2), 4)[0])
    assert index.codes() == []


def test_nothing_published_is_not_ready(tmp_path: Path) -> None:
    assert current_version(tmp_path) is None
    with pytest.raises(NotReady):
        open_current(tmp_path)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_build_reports_recall_and_finds_what_exact_finds(tmp_path: Path, kind: str) -> None:
    catalogue = catalogue_with(tmp_path, range(1, 301))
    options = BuildOptions(ann=AnnParams(kind=kind, nlist=8, nprobe=1, ef_search=4), recall_queries=100)
    result = build_and_publish(catalogue, tmp_path / "index", CountingEmbedder(), options)
    assert result.manifest["index"]["kind"] == kind
    assert result.manifest["index"]["recall_at_k"] >= 0.95
    index = open_current(tmp_path / "index")
    exact = np.stack([index.vector(pid) for pid in range(1, 301)])
    queries = exact[:20]
    truth = np.argsort(-(queries @ exact.T), axis=1)[:, :10] + 1
    found = index.search(queries, 10)
    overlap = np.mean([len(set(t.tolist()) & {h.productid for h in hits}) / 10 for t, hits in zip(truth, found)])
    assert overlap >= 0.9


def test_embed_threads_bounds_the_forward_and_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls: list[int] = []
    catalogue = catalogue_with(tmp_path, range(1, 11))
    build_and_publish(catalogue, tmp_path / "index", CountingEmbedder(), dataclasses.replace(SMALL, embed_threads=1))
    assert calls == [1]
    with pytest.raises(InvalidInput) as error:
        BuildOptions(embed_threads=0)
    assert error.value.field == "embed_threads"

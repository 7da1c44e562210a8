"""Engine.forward answers a whole batch with array arithmetic; each answer must equal what one product alone
gets from the head, its own neighbours and the vote of `shopclip.model.knn`, recomputed here step by step.
The index is the real published one (`published_index`), with unlabelled products that are searchable but never
vote."""

from __future__ import annotations

import numpy as np
import pytest
from shopclip.model import load_embedder
from shopclip.model.knn import KnnParams, final_probabilities, knn_votes
from shopclip.products import ProductInput
from shopclip.server.engine import Engine, Job
from support.catalogue import CODES_IN_INDEX, FAKE_BUNDLE, unlabelled_rows
from support.index import PublishedCatalogue


def expected_answer(engine: Engine, product: ProductInput, top_k: int) -> tuple[list[tuple[int, float]], list[int]]:
    embedder, knn = engine.embedder, engine.knn
    vector = embedder.embed([product])
    head = embedder.classify_vectors(vector)[0]
    voters = [n for n in engine.index.search(vector, knn.k)[0] if n.prdtypecode in set(embedder.codes)]
    votes = knn_votes(np.array([[n.prdtypecode for n in voters]]), np.array([[n.score for n in voters]]),
                      embedder.codes, knn.temperature)[0]
    probs = final_probabilities(head, votes, knn)
    best = np.argsort(-probs, kind="stable")[:top_k]
    return [(embedder.codes[i], float(probs[i])) for i in best], [n.productid for n in voters]


def test_a_batched_forward_answers_each_product_as_if_it_were_alone(published_index: PublishedCatalogue) -> None:
    embedder = load_embedder(FAKE_BUNDLE)
    embedder.knn = KnnParams(k=6, weight=0.4, temperature=0.1, sharpness=1.7)
    engine = Engine(embedder, abstain_threshold=0.5, index_required=True)
    engine.swap_index(published_index.open_current())
    products = [ProductInput(f"famille{code} sorte{code} neuf") for code in CODES_IN_INDEX]
    products += [ProductInput(unlabelled_rows()[1].designation), ProductInput("rien de connu")]
    jobs = [Job(product, top_k) for product, top_k in zip(products, (1, 3, 5, 2, 4, 3))] + [Job(products[0])]

    nearest = engine.index.search(embedder.embed([products[4]]), embedder.knn.k)[0]
    assert any(n.prdtypecode is None for n in nearest)  # unlabelled products are found, so not voting is tested

    outcomes = engine.forward(jobs)

    assert outcomes[-1].classification is None  # an embed-only job of the same batch
    for job, outcome in zip(jobs[:-1], outcomes):
        predictions, voter_ids = expected_answer(engine, job.product, job.top_k)
        got = outcome.classification
        assert [code for code, _ in got.predictions] == [code for code, _ in predictions]
        assert [p for _, p in got.predictions] == pytest.approx([p for _, p in predictions], abs=1e-6)
        assert [n.productid for n in got.neighbors] == voter_ids
        assert got.neighbors and all(n.designation for n in got.neighbors)  # each voter's metadata, one lookup
        assert got.abstain == (predictions[0][1] < 0.5)

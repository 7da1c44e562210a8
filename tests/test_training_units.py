"""Fast unit tests of training's pure parts: split, class weights, schedule, metrics, k-NN, baseline."""

from __future__ import annotations

import math

from collections import Counter

import numpy as np
import pytest
import torch

from shopclip.catalogue_files import SourceRow
from shopclip.model.knn import KnnParams, calibrate, final_probabilities, fit_sharpness, knn_votes
from shopclip.training.baseline import TfidfSvcBaseline
from shopclip.training.data import SPLITS, fingerprint, split_products
from shopclip.training.ensemble import select_combiner
from shopclip.training.metrics import K_GRID, TEMPERATURE_GRID, calibration, knn_probabilities, nearest, scores
from shopclip.training.train import class_weights, warmup_cosine


def row(productid: int, code: int, designation: str = "", image_path: str | None = None) -> SourceRow:
    return SourceRow(productid=productid, imageid=None, designation=designation, description="",
                     prdtypecode=code, image_path=image_path, row_number=productid, source_file="t.csv")


def catalogue(class_sizes: dict[int, int]) -> list[SourceRow]:
    products, pid = [], 0
    for code, size in class_sizes.items():
        for _ in range(size):
            pid += 1
            products.append(row(pid, code, f"produit {code}"))
    return products


def test_split_is_disjoint_complete_reproducible_and_stratified() -> None:
    products = catalogue({code: 20 + code % 7 for code in range(1300)})  # 1300 classes: nothing assumes 27
    split = split_products(products, seed=3)
    ids = [pid for name in SPLITS for pid in split[name]]
    assert sorted(ids) == sorted(p.productid for p in products)
    assert len(set(ids)) == len(ids)
    assert split == split_products(products, seed=3)
    assert split != split_products(products, seed=4)
    code_of = {p.productid: p.prdtypecode for p in products}
    for name, share in (("val", 0.15), ("test", 0.15)):
        per_class = Counter(code_of[pid] for pid in split[name])
        assert set(per_class) == set(range(1300))  # every class is scored
        assert all(abs(per_class[c] - share * (20 + c % 7)) <= 1 for c in range(1300))


def test_split_keeps_rare_classes_in_training() -> None:
    split = split_products(catalogue({1: 1, 2: 2, 3: 3}), seed=0)
    code_of = {p.productid: p.prdtypecode for p in catalogue({1: 1, 2: 2, 3: 3})}
    assert Counter(code_of[p] for p in split["train"]) == {1: 1, 2: 2, 3: 1}
    assert Counter(code_of[p] for p in split["val"]) == {3: 1}


def test_fingerprint_changes_with_labels() -> None:
    products = catalogue({1: 3, 2: 3})
    relabelled = [row(p.productid, 9 if p.productid == 1 else p.prdtypecode, p.designation) for p in products]
    assert fingerprint(products) == fingerprint(list(reversed(products)))
    assert fingerprint(products) != fingerprint(relabelled)


def test_class_weights_favour_rare_classes_and_average_one() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = class_weights(labels, num_classes=3, power=1.0)
    assert weights[1] / weights[0] == pytest.approx(9.0)
    assert weights[:2].mean() == pytest.approx(1.0)
    assert torch.equal(class_weights(labels, 3, power=0.0), torch.ones(3))


def test_warmup_then_cosine_to_zero() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 9
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_scores_match_hand_computation() -> None:
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]])
    result = scores(labels, probs)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["top3_accuracy"] == pytest.approx(1.0)
    # class 0: P=1/2 R=1/2 F1=.5 ; class 1: P=1/2 R=1 F1=2/3 ; class 2: F1=0
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert result["weighted_f1"] == pytest.approx((2 * 0.5 + 2 / 3) / 4)
    assert result["n"] == 4


def test_nearest_is_exact_search() -> None:
    rng = np.random.default_rng(0)
    queries, references = rng.standard_normal((7, 5)), rng.standard_normal((50, 5))
    indices, sims = nearest(queries, references, k=4)
    brute = np.argsort(-(queries @ references.T), axis=1)[:, :4]
    assert np.array_equal(indices, brute)
    assert np.allclose(sims, np.take_along_axis(queries @ references.T, brute, axis=1))


def test_selection_trusts_neighbours_over_a_wrong_head() -> None:
    rng = np.random.default_rng(1)
    codes = [10, 20, 30]
    centres = np.eye(3)
    ref_labels = np.repeat(np.arange(3), 30)
    references = centres[ref_labels] + 0.05 * rng.standard_normal((90, 3))
    val_labels = np.tile(np.arange(3), 10)
    queries = centres[val_labels] + 0.05 * rng.standard_normal((30, 3))
    wrong_head = np.full((30, 3), 0.2)
    wrong_head[np.arange(30), (val_labels + 1) % 3] = 0.6  # confidently the next class
    indices, sims = nearest(queries, references, max(K_GRID))

    def vote(k: int, temperature: float) -> np.ndarray:
        return knn_probabilities(indices, sims, np.array(codes)[ref_labels], codes, k, temperature)

    has_text = np.ones(30, dtype=bool)
    selection = select_combiner({"clip": np.log(wrong_head)}, {"clip": has_text}, has_text, val_labels, ["clip"],
                                vote, K_GRID, TEMPERATURE_GRID)
    head_weight, knn_weight = selection.combiner.with_knn["text"]
    assert selection.figures["val_weighted_f1"] == pytest.approx(1.0)
    assert knn_weight > head_weight  # the vote is right where the head is wrong
    assert selection.knn_k in K_GRID and selection.knn_temperature in TEMPERATURE_GRID
    probs = selection.combiner.combine({"clip": np.log(wrong_head)}, {"clip": has_text}, np.zeros(30, dtype=int),
                                       vote(selection.knn_k, selection.knn_temperature))
    assert probs.max(axis=1).mean() > 0.8  # fitted on log-loss: sure where it is always right


def _underconfident(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Always right, but the top class gets only 0.3 of 5: a head + k-NN mix before calibration looks so."""
    labels = rng.integers(0, 5, n)
    probs = np.full((n, 5), 0.7 / 4)
    probs[np.arange(n), labels] = 0.3
    return probs, labels


def test_calibration_sharpens_an_underconfident_model_without_changing_its_ranking() -> None:
    probs, labels = _underconfident(200, np.random.default_rng(0))
    sharpness = fit_sharpness(probs, labels)
    calibrated = calibrate(probs, sharpness)
    assert sharpness > 4
    assert np.array_equal(calibrated.argmax(axis=1), probs.argmax(axis=1))
    assert np.allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    assert calibrated.max(axis=1).min() > 0.9
    assert calibration(labels, calibrated)["ece"] < calibration(labels, probs)["ece"]
    assert calibration(labels, probs)["abstain"]["0.5"]["answered"] == 0.0


def test_calibration_leaves_a_calibrated_model_nearly_alone() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), 4000)
    labels = np.array([rng.choice(5, p=p) for p in probs])  # labels drawn from the probabilities themselves
    assert 0.8 <= fit_sharpness(probs, labels) <= 1.25


def test_final_probabilities_use_the_head_exponent_without_an_index() -> None:
    probs, _ = _underconfident(3, np.random.default_rng(0))
    params = KnnParams(weight=0.5, sharpness=3.0, head_sharpness=2.0)
    assert np.allclose(final_probabilities(probs, None, params), calibrate(probs, 2.0))
    assert np.allclose(final_probabilities(probs, probs, params), calibrate(probs, 3.0))


def test_baseline_learns_words_and_scores_every_code_column() -> None:
    train = [row(i, code, f"{word} article {i}") for i in range(60)
             for code, word in [((10, 20, 30)[i % 3], ("livre", "chaise", "piscine")[i % 3])]]
    test = [row(100, 20, "chaise en bois"), row(101, 30, "piscine gonflable"), row(102, 10, "")]
    baseline = TfidfSvcBaseline(codes=[10, 20, 30, 40]).fit(train)
    result = baseline.scores(test)
    assert result.shape == (3, 4)
    assert list(result[:2].argmax(axis=1)) == [1, 2]
    assert np.isneginf(result[:, 3]).all()  # code 40 never seen in training: never predicted


def reference_vote(neighbor_codes: list, scores: list, codes: list[int], temperature: float) -> np.ndarray:
    """The vote written out plainly: softmax(score / temperature) weights summed per known code."""
    voters = [(codes.index(c), s / temperature) for c, s in zip(neighbor_codes, scores) if c in codes]
    if not voters:
        return np.full(len(codes), 1 / len(codes))
    top = max(logit for _, logit in voters)
    probs = np.zeros(len(codes))
    for i, logit in voters:
        probs[i] += math.exp(logit - top)
    return probs / probs.sum()


def test_batched_knn_votes_match_the_vote_of_each_query() -> None:
    rng = np.random.default_rng(3)
    codes = [2583, 10, 1280, 40, 2705]  # unsorted, as a bundle's class order may be
    neighbor_codes = rng.choice(codes + [999, 7], size=(6, 8))  # 999 and 7 are no class: they do not vote
    scores = rng.uniform(-1, 1, size=(6, 8))
    labelled = rng.random((6, 8)) > 0.2
    labelled[4] = False  # a query without a single voter gets the uniform vote
    votes = knn_votes(neighbor_codes, scores, codes, 0.1, labelled)
    for row in range(6):
        kept = [c if ok else None for c, ok in zip(neighbor_codes[row].tolist(), labelled[row])]
        expected = reference_vote(kept, scores[row].tolist(), codes, 0.1)
        assert np.allclose(votes[row], expected, atol=1e-6)
    assert np.allclose(votes[4], 1 / len(codes))


def test_feature_signatures_change_only_on_the_side_that_changed(tmp_path) -> None:  # noqa: ANN001
    """Each frozen side keys its cache by what decides it: an image option keeps the text features and back."""
    from dataclasses import replace

    from shopclip.model.clip import assemble
    from shopclip.model.config import ModelConfig
    from shopclip.training.encoding import FeatureStore, feature_signatures

    def signatures(config: ModelConfig) -> dict[str, str]:
        return feature_signatures(assemble(config, load_pretrained=False))

    base = ModelConfig(text_towers=["use", "ngram"], codes=[1, 2])
    reference = signatures(base)
    assert set(reference) == {"use", "image"}
    bigger_images = signatures(replace(base, image_size=256))
    assert bigger_images["use"] == reference["use"] and bigger_images["image"] != reference["image"]
    float_text = signatures(replace(base, tower_precision="float32" if "bfloat16" in str(
        assemble(base, load_pretrained=False).text_towers["use"].compute_dtype) else "bfloat16"))
    assert float_text["use"] != reference["use"] and float_text["image"] == reference["image"]
    assert signatures(replace(base, codes=[1, 2, 3])) == reference  # the label map decides no tower output

    store = FeatureStore(tmp_path, {"use": reference["use"]})
    store.save("use", {7: np.ones(3, dtype=np.float32)})
    store.save("image", {7: np.ones(3, dtype=np.float32)})  # no signature for it: never stored
    assert list(store.load("use")) == [7] and store.load("image") == {}
    assert FeatureStore(tmp_path, {"use": bigger_images["image"]}).load("use") == {}

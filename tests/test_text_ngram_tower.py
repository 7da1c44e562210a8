"""Hashed n-gram tower: stable ids, TF weighting, padding, gradients."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from shopclip.model.ngram_tower import PADDING_ID, NgramTower, iter_char_ngrams, iter_word_ngrams
from shopclip.model.text_towers import TextTower, build_text_tower

TEXTS = ["Lampe de bureau LED pliable", "Jeu PS4 FIFA 19", "Kinderwagen mit Sonnendach", "x"]


def _ids(tower: NgramTower, text: str) -> set[int]:
    return set(tower.weighted_ids(text))


def test_is_a_text_tower_built_by_the_factory() -> None:
    tower = build_text_tower("ngram", buckets=1024, dim=16)
    assert isinstance(tower, NgramTower) and isinstance(tower, TextTower)
    assert (tower.name, tower.output_dim, tower.pretrained) == ("ngram", 16, False)


def test_unknown_tower_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="ngram, use"):
        build_text_tower("bert")


@pytest.mark.parametrize("options", [{"buckets": 1}, {"dim": 0}, {"char_ngrams": (3, 2)}, {"word_ngrams": (0, 1)}])
def test_rejects_impossible_options(options: dict) -> None:
    with pytest.raises(ValueError):
        NgramTower(**options)


def test_char_ngrams_are_scikit_learn_char_wb() -> None:
    text_module = pytest.importorskip("sklearn.feature_extraction.text")
    analyzer = text_module.CountVectorizer(analyzer="char_wb", ngram_range=(2, 5)).build_analyzer()
    words = ["lampe", "a", "de", "ps4", "poupée"]
    assert sorted(iter_char_ngrams(words, (2, 5))) == sorted(analyzer(" ".join(words)))


def test_word_ngrams_are_unigrams_and_bigrams() -> None:
    assert list(iter_word_ngrams(["jeu", "ps4", "fifa"], (1, 2))) == ["jeu", "ps4", "fifa", "jeu ps4", "ps4 fifa"]


def test_ids_are_identical_in_another_process_with_another_hash_seed() -> None:
    tower = NgramTower(buckets=2**18, dim=4)
    here = [list(tower.weighted_ids(text).items()) for text in TEXTS]
    script = (
        "import json, sys; from shopclip.model.ngram_tower import NgramTower; t = NgramTower(buckets=2**18, dim=4);"
        f"print(json.dumps([list(t.weighted_ids(s).items()) for s in {TEXTS!r}]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True, text=True).stdout)
    assert [[tuple(pair) for pair in text] for text in there] == here  # same ids, weights and order


def test_identical_texts_give_identical_vectors_and_case_does_not_matter() -> None:
    tower = NgramTower(buckets=4096, dim=8)
    with torch.no_grad():
        vectors = tower(tower.tokenize(["Lampe LED", "Lampe LED", "LAMPE led", "Poupée"]))
    assert torch.equal(vectors[0], vectors[1]) and torch.equal(vectors[0], vectors[2])
    assert not torch.allclose(vectors[0], vectors[3])


def test_shared_ngrams_share_ids() -> None:
    tower = NgramTower()
    desk, bedside, doll = (_ids(tower, t) for t in ("Lampe LED bureau", "Lampe LED chevet", "Poupée porcelaine"))
    assert len(desk & bedside) > len(desk) / 3
    assert len(desk & doll) < 3  # only hash collisions or a shared character pair
    assert tower.bucket("w", "lampe") in desk and tower.bucket("w", "lampe led") in desk
    assert tower.bucket("c", " la") in desk
    assert tower.bucket("w", "ab") != tower.bucket("c", "ab")


def test_weights_are_sublinear_and_normalised_per_group() -> None:
    tower = NgramTower(buckets=2**24, dim=4)  # wide enough that no two n-grams collide here
    weights = tower.weighted_ids("lampe lampe lampe bureau")
    word = {tower.bucket("w", g): g for g in ("lampe", "bureau", "lampe lampe", "lampe bureau")}
    raw = {"lampe": 1 + math.log(3), "bureau": 1.0, "lampe lampe": 1 + math.log(2), "lampe bureau": 1.0}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    for bucket, gram in word.items():
        assert weights[bucket] == pytest.approx(raw[gram] / norm)
    assert sum(w * w for w in weights.values()) == pytest.approx(2.0)  # word group 1 + char group 1


def test_text_beyond_max_chars_is_ignored() -> None:
    tower = NgramTower(buckets=4096, dim=4, max_chars=10)
    assert tower.weighted_ids("lampe led " + "poupée " * 50) == tower.weighted_ids("lampe led ")


def test_tokenize_pads_with_the_padding_bucket_and_zero_weight() -> None:
    tower = NgramTower(buckets=4096, dim=4)
    batch = tower.tokenize(["lampe", "lampe de bureau led", ""])
    ids, weights = batch["ids"], batch["weights"]
    assert ids.shape == weights.shape and ids.shape[0] == 3
    assert ids[2].eq(PADDING_ID).all() and weights[2].eq(0).all()  # empty text: nothing
    real = weights[0] > 0
    assert ids[0][real].gt(PADDING_ID).all() and ids[0][~real].eq(PADDING_ID).all()


def test_batch_result_equals_one_by_one_and_empty_text_is_zero() -> None:
    torch.manual_seed(0)
    tower = NgramTower(buckets=4096, dim=8)
    with torch.no_grad():
        batched = tower(tower.tokenize([*TEXTS, ""]))
        single = torch.cat([tower(tower.tokenize([text])) for text in TEXTS])
    torch.testing.assert_close(batched[:-1], single)
    assert batched[-1].eq(0).all()


def test_untrained_tower_already_ranks_texts_by_shared_ngrams() -> None:
    """Initialised as a random projection of the n-gram vector, similarity follows shared n-grams."""
    torch.manual_seed(0)
    tower = NgramTower(dim=128)
    with torch.no_grad():
        v = torch.nn.functional.normalize(tower(tower.tokenize(
            ["Lampe de bureau LED pliable", "Lampe LED de bureau orientable", "Poupée en porcelaine ancienne"])))
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]


def test_gradients_reach_used_buckets_only() -> None:
    tower = NgramTower(buckets=4096, dim=8)
    batch = tower.tokenize(TEXTS[:2])
    tower(batch).pow(2).sum().backward()
    grad = tower.bag.weight.grad
    used = batch["ids"][batch["weights"] > 0].unique()
    assert grad[used].abs().sum(dim=1).gt(0).all()
    mask = torch.ones(grad.shape[0], dtype=torch.bool)
    mask[used] = False
    assert grad[mask].abs().sum() == 0  # unused buckets and the padding bucket stay untouched


def test_idf_weighs_rare_ngrams_above_common_ones() -> None:
    tower = NgramTower(buckets=2**14, dim=8)
    corpus = ["coussin bleu", "coussin rouge", "coussin vert", "lampe bleu"]
    before = tower.weighted_ids("coussin lampe")
    tower.fit_idf(corpus)
    after = tower.weighted_ids("coussin lampe")
    common, rare = tower.bucket("w", "coussin"), tower.bucket("w", "lampe")
    assert before[common] == pytest.approx(before[rare])  # plain tf: both words once
    assert after[rare] > after[common]
    assert tower.idf[common] == pytest.approx(math.log(5 / 4) + 1)  # scikit-learn's smoothed idf, df 3 of 4
    assert tower.idf[tower.bucket("w", "jamais")] == pytest.approx(math.log(5) + 1)  # unseen: the largest
    words = (common, rare, tower.bucket("w", "coussin lampe"))
    word_norm = math.sqrt(sum(w * w for b, w in after.items() if b in words))
    assert word_norm == pytest.approx(1.0, abs=1e-6)  # still L2-normalised per group


def test_idf_is_saved_with_the_weights_and_old_state_dicts_load_as_plain_tf() -> None:
    tower = NgramTower(buckets=2**10, dim=4)
    tower.fit_idf(["a b", "a c"])
    reloaded = NgramTower(buckets=2**10, dim=4)
    reloaded.load_state_dict(tower.state_dict())
    assert torch.equal(reloaded.idf, tower.idf)
    old = {k: v for k, v in tower.state_dict().items() if k != "idf"}
    legacy = NgramTower(buckets=2**10, dim=4)
    legacy.load_state_dict(old)  # strict: the missing idf is filled, not an error
    assert torch.equal(legacy.idf, torch.ones(2**10))

"""Classify's views and combiner (`shopclip.model.ensemble`) against scikit-learn, and their fitting."""

from __future__ import annotations

import numpy as np
import pytest

from shopclip.model.ensemble import (GROUPS, EnsembleClassifier, ViewCombiner, ViewInputs, char_wb_ngrams,
                                     group_of, knn_scores, word_ngrams)
from shopclip.training.ensemble import (fit_combiner, fit_dense_view, fit_group_weights, fit_sparse_text_view,
                                        fit_views, ViewSpec)

TEXTS = ["Peluche lapin 30 cm  douce", "Lot de 3 tasses en porcelaine", "Jeu PS4 FIFA 21 édition",
         "Coque iPhone 12 silicone", "Peluche ours brun géant", "Tasse à café porcelaine blanche",
         "Jeu vidéo Switch Mario", "Coque Samsung Galaxy S20", "  Piscine   gonflable  ronde ", "a b"]
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3, 1, 0])


def test_analysers_are_scikit_learns() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2)).build_analyzer()
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)).build_analyzer()
    for text in [*TEXTS, "", "é", "x", "Ça\tva\n\nbien?"]:
        assert sorted(word_ngrams(text, (1, 2))) == sorted(word(text))
        assert sorted(char_wb_ngrams(text, (2, 5))) == sorted(char(text))


def test_sparse_view_scores_are_the_svms_decision_values() -> None:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    view = fit_sparse_text_view(TEXTS, LABELS, num_classes=5, c=0.5)
    vectorisers = [TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)]
    features = hstack([v.fit_transform(TEXTS) for v in vectorisers]).tocsr()
    svc = LinearSVC(C=0.5, random_state=0).fit(features, LABELS)
    queries = ["peluche lapin géant", "tasse porcelaine", "mot inconnu"]
    expected = svc.decision_function(hstack([v.transform(queries) for v in vectorisers]).tocsr())
    scores = view.scores(queries)
    np.testing.assert_allclose(scores[:, :4], expected, atol=1e-9)
    assert (scores[:, 4] < -10).all(), "a class without training text never wins"


def test_dense_view_is_a_softmax_over_normalised_features() -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 8)) + np.repeat(np.eye(8)[:4] * 3, 10, axis=0)
    labels = np.repeat(np.arange(4), 10)
    view = fit_dense_view("use", "use", "text", features, labels, num_classes=4, c=10.0)
    log_probs = view.scores(features * 7.0)  # the scale of a tower's output does not matter
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, atol=1e-9)
    assert (log_probs.argmax(axis=1) == labels).mean() > 0.9


def test_group_weights_follow_the_informative_view() -> None:
    rng = np.random.default_rng(1)
    n, classes = 300, 5
    labels = rng.integers(0, classes, n)
    informative = np.log(np.full((n, classes), 0.05) + 0.75 * np.eye(classes)[labels])
    noise = np.log(rng.dirichlet(np.ones(classes), n))
    weights = fit_group_weights(np.stack([informative, noise], axis=1), np.ones((n, 2), dtype=bool), labels)
    assert weights[0] > 0.5 and weights[1] < 0.1
    absent = fit_group_weights(np.stack([informative, noise], axis=1), np.array([[True, False]] * n), labels)
    assert absent[1] == 0.0, "a view no product of the group has gets no weight"


def test_combiner_adds_only_present_views_per_group() -> None:
    combiner = ViewCombiner(["a", "b"], with_knn={"text": [1.0, 2.0, 3.0], "image_only": [0.0, 1.0, 0.5]},
                            without_knn={"text": [1.0, 2.0], "image_only": [0.0, 1.0]})
    a = np.log(np.array([[0.7, 0.3], [0.2, 0.8]]))
    b = np.log(np.array([[0.4, 0.6], [0.9, 0.1]]))
    present = {"a": np.array([True, False]), "b": np.array([True, True])}
    groups = np.array([0, 1])
    votes = np.array([[0.5, 0.5], [0.0, 1.0]])
    probs = combiner.combine({"a": a, "b": b}, present, groups, votes)
    knn = knn_scores(votes)
    expected0 = 1.0 * a[0] + 2.0 * b[0] + 3.0 * knn[0]
    expected1 = 1.0 * b[1] + 0.5 * knn[1]
    for row, logits in ((0, expected0), (1, expected1)):
        np.testing.assert_allclose(probs[row], np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    without = combiner.combine({"a": a, "b": b}, present, groups, None)
    np.testing.assert_allclose(without[1], np.exp(b[1]) / np.exp(b[1]).sum(), rtol=1e-5)
    assert list(group_of(np.array([True, False]))) == [0, 1] and GROUPS == ("text", "image_only")


def _classifier(tmp_path=None) -> tuple[EnsembleClassifier, ViewInputs]:
    rng = np.random.default_rng(2)
    n = len(TEXTS)
    has_image = np.array([True, False] * (n // 2))
    inputs = ViewInputs(list(TEXTS), np.ones(n, dtype=bool), has_image,
                        {"use": rng.standard_normal((n, 6)), "image": rng.standard_normal((n, 4))},
                        np.log(rng.dirichlet(np.ones(5), n)))
    sparse, dense = fit_views(inputs, LABELS, 5, ViewSpec(), {"use": "text", "image": "image"})
    names = [v.name for v in sparse] + [v.name for v in dense] + ["clip"]
    provisional = EnsembleClassifier(sparse, dense, ViewCombiner([], {}, {}))
    scores, present = provisional.view_scores(inputs)
    votes = np.eye(5)[LABELS] * 0.8 + 0.04
    combiner = fit_combiner(scores, present, inputs.has_text, LABELS, names, votes)
    return EnsembleClassifier(sparse, dense, combiner, metadata={"val_weighted_f1": 1.0}), inputs


def test_classifier_round_trips_through_its_files(tmp_path) -> None:
    classifier, inputs = _classifier()
    config = classifier.save(tmp_path)
    loaded = EnsembleClassifier.load(tmp_path, config)
    votes = np.full((len(TEXTS), 5), 0.2)
    np.testing.assert_allclose(loaded.probabilities(inputs, votes), classifier.probabilities(inputs, votes),
                               atol=1e-5)
    assert loaded.metadata == {"val_weighted_f1": 1.0}
    assert [v.name for v in loaded.dense_views] == ["use", "image", "image_knn"]
    knn_view, loaded_view = classifier.dense_views[-1], loaded.dense_views[-1]
    assert loaded_view.keys.dtype == np.float32 and loaded_view.k == knn_view.k
    np.testing.assert_allclose(loaded_view.keys, knn_view.keys, atol=1e-3)  # stored as float16


def test_no_image_neighbour_view_when_its_dimensions_are_zero() -> None:
    _, inputs = _classifier()
    _, dense = fit_views(inputs, LABELS, 5, ViewSpec(image_knn_dims=0), {"use": "text", "image": "image"})
    assert [v.name for v in dense] == ["use", "image"]


def _nuisance_clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by small offsets in 4 dims, buried under 2 dims of large uninformative spread."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    signal = np.eye(4)[labels] * 0.6 + rng.standard_normal((n, 4)) * 0.1
    nuisance = rng.standard_normal((n, 2)) * 5.0
    return np.hstack([signal, nuisance]), labels


def test_neighbour_view_votes_in_the_whitened_space() -> None:
    from shopclip.model.ensemble import l2_normalise
    from shopclip.model.knn import exact_search
    from shopclip.training.ensemble import fit_neighbour_view

    train, train_labels = _nuisance_clusters(300, 0)
    test, test_labels = _nuisance_clusters(100, 1)
    view = fit_neighbour_view("image_knn", "image", "image", train, train_labels, 4, dims=6, k=10,
                              temperature=0.1)
    scores = view.scores(test)
    assert scores.shape == (100, 4) and np.isfinite(scores).all()
    assert (scores[:, 3] < np.log(0.01)).all(), "a class no neighbour has stays unlikely, not impossible"
    whitened_accuracy = (scores.argmax(axis=1) == test_labels).mean()
    _, rows = exact_search(l2_normalise(test).astype(np.float32), l2_normalise(train).astype(np.float32), 10)
    plain = np.array([np.bincount(train_labels[r], minlength=3).argmax() for r in rows])
    assert whitened_accuracy > 0.9 > (plain == test_labels).mean() + 0.2, "whitening lets the signal decide"


def test_a_product_without_an_image_is_not_scored_by_the_image_view() -> None:
    classifier, inputs = _classifier()
    scores, present = classifier.view_scores(inputs)
    assert not present["image"][~inputs.has_image].any() and not present["image_knn"][~inputs.has_image].any()
    changed = ViewInputs(inputs.texts, inputs.has_text, inputs.has_image,
                         {**inputs.features, "image": inputs.features["image"] * 0 + 99.0}, inputs.clip_log_probs)
    probs, probs_changed = classifier.probabilities(inputs, None), classifier.probabilities(changed, None)
    np.testing.assert_allclose(probs[~inputs.has_image], probs_changed[~inputs.has_image], atol=1e-6)
    assert not np.allclose(probs[inputs.has_image], probs_changed[inputs.has_image], atol=1e-4)


def test_clip_view_without_its_input_is_refused() -> None:
    classifier, inputs = _classifier()
    inputs.clip_log_probs = None
    with pytest.raises(ValueError, match="clip"):
        classifier.probabilities(inputs, None)


def test_validation_chooses_each_views_regularisation() -> None:
    from shopclip.training.ensemble import choose_views

    rng = np.random.default_rng(4)
    n, dim = 120, 6
    labels = rng.integers(0, 3, n)
    features = rng.standard_normal((n, dim)) * 0.3 + np.eye(dim)[labels] * 1.5
    texts = [f"mot{label} commun{i % 7}" for i, label in enumerate(labels)]
    inputs = ViewInputs(texts, np.ones(n, dtype=bool), np.zeros(n, dtype=bool), {"use": features})
    train, val = inputs.take(np.arange(80)), inputs.take(np.arange(80, n))
    spec = ViewSpec(sparse_c=(0.001, 0.5), text_c=(1e-4, 10.0))
    sparse, dense, chosen = choose_views(train, labels[:80], val, labels[80:], 3, spec, {"use": "text"})
    assert chosen == {"tfidf": 0.5, "use": 10.0}  # the near-zero C cannot learn anything
    assert [v.name for v in sparse] == ["tfidf"] and [v.name for v in dense] == ["use"]
    assert (dense[0].scores(val.features["use"]).argmax(axis=1) == labels[80:]).mean() > 0.9


def _ocr_inputs() -> tuple[ViewInputs, np.ndarray]:
    """Texts for 8 products, then 4 image-only products: two whose images read as words, two without words."""
    texts = TEXTS[:8] + [""] * 4
    words = [""] * 8 + ["peluche lapin douce", "", "coque silicone", ""]
    labels = np.concatenate([LABELS[:8], [0, 1, 3, 2]])
    has_text = np.array([True] * 8 + [False] * 4)
    inputs = ViewInputs(texts, has_text, ~has_text, {}, None, words)
    return inputs, labels


def test_ocr_view_learns_from_product_texts_and_image_words_and_reads_only_image_words() -> None:
    from shopclip.model.ensemble import OCR_VIEW

    inputs, labels = _ocr_inputs()
    sparse, _ = fit_views(inputs, labels, 5, ViewSpec(ocr=True), {})
    assert [(v.name, v.modality) for v in sparse] == [("tfidf", "text"), (OCR_VIEW, "ocr")]
    classifier = EnsembleClassifier(sparse, [], ViewCombiner([], {}, {}), uses_clip_head=False)
    assert classifier.reads_ocr
    scores, present = classifier.view_scores(inputs)
    assert present[OCR_VIEW].tolist() == [False] * 8 + [True, False, True, False]
    assert not scores[OCR_VIEW][~present[OCR_VIEW]].any()
    assert scores[OCR_VIEW][8].argmax() == 0 and scores[OCR_VIEW][10].argmax() == 3  # "peluche", "coque"
    # the image words also taught it: a view fitted on product texts alone scores them differently
    text_only = fit_sparse_text_view(TEXTS[:8], LABELS[:8], 5, 0.5)
    assert not np.allclose(text_only.scores(["peluche lapin douce"]), scores[OCR_VIEW][8:9])


def test_no_ocr_view_unless_asked_and_some_image_held_words() -> None:
    inputs, labels = _ocr_inputs()
    assert [v.name for v in fit_views(inputs, labels, 5, ViewSpec(), {})[0]] == ["tfidf"]
    silent = ViewInputs(inputs.texts, inputs.has_text, inputs.has_image, {}, None, [""] * 12)
    assert [v.name for v in fit_views(silent, labels, 5, ViewSpec(ocr=True), {})[0]] == ["tfidf"]


def test_ocr_view_round_trips_and_a_product_without_words_ignores_it(tmp_path) -> None:
    from shopclip.model.ensemble import OCR_VIEW

    inputs, labels = _ocr_inputs()
    sparse, _ = fit_views(inputs, labels, 5, ViewSpec(ocr=True), {})
    combiner = ViewCombiner(["tfidf", OCR_VIEW], {}, {"text": [1.0, 0.0], "image_only": [0.0, 2.0]})
    classifier = EnsembleClassifier(sparse, [], combiner, uses_clip_head=False)
    loaded = EnsembleClassifier.load(tmp_path, classifier.save(tmp_path))
    assert loaded.reads_ocr and loaded.sparse_views[1].modality == "ocr"
    np.testing.assert_allclose(loaded.probabilities(inputs, None), classifier.probabilities(inputs, None),
                               atol=1e-6)
    unread = ViewInputs(inputs.texts, inputs.has_text, inputs.has_image, {}, None, None)  # words never read
    probs = loaded.probabilities(unread, None)
    np.testing.assert_allclose(probs[8:], 1 / 5, atol=1e-6)  # nothing else to go on: uniform, not a crash
    assert probs[8:].shape == (4, 5) and loaded.probabilities(inputs, None)[8].argmax() == 0

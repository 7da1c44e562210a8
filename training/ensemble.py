"""Fitting Classify's views and the weights that combine them (`shopclip.model.ensemble` applies them).

Views are fitted on the training products; the combiner's weights and the k-NN vote's parameters are fitted
on validation products, on scores of views that never saw them (never on a test split). The final bundle
then refits the views on every labelled product and keeps the combiner fitted on validation.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shopclip.model.ensemble import (CLIP_VIEW, GROUPS, KNN_VIEW, MISSING_CLASS_BIAS, OCR_MODALITY, OCR_VIEW,
                                     DenseView, FeatureView, NeighbourView, SparseTextView, TfidfPart,
                                     ViewCombiner, ViewInputs, group_of, knn_scores, l2_normalise)

log = logging.getLogger(__name__)

VoteFunction = Callable[[int, float], np.ndarray]
"""(k, temperature) -> (n, classes) k-NN votes of the validation products."""

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
SPARSE_VIEW = "tfidf"
NEIGHBOUR_SUFFIX = "_knn"
"""A neighbour view is named after the features it reads: "image" -> "image_knn"."""
COMBINER_L2 = 1e-3
"""Ridge on the combiner's weights: a view that adds nothing on validation drifts to zero, not to noise."""


@dataclass(frozen=True)
class ViewSpec:
    """Regularisation of each view's linear model (inverse strength, scikit-learn's C): the candidates
    validation chooses from, per kind of view. Without validation the middle candidate is used."""

    sparse_c: tuple[float, ...] = (0.25, 0.5, 1.0)
    """LinearSVC on TF-IDF; 0.5 is the reference baseline's value."""
    text_c: tuple[float, ...] = (3.0, 10.0, 30.0)
    """Logistic regression on a text tower's normalised output."""
    image_c: tuple[float, ...] = (1.0, 3.0, 10.0)
    """Logistic regression on the image trunk's normalised output (1280 dims for a few thousand images)."""
    image_knn_dims: int = 128
    """Whitened dimensions of the image neighbour view's memory; 0: no such view. Chosen, with k and the
    temperature below, by cross-validation over the image products of ../shared/data (README)."""
    image_knn_k: int = 30
    image_knn_temperature: float = 0.1
    ocr: bool = False
    """Fit the OCR view: TF-IDF + LinearSVC over product texts and the words read on the images of training
    products without text (`ViewInputs.ocr_texts`), applied to the words read on a product's image."""

    def candidates(self, modality: str, sparse: bool = False) -> tuple[float, ...]:
        return self.sparse_c if sparse else self.image_c if modality == "image" else self.text_c

    def default(self, modality: str, sparse: bool = False) -> float:
        grid = self.candidates(modality, sparse)
        return grid[len(grid) // 2]


def fit_neighbour_view(name: str, source: str, modality: str, features: np.ndarray, labels: np.ndarray,
                       num_classes: int, dims: int, k: int, temperature: float) -> NeighbourView:
    """Memory of these labelled products in a whitened projection of their normalised features (see
    `NeighbourView`): the top `dims` principal directions, each scaled by its inverse singular value."""
    from sklearn.utils.extmath import randomized_svd

    normalised = l2_normalise(features.astype(np.float64))
    mean = normalised.mean(axis=0)
    centred = normalised - mean
    dims = min(dims, *centred.shape)
    _, singular, components = randomized_svd(centred, dims, random_state=0)
    kept = singular > singular[0] * 1e-6  # a direction with no variance would divide by zero
    projection = components[kept].T / singular[kept]
    view = NeighbourView(name, source, modality, mean, projection, np.zeros((0, int(kept.sum())), np.float32),
                         np.asarray(labels, dtype=np.int64), num_classes, k, temperature)
    view.keys = view.project(features)
    return view


def fit_sparse_text_view(texts: Sequence[str], labels: np.ndarray, num_classes: int, c: float,
                         name: str = SPARSE_VIEW, modality: str = "text") -> SparseTextView:
    """TF-IDF (word 1-2 + char_wb 2-5, sublinear tf) + LinearSVC; texts must be non-empty product texts."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vectorisers = [TfidfVectorizer(analyzer="word", ngram_range=WORD_NGRAMS, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, sublinear_tf=True)]
    features = hstack([v.fit_transform(texts) for v in vectorisers]).tocsr()
    svc = LinearSVC(C=c, random_state=0).fit(features, labels)  # liblinear shuffles: seeded, reproducible
    weight, bias = _full_classes(svc.coef_, svc.intercept_, svc.classes_, num_classes)
    parts = [TfidfPart(v.analyzer, v.ngram_range, {gram: int(i) for gram, i in v.vocabulary_.items()},
                       v.idf_.astype(np.float64)) for v in vectorisers]
    return SparseTextView(name, parts, weight, bias, modality)


def fit_dense_view(name: str, source: str, modality: str, features: np.ndarray, labels: np.ndarray,
                   num_classes: int, c: float) -> DenseView:
    """Multinomial logistic regression on L2-normalised features (what `DenseView.scores` feeds it)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000).fit(l2_normalise(features.astype(np.float64)), labels)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: expand to a softmax pair
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight, bias = _full_classes(coef, intercept, model.classes_, num_classes)
    return DenseView(name, source, modality, weight, bias)


def _full_classes(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, num_classes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(features, num_classes) weight and bias laid out on every class; unseen classes never win."""
    if coef.shape[0] == 1:  # binary LinearSVC: one decision function for classes[1]
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    weight = np.zeros((coef.shape[1], num_classes))
    bias = np.full(num_classes, MISSING_CLASS_BIAS)
    weight[:, classes] = coef.T
    bias[classes] = intercept
    return weight, bias


def fit_views(inputs: ViewInputs, labels: np.ndarray, num_classes: int, spec: ViewSpec,
              sources: Mapping[str, str], chosen_c: Mapping[str, float] | None = None
              ) -> tuple[list[SparseTextView], list[FeatureView]]:
    """Every view on the products of `inputs` that have its modality, with the C of `chosen_c` (a view
    missing there gets its kind's default). `sources`: feature key -> modality."""
    chosen_c = chosen_c or {}
    sparse, dense = [], []
    for kind, name, modality, rows in _view_rows(inputs, labels, sources, spec):
        c = chosen_c.get(name, spec.default(modality, sparse=kind == "sparse"))
        view = _fit_one(kind, name, modality, inputs, labels, rows, num_classes, c, spec)
        (sparse if kind == "sparse" else dense).append(view)
    return sparse, dense


def choose_views(train: ViewInputs, train_labels: np.ndarray, val: ViewInputs, val_labels: np.ndarray,
                 num_classes: int, spec: ViewSpec, sources: Mapping[str, str]
                 ) -> tuple[list[SparseTextView], list[FeatureView], dict[str, float]]:
    """For each linear view, the C among its candidates with the best weighted F1 on the validation products
    that have its modality (ties: the first, i.e. the stronger regularisation); returns the fitted views and
    C. Neighbour views have nothing to choose here: the combiner's weight decides what they count for."""
    from shopclip.training.metrics import scores as classification_scores

    sparse, dense, chosen = [], [], {}
    for kind, name, modality, rows in _view_rows(train, train_labels, sources, spec):
        if kind == "neighbours":
            dense.append(_fit_one(kind, name, modality, train, train_labels, rows, num_classes, 0.0, spec))
            continue
        has = (val.sparse_texts(modality)[1] if kind == "sparse"
               else np.asarray(val.has_image if modality == "image" else val.has_text, dtype=bool))
        best, best_f1 = None, -1.0
        for c in spec.candidates(modality, sparse=kind == "sparse"):
            view = _fit_one(kind, name, modality, train, train_labels, rows, num_classes, c, spec)
            f1 = _view_f1(view, val, has, val_labels, classification_scores) if has.any() else 0.0
            if f1 > best_f1:
                best, best_f1, chosen[name] = view, f1, c
        (sparse if kind == "sparse" else dense).append(best)
        log.info("view %s: C=%s chosen on validation (weighted F1 %.4f)", name, chosen[name], best_f1)
    return sparse, dense, chosen


def _view_rows(inputs: ViewInputs, labels: np.ndarray, sources: Mapping[str, str], spec: ViewSpec):
    """(kind, name, modality, training rows) of every view that has something to learn from: the sparse
    text view, the OCR view (when asked and some training image without text held words), a linear view per
    tower and a neighbour view over the image trunk."""
    text_rows = np.nonzero(inputs.has_text)[0]
    if len(np.unique(labels[text_rows])) >= 2:
        yield "sparse", SPARSE_VIEW, "text", text_rows
    if spec.ocr:
        read = inputs.sparse_texts(OCR_MODALITY)[1] & ~np.asarray(inputs.has_text, dtype=bool)
        rows = np.nonzero(np.asarray(inputs.has_text, dtype=bool) | read)[0]
        if read.any() and len(np.unique(labels[rows])) >= 2:
            yield "sparse", OCR_VIEW, OCR_MODALITY, rows
        else:
            log.warning("OCR view skipped: no words read on the images of training products without text")
    for source, modality in sources.items():
        rows = np.nonzero(inputs.has_image if modality == "image" else inputs.has_text)[0]
        if len(np.unique(labels[rows])) < 2:
            log.warning("view %s skipped: fewer than two classes among its %d training products", source, len(rows))
            continue
        yield "dense", source, modality, rows
        if modality == "image" and spec.image_knn_dims > 0:
            yield "neighbours", source + NEIGHBOUR_SUFFIX, modality, rows


def _fit_one(kind: str, name: str, modality: str, inputs: ViewInputs, labels: np.ndarray, rows: np.ndarray,
             num_classes: int, c: float, spec: ViewSpec) -> SparseTextView | FeatureView:
    if kind == "sparse":
        return fit_sparse_text_view(_learning_texts(inputs, modality, rows), labels[rows], num_classes, c,
                                    name=name, modality=modality)
    if kind == "neighbours":
        source = name.removesuffix(NEIGHBOUR_SUFFIX)
        return fit_neighbour_view(name, source, modality, inputs.features[source][rows], labels[rows],
                                  num_classes, spec.image_knn_dims, spec.image_knn_k, spec.image_knn_temperature)
    return fit_dense_view(name, name, modality, inputs.features[name][rows], labels[rows], num_classes, c)


def _learning_texts(inputs: ViewInputs, modality: str, rows: np.ndarray) -> list[str]:
    """What a sparse view learns from: the product texts, and for the OCR view the words read on the image
    where a product has no text (product titles teach it the vocabulary, image words how print reads)."""
    if modality != OCR_MODALITY:
        return [inputs.texts[i] for i in rows]
    words = inputs.sparse_texts(OCR_MODALITY)[0]
    return [inputs.texts[i] if inputs.has_text[i] else words[i] for i in rows]


def _view_f1(view: SparseTextView | FeatureView, val: ViewInputs, has: np.ndarray, labels: np.ndarray,
             classification_scores) -> float:
    rows = np.nonzero(has)[0]
    if isinstance(view, SparseTextView):
        texts = val.sparse_texts(view.modality)[0]
        predicted = view.scores([texts[i] for i in rows])
    else:
        predicted = view.scores(val.features[view.source][rows])
    return classification_scores(labels[rows], predicted)["weighted_f1"]


def view_names(sparse: Sequence[SparseTextView], dense: Sequence[FeatureView]) -> list[str]:
    """The combiner's views, in its order: the sparse views, the dense views, then the two-tower head."""
    return [view.name for view in sparse] + [view.name for view in dense] + [CLIP_VIEW]


def fit_group_weights(scores: np.ndarray, present: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights (views,) minimising the log-loss of softmax(sum_v w_v * present_v * scores_v).

    `scores` (n, views, classes), `present` (n, views). Weights are softplus of free parameters, optimised by
    L-BFGS; a small ridge keeps views that add nothing near zero.
    """
    import torch

    if len(labels) == 0:
        return np.zeros(scores.shape[1])
    z = torch.tensor(np.where(present[:, :, None], scores, 0.0), dtype=torch.float64)
    target = torch.tensor(labels, dtype=torch.long)
    raw = torch.zeros(scores.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([raw], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        weights = torch.nn.functional.softplus(raw)
        logits = (z * weights[None, :, None]).sum(dim=1)
        loss = torch.nn.functional.cross_entropy(logits, target) + COMBINER_L2 * (weights ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    weights = torch.nn.functional.softplus(raw).detach().numpy()
    return np.where(present.any(axis=0), weights, 0.0)  # a view no product of the group has gets no weight


def fit_combiner(scores: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], has_text: np.ndarray,
                 labels: np.ndarray, view_names: Sequence[str], knn_votes: np.ndarray | None) -> ViewCombiner:
    """Per-group weights over `view_names`, with the k-NN view (when votes are given) and without it."""
    groups = group_of(has_text)

    def table(names: Sequence[str], all_scores: Mapping[str, np.ndarray],
              all_present: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
        out = {}
        for g, group in enumerate(GROUPS):
            rows = groups == g
            stacked = np.stack([all_scores[name][rows] for name in names], axis=1)
            mask = np.stack([all_present[name][rows] for name in names], axis=1)
            out[group] = [round(float(w), 6) for w in fit_group_weights(stacked, mask, labels[rows])]
        return out

    without = table(view_names, scores, present)
    if knn_votes is None:
        return ViewCombiner(list(view_names), with_knn={g: w + [0.0] for g, w in without.items()},
                            without_knn=without)
    with_scores = {**scores, KNN_VIEW: knn_scores(knn_votes)}
    with_present = {**present, KNN_VIEW: np.ones(len(labels), dtype=bool)}
    return ViewCombiner(list(view_names), with_knn=table([*view_names, KNN_VIEW], with_scores, with_present),
                        without_knn=without)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


@dataclass
class Selection:
    """What validation chose: the combiner, the k-NN vote's parameters and the figures behind the choice."""

    combiner: ViewCombiner
    knn_k: int
    knn_temperature: float
    figures: dict


def select_combiner(scores: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], has_text: np.ndarray,
                    labels: np.ndarray, view_names: Sequence[str], vote: VoteFunction | None,
                    k_grid: Sequence[int], temperature_grid: Sequence[float]) -> Selection:
    """Fit the combiner for each (k, temperature) of the k-NN vote and keep the one with the lowest
    validation log-loss (the quantity the weights minimise; it also rewards calibration)."""
    from shopclip.training.metrics import scores as classification_scores

    groups = group_of(has_text)
    candidates = itertools.product(k_grid, temperature_grid) if vote is not None else [(0, 0.0)]
    best: Selection | None = None
    best_loss = np.inf
    for k, temperature in candidates:
        votes = vote(k, temperature) if vote is not None else None
        combiner = fit_combiner(scores, present, has_text, labels, view_names, votes)
        probs = combiner.combine(scores, present, groups, votes)
        loss = log_loss(probs, labels)
        if loss < best_loss:
            figures = {"val_log_loss": loss, "val_weighted_f1": classification_scores(labels, probs)["weighted_f1"]}
            best, best_loss = Selection(combiner, k, temperature, figures), loss
    assert best is not None
    return best

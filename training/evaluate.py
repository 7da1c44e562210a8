"""Honest evaluation of a bundle: one table, every row scored on the same test products.

Rows: TF-IDF + LinearSVC text baseline (trained on the products the bundle learnt from), the head on the
text embedding, on the image embedding, on the fused embedding, the k-NN vote over the training vectors
(exact search), and what Classify answers: the bundle's classifier (views + k-NN vote, combined as chosen
on validation by `train`) computed exactly as the server computes it, from raw products.

Test products are the bundle's held-out test split of its training folder (`shopclip train --test-fraction`),
or, with `--data`, every product of another labelled folder (products seen in training are left out and
counted). The reference products (k-NN, baseline) are the ones the bundle learnt from: the training split,
plus validation when the bundle was refitted on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shopclip.errors import InvalidInput, NotFound
from shopclip.catalogue_files import SourceRow
from shopclip.model.knn import KnnParams
from shopclip.training.baseline import TfidfSvcBaseline
from shopclip.training.config import TrainConfig
from shopclip.training.data import fingerprint, has_image, has_text, load_products, select
from shopclip.training.encoding import Embeddings, ProductInputs, embed
from shopclip.training.metrics import calibration, knn_probabilities, nearest, scores

log = logging.getLogger(__name__)

METHODS = ("tfidf_svc", "text_head", "image_head", "fused_head", "knn", "classify")
LABELS = {"tfidf_svc": "TF-IDF + LinearSVC (text)", "text_head": "head on text embedding",
          "image_head": "head on image embedding", "fused_head": "head on fused embedding",
          "knn": "k-NN vote (training vectors)", "classify": "Classify (views + k-NN)"}
SUBSETS = {"text+image": (True, True), "text only": (True, False), "image only": (False, True)}


@dataclass
class EvaluationSets:
    """Reference (training), validation and test products of one evaluation."""

    train: list[SourceRow]
    val: list[SourceRow]
    test: list[SourceRow]
    source: str
    own_split: bool
    excluded_seen: int = 0
    excluded_unknown_code: int = 0


def evaluation_sets(training: dict, data_dir: str | Path | None, codes: list[int]) -> EvaluationSets:
    """The bundle's own split, or its training products as reference and `data_dir` as test set.

    From another folder, products seen in training and products of codes the model does not know are
    left out (and counted): the first would flatter the model, the second it cannot get right.
    """
    train_dir = Path(training["data_dir"])
    products, train, val = learnt_products(training)
    split = training["split"]
    if data_dir is None or Path(data_dir).resolve() == train_dir.resolve():
        test = select(products, split["test"])
        if not test:
            raise InvalidInput("data", f"the bundle holds no test split of {train_dir} (it learnt from every "
                                       "product): train with --test-fraction, or pass --data with new products")
        return EvaluationSets(train, val, test, f"{train_dir} (held-out test split)", own_split=True)
    seen, known = {p.productid for p in products}, set(codes)
    external = load_products(data_dir)
    unseen = [p for p in external if p.productid not in seen]
    test = [p for p in unseen if p.prdtypecode in known]
    if not test:
        raise InvalidInput("data", f"{data_dir} has no product that is new to the model and of a known code")
    return EvaluationSets(train, val, test, str(Path(data_dir).resolve()), False, len(external) - len(unseen),
                          len(unseen) - len(test))


def learnt_products(training: dict) -> tuple[list[SourceRow], list[SourceRow], list[SourceRow]]:
    """Every product of a bundle's training folder, the ones it learnt from (its k-NN references: the training
    split, plus validation when it was refitted on it) and its validation products. The folder must still hold
    what it held at training time (data fingerprint), or the saved split would name other products."""
    train_dir = Path(training["data_dir"])
    if not train_dir.is_dir():
        raise NotFound(f"the bundle's training folder {train_dir} is gone: k-NN and the baseline need it")
    products = load_products(train_dir)
    if fingerprint(products) != training["data_fingerprint"]:
        raise InvalidInput("data", f"{train_dir} changed since training (fingerprint differs); "
                                   "its saved split no longer describes it")
    split = training["split"]
    refitted = training.get("trained_on", {}).get("refit_on_validation", False)
    learnt = select(products, split["train"] + (split["val"] if refitted else []))
    return products, learnt, select(products, split["val"])


def evaluate(bundle_dir: str | Path, data_dir: str | Path | None = None, out_dir: str | Path | None = None,
             device: str | None = None, batch_size: int | None = None) -> dict:
    """Score every method on the same test products; write eval.json, per-class report, confusion matrix.

    Returns the eval.json content. `out_dir` defaults to `<bundle>/eval`. On the bundle's own split the
    test weighted F1 of each method is also recorded in the bundle's `metrics`.

    A bundle, training folder or `data_dir` in the object store (s3://) is read from its cached copy; such a
    bundle is not rewritten (the cache is not the bundle), and `out_dir` then defaults to `./eval/<bundle name>`.
    """
    from shopclip.model.bundle import BundleEmbedder, load_bundle, load_classifier
    from shopclip.objectstore import is_s3, name_of
    from shopclip.staging import local_copy, resolve_bundle

    spec = str(bundle_dir)
    remote = is_s3(spec)
    bundle_dir = resolve_bundle(spec)
    model, bundle_config = load_bundle(bundle_dir, device=device)
    embedder = BundleEmbedder(model, bundle_config, source=spec,
                              classifier=load_classifier(bundle_dir, bundle_config))
    torch_device = next(model.parameters()).device
    batch_size = batch_size or TrainConfig().embed_batch_for(torch_device)
    training = _training_metadata(bundle_config, bundle_dir)
    if is_s3(str(training.get("data_dir", ""))):
        training = {**training, "data_dir": str(local_copy(training["data_dir"]))}
    if data_dir is not None and is_s3(str(data_dir)):
        data_dir = local_copy(str(data_dir))
    codes = list(model.codes)
    sets = evaluation_sets(training, data_dir, codes)
    test_inputs = ProductInputs(sets.test, codes)
    emb = {name: _embed_all(model, ProductInputs(products, codes), torch_device, batch_size, name)
           for name, products in (("train", sets.train), ("test", sets.test))}
    reference_codes = np.array([p.prdtypecode for p in sets.train])
    knn = embedder.knn
    probs = _method_probs(emb["test"], emb["train"].fused, reference_codes, codes, knn, sets)
    probs["classify"] = classify_products(embedder, sets.test, emb["train"].fused, reference_codes)
    labels = test_inputs.labels.numpy()
    report = {
        "bundle": spec if remote else str(Path(bundle_dir).resolve()), "test_source": sets.source,
        "n_test": len(sets.test),
        "excluded_seen_in_training": sets.excluded_seen, "excluded_unknown_code": sets.excluded_unknown_code,
        "n_reference": len(sets.train), "knn": knn.to_dict(),
        "methods": {m: scores(labels, probs[m]) for m in METHODS},
        "by_modality": _by_modality(sets.test, labels, probs),
        "calibration_classify": calibration(labels, probs["classify"]),
    }
    if sets.own_split and not remote:
        test_f1 = {m: report["methods"][m]["weighted_f1"] for m in METHODS}
        _update_bundle_config(bundle_dir, metrics={**bundle_config.get("metrics", {}), "test_weighted_f1": test_f1})
    out = Path(out_dir) if out_dir else Path("eval") / name_of(spec) if remote else Path(bundle_dir) / "eval"
    _write_outputs(out, report, labels, probs["classify"], codes)
    print(format_table(report))
    return report


def _training_metadata(bundle_config: dict, bundle_dir: str | Path) -> dict:
    training = bundle_config.get("training")
    if not training or "split" not in training:
        raise InvalidInput("bundle", f"{bundle_dir} has no training split: was it written by `shopclip train`?")
    return training


def _embed_all(model, inputs: ProductInputs, device: torch.device, batch_size: int, name: str) -> Embeddings:
    return embed(model, inputs, torch.arange(len(inputs)), device, cache=None, batch_size=batch_size,
                 desc=f"embedding {name}")


def _update_bundle_config(bundle_dir: str | Path, **entries: object) -> None:
    """Rewrite top-level entries of the bundle's config.json (weights and fingerprint untouched)."""
    from shopclip.model.bundle import CONFIG_FILE, read_bundle_config, write_json_atomically

    config = read_bundle_config(bundle_dir)
    config.update(entries)
    write_json_atomically(Path(bundle_dir) / CONFIG_FILE, config)


def _method_probs(test: Embeddings, references: np.ndarray, reference_codes: np.ndarray, codes: list[int],
                  knn: KnnParams, sets: EvaluationSets) -> dict[str, np.ndarray]:
    baseline = TfidfSvcBaseline(codes).fit(sets.train)
    indices, sims = nearest(test.fused, references, knn.k)
    knn_probs = knn_probabilities(indices, sims, reference_codes, codes, knn.k, knn.temperature)
    return {"tfidf_svc": baseline.scores(sets.test), "text_head": test.probs_text, "image_head": test.probs_image,
            "fused_head": test.probs_fused, "knn": knn_probs}


def classify_products(embedder, products: list[SourceRow], references: np.ndarray, reference_codes: np.ndarray,
                      batch_size: int = 32) -> np.ndarray:
    """What the server answers for these products: one forward pass from the raw product, exact search over
    `references` (a flat index), then `classify_with_neighbors`, the arithmetic Engine._classify runs."""
    from shopclip.model.embedder import classify_with_neighbors, knn_params
    from shopclip.model.knn import exact_search
    from shopclip.training.data import product_input

    references = np.asarray(references, dtype=np.float32)
    out = []
    for start in range(0, len(products), batch_size):
        encoded = embedder.encode([product_input(p) for p in products[start:start + batch_size]])
        scores, rows = exact_search(encoded.vectors, references, knn_params(embedder).k)
        out.append(classify_with_neighbors(embedder, encoded, reference_codes[rows], scores))
    return np.concatenate(out) if out else np.zeros((0, len(embedder.codes)), dtype=np.float32)


def _by_modality(test: list[SourceRow], labels: np.ndarray, probs: dict[str, np.ndarray]) -> dict:
    """The same scores on the test products that have text+image, text only, image only."""
    kinds = np.array([(has_text(p), has_image(p)) for p in test], dtype=bool).reshape(-1, 2)
    out = {}
    for subset, wanted in SUBSETS.items():
        mask = (kinds == np.array(wanted)).all(axis=1)
        if mask.any():
            out[subset] = {m: scores(labels[mask], probs[m][mask]) for m in METHODS}
    return out


def format_table(report: dict) -> str:
    header = f"{'method':<32}{'weighted F1':>12}{'macro F1':>10}{'accuracy':>10}{'top-3':>8}{'n':>7}"
    lines = [f"test products: {report['n_test']} from {report['test_source']}; k-NN {report['knn']}", header,
             "-" * len(header)]
    for method in METHODS:
        s = report["methods"][method]
        lines.append(f"{LABELS[method]:<32}{s['weighted_f1']:>12.4f}{s['macro_f1']:>10.4f}{s['accuracy']:>10.4f}"
                     f"{s['top3_accuracy']:>8.4f}{s['n']:>7d}")
    if "calibration_classify" in report:
        lines += ["", *_calibration_lines(report["calibration_classify"])]
    return "\n".join(lines)


def _calibration_lines(cal: dict) -> list[str]:
    """What the abstain threshold of `serve` would do with these probabilities."""
    def answered(threshold: str, figures: dict) -> str:
        accuracy = figures["accuracy_answered"]
        return f"<{threshold}: answers {figures['answered']:.0%}" + (
            f" at {accuracy:.1%} accuracy" if accuracy is not None else "")

    return [f"Classify calibration: mean confidence {cal['mean_confidence']:.3f} vs accuracy "
            f"{cal['accuracy']:.3f}, ECE {cal['ece']:.3f}",
            "abstain threshold " + "  ".join(answered(t, a) for t, a in cal["abstain"].items())]


def _write_outputs(out: Path, report: dict, labels: np.ndarray, probs: np.ndarray, codes: list[int]) -> None:
    """eval.json, per_class.txt (Classify) and confusion_matrix.png (Classify, row-normalised)."""
    from sklearn.metrics import classification_report, confusion_matrix

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    predicted = probs.argmax(axis=1)
    present = sorted(set(labels.tolist()) | set(predicted.tolist()))
    names = [str(codes[i]) for i in present]
    (out / "per_class.txt").write_text(classification_report(labels, predicted, labels=present,
                                                             target_names=names, zero_division=0, digits=3))
    matrix = confusion_matrix(labels, predicted, labels=present, normalize="true")
    _plot_confusion(matrix, names, out / "confusion_matrix.png")


def _plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(40.0, max(6.0, 0.35 * len(names)))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    if len(names) <= 60:  # beyond that tick labels are unreadable; the matrix still shows the pattern
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted prdtypecode")
    ax.set_ylabel("true prdtypecode")
    ax.set_title("Classify, rows normalised")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

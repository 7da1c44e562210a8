"""Accuracy benchmark (issue 9): stratified k-fold cross-validation of Classify against simple ensembles.

In one run, on the same folds (by product, stratified by prdtypecode, seeded; every kind of row), each
method learns from the fold's training products and is scored on its held-out products:

- TF-IDF (word 1-2 + char_wb 2-5) + LinearSVC (C=0.5), the reference text baseline;
- frozen USE-multilingual + logistic regression; frozen multilingual-e5-small (full text) + logistic regression;
- the average of those three probabilities (the SVC calibrated by scikit-learn's CalibratedClassifierCV);
- frozen EfficientNet-Lite0 at 224 px (white borders cropped) + logistic regression, on products with an image,
  and the same over the image trunks of `shopclip train`'s default model (Lite0 at 288 px + Lite2 at 320 px);
- "simple ensemble": the three-model average where there is text, the image model for image-only products;
- shopclip: `shopclip train`'s defaults on the fold's training products, then exactly what the server
  computes for each held-out product: one forward pass through the bundle, exact search over the fold's
  training products embedded by the same bundle (the index a server would load), the k-NN vote and the
  bundle's classifier; and the same model with the image withheld from text+image products.

Weighted F1 (the challenge metric) and macro F1 are printed by kind of row (text+image, text only, image only,
with text, all), with the calibration of shopclip's probabilities (ECE, answered share and accuracy at the
server's default abstain threshold). Frozen features are cached under --cache (per product, keyed by model
config and code), so a second run, or the folds after the first, skip the towers.

Every method's held-out probabilities are kept beside accuracy.json (predictions.npz), so a candidate can be
compared product by product with another run over the same folds (--compare): the difference of weighted F1
with a bootstrap interval, and the products it fixes and breaks. Differences of a few tenths of a point are
within what 1,000 products can tell apart; the interval says which are.

    python bench/accuracy.py                     # 5 folds over ../shared/data (about an hour on 2 cores)
    python bench/accuracy.py --folds 2           # a quicker look
    python bench/accuracy.py --methods shopclip --e5-max-tokens 40 --out runs/bench-t40 \
        --compare runs/bench-accuracy/predictions.npz    # a candidate, paired with the default's run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from shopclip.model.precision import PRECISIONS

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
KINDS = ("text+image", "text only", "image only")
COLUMNS = (*KINDS, "with text", "all")
ABSTAIN_THRESHOLD = 0.5
"""The server's default `--abstain-threshold`."""
PREDICTIONS = "predictions.npz"
"""Beside accuracy.json: every method's held-out probabilities per product, for paired comparisons (--compare)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    from shopclip.training.data import load_products

    started = time.monotonic()
    products = load_products(args.data)
    codes = sorted({p.prdtypecode for p in products})
    labels = np.searchsorted(codes, [p.prdtypecode for p in products])
    kinds = np.array([kind_of(p) for p in products])
    folds = make_folds(labels, args.folds, args.seed)
    productids = [p.productid for p in products]
    reference = load_reference(Path(args.compare), productids, labels) if args.compare else None
    features = baseline_features(products, Path(args.cache))
    methods = [m for m in args.methods.split(",") if m]
    scores: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(products)), test)
        print(f"fold {f + 1}/{len(folds)}: {len(train)} training, {len(test)} held-out products", flush=True)
        for name, probs in fold_baselines(products, features, labels, len(codes), train, test, methods).items():
            scores.setdefault(name, np.zeros((len(products), len(codes))))[test] = probs
        if "shopclip" in methods:
            fold_out = Path(args.out) / f"fold{f + 1}"
            for name, probs in fold_shopclip(products, codes, train, test, fold_out, args).items():
                scores.setdefault(name, np.zeros((len(products), len(codes))))[test] = probs
    report = build_report(scores, labels, kinds, codes, extra)
    report.update({"data": str(Path(args.data).resolve()), "folds": args.folds, "seed": args.seed,
                   "products": len(products), "kinds": {k: int((kinds == k).sum()) for k in KINDS},
                   "seconds": round(time.monotonic() - started, 1)})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "accuracy.json").write_text(json.dumps(report, indent=2))
    save_predictions(Path(args.out) / PREDICTIONS, productids, labels, kinds, scores)
    print(format_report(report))
    if reference is not None:
        print(format_comparison(paired_comparison(scores, labels, kinds, productids, reference), args.compare))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled folder (default: ../shared/data)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds (training keeps its own default)")
    parser.add_argument("--cache", default="runs/bench-cache", help="frozen features, per product")
    parser.add_argument("--out", default="runs/bench-accuracy", help="fold bundles and accuracy.json")
    parser.add_argument("--methods", default="tfidf_svc,use_lr,e5_lr,avg3,image_lr,image_default_lr,"
                                             "simple_ensemble,shopclip",
                        help="comma-separated subset of the methods")
    parser.add_argument("--epochs", type=int, default=None, help="override `shopclip train`'s epochs (quick looks)")
    parser.add_argument("--e5-max-tokens", type=int, default=None,
                        help="a candidate: shopclip with the e5 tower reading this many tokens (default: the model's)")
    parser.add_argument("--tower-precision", choices=PRECISIONS, default=None,
                        help="a candidate: shopclip with its text towers in this precision (default: the model's)")
    parser.add_argument("--reuse-bundles", action="store_true",
                        help="classify with a fold's bundle already under --out when it learnt from exactly that "
                             "fold's training products with the same model and training settings, instead of "
                             "training it again")
    parser.add_argument("--compare", metavar="PREDICTIONS",
                        help=f"another run's {PREDICTIONS} (same folds): paired differences with this run")
    return parser.parse_args(argv)


def kind_of(product) -> str:
    from shopclip.training.data import has_image, has_text

    text, image = has_text(product), has_image(product)
    return "text+image" if text and image else "text only" if text else "image only"


def make_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out row indices of each fold: stratified by code, shuffled with `seed`."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]


# -- baselines ---------------------------------------------------------------------------------------------

def baseline_features(products, cache: Path) -> dict[str, np.ndarray]:
    """Frozen outputs of every product, rows in `products` order (zeros where the modality is missing), through
    shopclip's own towers and cache: USE, e5 (whole text, 512 tokens), EfficientNet-Lite0 at 224 px (the
    reference image baseline) and the image trunks of `shopclip train`'s default model ("image_default", which
    the folds' training then reads from the same cache)."""
    import torch

    from shopclip.model.clip import IMAGE_FEATURES, build_model
    from shopclip.model.config import ModelConfig
    from shopclip.training.encoding import FeatureStore, ProductInputs, TowerCache, feature_signatures

    torch.set_num_threads(max(1, torch.get_num_threads()))
    codes = sorted({p.prdtypecode for p in products})

    def frozen_outputs(config: ModelConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        model = build_model(config).eval()
        model.freeze_towers()
        inputs = ProductInputs(products, model.codes)
        tower_cache = TowerCache.build(model, inputs, torch.device("cpu"), 16, 1,
                                       FeatureStore(cache, feature_signatures(model)))
        return tower_cache.features(torch.arange(len(products))), tower_cache.image_ok.numpy()

    # The off-the-shelf towers as their authors ship them: "auto" (bfloat16 here, within cosine 0.9999 of float32),
    # so a change of shopclip's default precision moves shopclip's row, never the baselines it is measured against.
    reference, image_ok = frozen_outputs(ModelConfig(text_towers=["use", "e5"], e5_max_tokens=512, image_size=224,
                                                     image_extra_trunks=[], codes=codes, tower_precision="auto"))
    default, _ = frozen_outputs(ModelConfig(text_towers=["use"], e5_tuned_layers=0, codes=codes))
    return {"use": reference["use"], "e5": reference["e5"], "image": reference[IMAGE_FEATURES],
            "image_default": default[IMAGE_FEATURES], "image_ok": image_ok}


def fold_baselines(products, features: dict[str, np.ndarray], labels: np.ndarray, num_classes: int,
                   train: np.ndarray, test: np.ndarray, methods: list[str]) -> dict[str, np.ndarray]:
    """Probabilities (len(test), classes) of each baseline; rows a method cannot answer are NaN."""
    from shopclip.model.text import product_text
    from shopclip.training.data import has_text

    text = np.array([has_text(p) for p in products])
    texts = np.array([product_text(p.designation, p.description) if t else "" for p, t in zip(products, text)],
                     dtype=object)
    image = features["image_ok"]
    out: dict[str, np.ndarray] = {}
    wanted = set(methods)
    if wanted & {"avg3", "simple_ensemble"}:
        wanted |= {"tfidf_cal", "use_lr", "e5_lr"}
    if "simple_ensemble" in wanted:
        wanted.add("image_lr")
    if "tfidf_svc" in wanted:
        out["tfidf_svc"] = _on_rows(test, text, num_classes, lambda tr, te: _svc(texts, labels, tr, te, num_classes),
                                    train)
    if "tfidf_cal" in wanted:
        out["tfidf_cal"] = _on_rows(test, text, num_classes,
                                    lambda tr, te: _svc(texts, labels, tr, te, num_classes, calibrated=True), train)
    for name, key, c, mask in (("use_lr", "use", 10.0, text), ("e5_lr", "e5", 10.0, text),
                               ("image_lr", "image", 1.0, image), ("image_default_lr", "image_default", 3.0, image)):
        if name in wanted:
            out[name] = _on_rows(test, mask, num_classes,
                                 lambda tr, te, key=key, c=c: _lr(features[key], labels, tr, te, num_classes, c),
                                 train)
    if "avg3" in wanted:
        out["avg3"] = (out["tfidf_cal"] + out["use_lr"] + out["e5_lr"]) / 3
    if "simple_ensemble" in wanted:
        out["simple_ensemble"] = np.where(text[test][:, None], out["avg3"], out["image_lr"])
    return {name: probs for name, probs in out.items() if name in methods}


def _on_rows(test: np.ndarray, mask: np.ndarray, num_classes: int, fit_predict, train: np.ndarray) -> np.ndarray:
    """Fit on the training rows that have the modality, predict the test rows that have it; NaN elsewhere."""
    out = np.full((len(test), num_classes), np.nan)
    rows = mask[test]
    out[rows] = fit_predict(train[mask[train]], test[rows])
    return out


def _svc(texts: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, num_classes: int,
         calibrated: bool = False) -> np.ndarray:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union
    from sklearn.svm import LinearSVC

    vectoriser = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    x_train, x_test = vectoriser.fit_transform(texts[train]), vectoriser.transform(texts[test])
    model = CalibratedClassifierCV(LinearSVC(C=0.5), cv=3) if calibrated else LinearSVC(C=0.5)
    model.fit(x_train, labels[train])
    values = model.predict_proba(x_test) if calibrated else model.decision_function(x_test)
    return _spread(values, model.classes_, num_classes, fill=0.0 if calibrated else -np.inf)


def _lr(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, num_classes: int,
        c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    def normalised(rows: np.ndarray) -> np.ndarray:
        x = features[rows].astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    model = LogisticRegression(C=c, max_iter=3000).fit(normalised(train), labels[train])
    return _spread(model.predict_proba(normalised(test)), model.classes_, num_classes, fill=0.0)


def _spread(values: np.ndarray, classes: np.ndarray, num_classes: int, fill: float) -> np.ndarray:
    out = np.full((len(values), num_classes), fill)
    out[:, classes] = values
    return out


# -- shopclip ----------------------------------------------------------------------------------------------

def fold_shopclip(products, codes: list[int], train: np.ndarray, test: np.ndarray, out: Path,
                  args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Train with `shopclip train`'s defaults on the fold's training products, then Classify the held-out ones
    as the server does (vote over the fold's training products, embedded by the bundle)."""
    from tqdm import tqdm

    from shopclip.model.bundle import load_bundle_embedder
    from shopclip.model.config import ModelConfig
    from shopclip.training.config import TrainConfig
    from shopclip.training.data import product_input
    from shopclip.training.evaluate import classify_products
    from shopclip.training.train import train_products

    config = TrainConfig(feature_cache=args.cache)
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    candidate = {"e5_max_tokens": args.e5_max_tokens, "tower_precision": args.tower_precision}
    model_config = ModelConfig(**{field: value for field, value in candidate.items() if value is not None})
    started = time.monotonic()
    if args.reuse_bundles and reusable_bundle(out, [products[i].productid for i in train], model_config, config):
        print(f"  shopclip: the bundle under {out} learnt from this fold with these settings; not trained again")
    else:
        train_products([products[i] for i in train], out, model_config=model_config, config=config,
                       source=f"{args.data} fold")
        print(f"  shopclip trained in {time.monotonic() - started:.0f} s", flush=True)
    embedder = load_bundle_embedder(out, device="cpu")
    references = np.concatenate([embedder.embed([product_input(products[i]) for i in train[start:start + 32]])
                                 for start in tqdm(range(0, len(train), 32), desc="  embedding references",
                                                   leave=False)])
    reference_codes = np.array([products[i].prdtypecode for i in train])
    held_out = [products[i] for i in test]
    probs = classify_products(embedder, held_out, references, reference_codes)
    rows = [i for i, product in enumerate(held_out) if kind_of(product) == "text+image"]
    no_image = np.full_like(probs, np.nan)
    if rows:
        no_image[rows] = classify_products(embedder, [replace(held_out[i], image_path=None) for i in rows],
                                           references, reference_codes)
    return {"shopclip": _on_codes(probs, embedder.codes, codes),
            "shopclip_image_withheld": _on_codes(no_image, embedder.codes, codes)}


def reusable_bundle(out: Path, productids: list[int], model_config, train_config) -> bool:
    """Whether `out` holds a bundle that learnt from exactly `productids` with these model and training settings
    (the codes aside, which follow the products). Code changes since it was trained are not seen: reuse is for
    classifying again with the same checkout, e.g. to write the predictions of a run from before they were kept."""
    from shopclip.errors import NotFound
    from shopclip.model.bundle import read_bundle_config
    from shopclip.training.train import productids_digest

    try:
        bundle = read_bundle_config(out)
        model, training = bundle["model"], bundle["training"]
    except (NotFound, ValueError, KeyError):
        return False
    return (training.get("trained_on", {}).get("productids_sha256") == productids_digest(sorted(productids))
            and _holds(model, {k: v for k, v in _as_json(model_config).items() if k != "codes"})
            and _holds(training.get("config", {}), _as_json(train_config)))


def _as_json(config) -> dict:
    return json.loads(json.dumps(asdict(config)))


def _holds(recorded: dict, wanted: dict) -> bool:
    """Every wanted setting recorded with the same value (what a bundle records beside them is not compared)."""
    return all(key in recorded and recorded[key] == value for key, value in wanted.items())


def _on_codes(probs: np.ndarray, model_codes: list[int], codes: list[int]) -> np.ndarray:
    """Columns in the benchmark's code order (a fold's model knows the codes of its training products)."""
    out = np.zeros((len(probs), len(codes)))
    out[:, np.searchsorted(codes, model_codes)] = probs
    out[np.isnan(probs).any(axis=1)] = np.nan
    return out


# -- report ------------------------------------------------------------------------------------------------

LABELS = {"tfidf_svc": "TF-IDF + LinearSVC", "use_lr": "frozen USE + LR", "e5_lr": "frozen e5-small + LR",
          "avg3": "average of the three", "image_lr": "frozen EfficientNet-Lite0 + LR",
          "image_default_lr": "frozen shopclip image trunks + LR",
          "simple_ensemble": "simple ensemble (avg3 / image LR)", "shopclip": "shopclip Classify",
          "shopclip_image_withheld": "shopclip, image withheld"}


def _column_masks(kinds: np.ndarray) -> dict[str, np.ndarray]:
    """The report's columns: each kind of row, then products with text, then all."""
    masks = {k: kinds == k for k in KINDS}
    masks["with text"] = kinds != "image only"
    masks["all"] = np.ones(len(kinds), dtype=bool)
    return masks


def build_report(scores: dict[str, np.ndarray], labels: np.ndarray, kinds: np.ndarray, codes: list[int],
                 extra: dict) -> dict:
    from sklearn.metrics import f1_score

    from shopclip.training.metrics import calibration

    table = {}
    for name, probs in scores.items():
        answered = ~np.isnan(probs).any(axis=1)
        row = {}
        for column, mask in _column_masks(kinds).items():
            rows = mask & answered
            if rows.sum() == 0 or rows.sum() < mask.sum():  # a method that cannot answer every row is left out
                continue
            predicted = probs[rows].argmax(axis=1)
            row[column] = {"weighted_f1": float(f1_score(labels[rows], predicted, average="weighted")),
                           "macro_f1": float(f1_score(labels[rows], predicted, average="macro")),
                           "n": int(rows.sum())}
        table[name] = row
    report = {"methods": table, **extra}
    if "shopclip" in scores:
        calibrated = calibration(labels, scores["shopclip"])
        report["shopclip_calibration"] = {"ece": calibrated["ece"],
                                          "default_threshold": calibrated["abstain"][f"{ABSTAIN_THRESHOLD:.1f}"]}
    return report


def save_predictions(path: Path, productids: list[int], labels: np.ndarray, kinds: np.ndarray,
                     scores: dict[str, np.ndarray]) -> None:
    """Every method's held-out probabilities (rows: products, NaN where a method does not answer)."""
    np.savez_compressed(path, productids=np.asarray(productids), labels=labels, kinds=kinds,
                        **{f"method:{name}": probs for name, probs in scores.items()})


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def load_reference(path: Path, productids: list[int], labels: np.ndarray) -> dict[str, np.ndarray]:
    """--compare's run, checked before an hour of folds: it must have scored these products with these labels.
    Exits with a message naming the file otherwise."""
    try:
        reference = load_predictions(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--compare {path}: cannot read it ({exc})") from None
    if not _same_products(reference, productids, labels):
        raise SystemExit(f"--compare {path}: that run scored other products or labels; compare runs over the "
                         "same data")
    return reference


def _same_products(reference: dict[str, np.ndarray], productids: list[int], labels: np.ndarray) -> bool:
    return (np.array_equal(reference.get("productids"), np.asarray(productids))
            and np.array_equal(reference.get("labels"), labels))


def paired_comparison(scores: dict[str, np.ndarray], labels: np.ndarray, kinds: np.ndarray, productids: list[int],
                      reference: dict[str, np.ndarray], draws: int = 1000, seed: int = 0) -> dict:
    """Per method in both runs and per kind of row: weighted F1 of this run minus the reference's on the same
    products, a 95% bootstrap interval of that difference (products resampled, both runs scored on each draw),
    and how many products this run gets right that the reference gets wrong ("fixed") and the reverse.

    Raises ValueError when the runs did not score the same products with the same labels (other data or folds
    would make the difference meaningless)."""
    from sklearn.metrics import f1_score

    if not _same_products(reference, productids, labels):
        raise ValueError("--compare: the reference run scored other products or labels; compare runs over the "
                         "same data")
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for name, probs in scores.items():
        theirs = reference.get(f"method:{name}")
        if theirs is None:
            continue
        for column, mask in _column_masks(kinds).items():
            rows = np.flatnonzero(mask & ~np.isnan(probs).any(axis=1) & ~np.isnan(theirs).any(axis=1))
            if len(rows) < mask.sum() or len(rows) == 0:
                continue
            ours_pred, theirs_pred, truth = probs[rows].argmax(1), theirs[rows].argmax(1), labels[rows]

            def delta(sample: np.ndarray) -> float:
                return (f1_score(truth[sample], ours_pred[sample], average="weighted")
                        - f1_score(truth[sample], theirs_pred[sample], average="weighted"))

            boot = [delta(rng.integers(0, len(rows), len(rows))) for _ in range(draws)]
            right, was_right = ours_pred == truth, theirs_pred == truth
            out.setdefault(name, {})[column] = {
                "delta": float(delta(np.arange(len(rows)))), "low": float(np.percentile(boot, 2.5)),
                "high": float(np.percentile(boot, 97.5)), "fixed": int((right & ~was_right).sum()),
                "broken": int((~right & was_right).sum()), "n": int(len(rows))}
    return out


def format_comparison(comparison: dict, reference: str) -> str:
    lines = [f"\npaired with {reference}: weighted F1 of this run minus the reference's [95% bootstrap interval]; "
             "products fixed / broken"]
    if not comparison:
        lines.append("(no method scored every product in both runs)")
    for name, columns in comparison.items():
        for column, c in columns.items():
            lines.append(f"{LABELS.get(name, name):<36}{column:>12}  {c['delta']:+.4f} [{c['low']:+.4f}, "
                         f"{c['high']:+.4f}]  {c['fixed']} / {c['broken']} of {c['n']}")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    header = f"{'method':<36}" + "".join(f"{c:>14}" for c in COLUMNS)
    lines = [f"{report['folds']}-fold cross-validation over {report['products']} products "
             f"({', '.join(f'{k} {n}' for k, n in report['kinds'].items())}), seed {report['seed']}: "
             "weighted F1 (macro F1)", header, "-" * len(header)]
    for name, row in report["methods"].items():
        cells = [f"{row[c]['weighted_f1']:.3f} ({row[c]['macro_f1']:.3f})" if c in row else "—" for c in COLUMNS]
        lines.append(f"{LABELS.get(name, name):<36}" + "".join(f"{cell:>14}" for cell in cells))
    if "shopclip_calibration" in report:
        cal = report["shopclip_calibration"]
        answered = cal["default_threshold"]
        lines.append(f"\nshopclip calibration: ECE {cal['ece']:.3f}; at the default abstain threshold "
                     f"{ABSTAIN_THRESHOLD} it answers {answered['answered']:.0%} of products at "
                     f"{answered['accuracy_answered']:.1%} accuracy")
    methods = report["methods"]
    if "shopclip" in methods and "avg3" in methods and "with text" in methods["avg3"]:
        margin = methods["shopclip"]["with text"]["weighted_f1"] - methods["avg3"]["with text"]["weighted_f1"]
        lines.append(f"margin over the three-model average on products with text: {margin:+.3f} (target +0.030)")
    lines.append(f"({report['seconds']:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""bench/accuracy.py's bookkeeping: the predictions it keeps, the paired comparison of two runs, and when a fold's
bundle may be reused (the k-fold run itself takes an hour on real data and is run by hand)."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from shopclip.model.bundle import BUNDLE_FORMAT, MODEL_FILE
from shopclip.model.config import ModelConfig
from shopclip.training.config import TrainConfig
from shopclip.training.train import productids_digest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _one_hot(predicted: np.ndarray, classes: int) -> np.ndarray:
    probs = np.full((len(predicted), classes), 0.01)
    probs[np.arange(len(predicted)), predicted] = 0.9
    return probs


@pytest.fixture
def runs():
    """Labels of 60 products (3 codes, every kind of row); a reference right on 40 of them and a candidate that
    also gets 5 of the reference's mistakes right and loses 1 of its hits."""
    rng = np.random.default_rng(3)
    labels = np.arange(60) % 3
    kinds = np.array(["text+image", "text only", "image only"] * 20)
    reference = labels.copy()
    wrong = rng.choice(60, 20, replace=False)
    reference[wrong] = (labels[wrong] + 1) % 3
    candidate = reference.copy()
    candidate[wrong[:5]] = labels[wrong[:5]]
    hit = np.setdiff1d(np.arange(60), wrong)[0]
    candidate[hit] = (labels[hit] + 2) % 3
    return labels, kinds, _one_hot(reference, 3), _one_hot(candidate, 3)


def test_predictions_round_trip_with_unanswered_rows(bench, tmp_path, runs):
    labels, kinds, reference, _ = runs
    withheld = np.full_like(reference, np.nan)
    withheld[kinds == "text+image"] = reference[kinds == "text+image"]
    path = tmp_path / bench.PREDICTIONS
    bench.save_predictions(path, list(range(100, 160)), labels, kinds, {"shopclip": reference, "withheld": withheld})
    saved = bench.load_predictions(path)
    assert saved["productids"].tolist() == list(range(100, 160))
    assert saved["kinds"].tolist() == kinds.tolist()
    np.testing.assert_array_equal(saved["method:shopclip"], reference)
    np.testing.assert_array_equal(np.isnan(saved["method:withheld"]), np.isnan(withheld))


def test_paired_comparison_counts_fixed_and_broken_products(bench, tmp_path, runs):
    labels, kinds, reference, candidate = runs
    ids = list(range(60))
    path = tmp_path / bench.PREDICTIONS
    bench.save_predictions(path, ids, labels, kinds, {"shopclip": reference})
    comparison = bench.paired_comparison({"shopclip": candidate}, labels, kinds, ids, bench.load_predictions(path),
                                         draws=200)
    everything = comparison["shopclip"]["all"]
    assert (everything["fixed"], everything["broken"], everything["n"]) == (5, 1, 60)
    assert everything["delta"] > 0
    assert everything["low"] <= everything["delta"] <= everything["high"]
    by_kind = [comparison["shopclip"][kind] for kind in bench.KINDS]
    assert sum(c["fixed"] for c in by_kind) == 5 and sum(c["broken"] for c in by_kind) == 1
    same = bench.paired_comparison({"shopclip": reference}, labels, kinds, ids, bench.load_predictions(path),
                                   draws=50)["shopclip"]["all"]
    assert (same["delta"], same["low"], same["high"], same["fixed"], same["broken"]) == (0, 0, 0, 0, 0)
    assert "+0." in bench.format_comparison(comparison, str(path))
    assert "no method" in bench.format_comparison({}, str(path))


def test_paired_comparison_refuses_runs_over_other_products(bench, tmp_path, runs):
    labels, kinds, reference, candidate = runs
    path = tmp_path / bench.PREDICTIONS
    bench.save_predictions(path, list(range(1, 61)), labels, kinds, {"shopclip": reference})
    with pytest.raises(ValueError, match="other products"):
        bench.paired_comparison({"shopclip": candidate}, labels, kinds, list(range(60)), bench.load_predictions(path))


def _bundle(folder: Path, productids: list[int], model: ModelConfig, training: TrainConfig) -> Path:
    """What reuse reads of a bundle: its config.json, beside a weights file."""
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(b"")
    recorded_training = {**json.loads(json.dumps(asdict(training))), "split_fractions": [0.15, 0.0]}
    (folder / "config.json").write_text(json.dumps({
        "format": BUNDLE_FORMAT,
        "model": {**json.loads(json.dumps(asdict(model))), "codes": [10, 40]},
        "training": {"config": recorded_training,
                     "trained_on": {"productids_sha256": productids_digest(sorted(productids))}}}))
    return folder


def test_a_fold_bundle_is_reused_only_for_the_same_products_and_settings(bench, tmp_path):
    model, training = ModelConfig(), TrainConfig(feature_cache="runs/bench-cache")
    folder = _bundle(tmp_path / "fold1", [5, 3, 9], model, training)
    assert bench.reusable_bundle(folder, [9, 5, 3], model, training)
    assert not bench.reusable_bundle(folder, [9, 5, 4], model, training)
    assert not bench.reusable_bundle(folder, [9, 5, 3], replace(model, e5_max_tokens=model.e5_max_tokens + 6),
                                     training)
    assert not bench.reusable_bundle(folder, [9, 5, 3], model, replace(training, epochs=training.epochs + 1))
    assert not bench.reusable_bundle(tmp_path / "nothing", [9, 5, 3], model, training)
    (folder / MODEL_FILE).unlink()  # a fold whose training stopped before it wrote its weights
    assert not bench.reusable_bundle(folder, [9, 5, 3], model, training)
    (folder / MODEL_FILE).write_bytes(b"")
    (folder / "config.json").write_text("{not json")
    assert not bench.reusable_bundle(folder, [9, 5, 3], model, training)


def test_compare_refuses_another_runs_products_before_the_folds_start(bench, tmp_path, runs):
    labels, kinds, reference, _ = runs
    path = tmp_path / bench.PREDICTIONS
    bench.save_predictions(path, list(range(60)), labels, kinds, {"shopclip": reference})
    assert set(bench.load_reference(path, list(range(60)), labels)) >= {"productids", "method:shopclip"}
    with pytest.raises(SystemExit, match="other products or labels"):
        bench.load_reference(path, list(range(60)), (labels + 1) % 3)
    with pytest.raises(SystemExit, match="cannot read"):
        bench.load_reference(tmp_path / "missing.npz", list(range(60)), labels)

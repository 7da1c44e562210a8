"""End-to-end: `shopclip train` on 1200+ synthetic classes with a tiny config, an interrupted run resumed,
then `evaluate`.

The catalogue is generated (shared layout): each class has two words of its own, so text is learnable
and neighbours share words; a quarter of the products have an image (class-coloured square). The tiny
model (hashed n-gram tower only, frozen ImageNet EfficientNet-Lite0 on 64-pixel images, 64-d space) keeps
this to about a minute. With one training product per class nothing much is learnt in two epochs: the
1210-class run checks the plumbing at that scale, a 40-class run checks that training learns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from shopclip.cli import main
from shopclip.model.bundle import load_bundle
from shopclip.model.knn import KnnParams
from shopclip.training.metrics import K_GRID
from support.training import NUM_CLASSES, PER_CLASS, TINY_MODEL, write_catalogue


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-epoch run (with a test split) killed during its second selection epoch, then resumed:
    (data folder, bundle)."""
    from shopclip.training.train import Trainer

    root = tmp_path_factory.mktemp("training")
    data, bundle = write_catalogue(root / "data"), root / "bundle"
    common = ["train", "--data", str(data), "--out", str(bundle), *TINY_MODEL, "--batch-size", "64",
              "--lr", "0.05", "--device", "cpu", "--ngram-idf", "--epochs", "2", "--patience", "5",
              "--test-fraction", "0.15"]
    original = Trainer.train_epoch
    calls = []

    def dies_in_epoch_two(self, epoch, total):
        calls.append(epoch)
        if len(calls) == 2:
            raise Interrupted
        return original(self, epoch, total)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", dies_in_epoch_two)
        with pytest.raises(Interrupted):
            main(common)
    assert not (bundle / "config.json").exists() and (bundle / "checkpoint.pt").exists()
    assert main([*common, "--resume"]) == 0
    return data, bundle


def test_bundle_records_split_classes_history_and_tuned_knn(trained: tuple[Path, Path]) -> None:
    data, bundle = trained
    model, config = load_bundle(bundle, device="cpu")
    assert len(model.codes) == NUM_CLASSES
    training = config["training"]
    split = training["split"]
    assert sum(len(ids) for ids in split.values()) == NUM_CLASSES * PER_CLASS
    assert not set(split["train"]) & set(split["test"])
    assert [h["epoch"] for h in training["history"]] == [1, 2]  # epoch 1, then resumed for epoch 2
    assert training["frozen_towers"] is True  # the CPU default
    assert KnnParams.from_dict(config["knn"]) == KnnParams(**config["knn"])
    assert config["knn"]["k"] in K_GRID  # chosen on validation
    learnt = training["trained_on"]
    assert learnt["refit_on_validation"] is True
    assert learnt["products"] == len(split["train"]) + len(split["val"])  # every product but the test split
    assert learnt["epochs"] == max(training["history"], key=lambda h: h["val_weighted_f1"])["epoch"]
    classifier = config["classifier"]
    assert [v["name"] for v in classifier["views"]] == ["tfidf", "image", "image_knn"]
    assert classifier["combiner"]["view_names"] == ["tfidf", "image", "image_knn", "clip"]
    memory = next(v for v in classifier["views"] if v["name"] == "image_knn")
    assert memory["kind"] == "neighbours" and memory["source"] == "image" and memory["k"] == 30
    assert set(classifier["combiner"]["with_knn"]) == {"text", "image_only"}
    idf = model.text_towers["ngram"].idf
    assert idf.min() >= 1.0 and idf.max() > idf.min()  # fitted on the training texts and saved in the bundle


def test_evaluate_scores_every_method_on_the_same_products(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    out = tmp_path / "eval"
    assert main(["evaluate", "--bundle", str(bundle), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "eval.json").read_text())
    methods = report["methods"]
    assert set(methods) == {"tfidf_svc", "text_head", "image_head", "fused_head", "knn", "classify"}
    assert {s["n"] for s in methods.values()} == {report["n_test"]}
    chance = 1 / NUM_CLASSES
    assert methods["tfidf_svc"]["accuracy"] > 0.5  # the class words identify the class
    assert methods["knn"]["accuracy"] > 10 * chance  # neighbours share those words
    assert methods["classify"]["accuracy"] > 0.5  # the sparse view reads the class words
    assert set(report["by_modality"]) == {"text+image", "text only", "image only"}
    assert (out / "per_class.txt").read_text().count("\n") > 100
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    config = json.loads((bundle / "config.json").read_text())
    assert config["metrics"]["test_weighted_f1"]["classify"] == pytest.approx(methods["classify"]["weighted_f1"])


def test_evaluate_on_another_folder_leaves_out_products_seen_in_training(trained: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    data, bundle = trained
    folder = tmp_path / "new"
    folder.mkdir()
    with open(data / "rakuten_text.csv", encoding="utf-8") as f:
        words_of = {int(r["prdtypecode"]): r["designation"].rsplit(" ", 1)[0] for r in csv.DictReader(f)}
    new = [[i, f"{words_of[code]} nouveau", "", 5_000_000 + i, 7_000_000 + i, code]
           for i, code in enumerate(sorted(words_of)[:20])]
    seen = [[20 + i, "déjà vu", "", c * 10 + 1, 1, 10_000 + c] for i, c in enumerate(range(0, 40, 8))]
    with open(folder / "rakuten_text.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["row", "designation", "description", "productid", "imageid", "prdtypecode"],
                                 *new, *seen])
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(folder), "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert report["n_test"] == 20 and report["excluded_seen_in_training"] == 5
    assert report["methods"]["tfidf_svc"]["accuracy"] > 0.5  # the class words are enough


def test_training_learns_the_classes(tmp_path: Path) -> None:
    data, bundle = write_catalogue(tmp_path / "data", num_classes=40, per_class=10), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(bundle), *TINY_MODEL, "--epochs", "6",
                 "--batch-size", "32", "--lr", "0.01", "--device", "cpu", "--test-fraction", "0.15"]) == 0
    config = json.loads((bundle / "config.json").read_text())
    history = [h["val_weighted_f1"] for h in config["training"]["history"]]
    assert max(history) > 0.8 and max(history) > history[0]
    assert main(["evaluate", "--bundle", str(bundle), "--device", "cpu"]) == 0
    methods = json.loads((bundle / "eval" / "eval.json").read_text())["methods"]
    assert methods["fused_head"]["accuracy"] > 0.8 and methods["classify"]["accuracy"] > 0.8


def test_the_default_bundle_learns_from_every_product_and_evaluate_says_so(tmp_path: Path) -> None:
    data, bundle = write_catalogue(tmp_path / "data", num_classes=8, per_class=8), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(bundle), *TINY_MODEL, "--epochs", "1",
                 "--device", "cpu"]) == 0
    config = json.loads((bundle / "config.json").read_text())
    assert config["training"]["split"]["test"] == []
    assert config["training"]["trained_on"]["products"] == 8 * 8
    assert main(["evaluate", "--bundle", str(bundle), "--device", "cpu"]) == 2  # no test split: one-line error


def test_unfrozen_training_decodes_images_every_batch(tmp_path: Path) -> None:
    data, bundle = write_catalogue(tmp_path / "data", num_classes=12, per_class=6), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(bundle), *TINY_MODEL, "--no-image-pretrained",
                 "--no-freeze-towers", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]) == 0
    config = json.loads((bundle / "config.json").read_text())
    assert config["training"]["frozen_towers"] is False
    assert (bundle / "checkpoint.pt").exists()

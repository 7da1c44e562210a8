"""The OCR view end to end: `shopclip train` reads the words printed on the images of products without text,
fits the view, and the bundle's Classify reads them on a new product's image (real Tesseract; CI installs it)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from shopclip.cli import main
from shopclip.errors import InvalidInput
from shopclip.model import load_embedder, ocr
from shopclip.model.preprocess import prepare_image
from shopclip.products import ProductInput
from support.services import service_missing
from support.training import TINY_MODEL, image_index_row, write_tables

CLASSES = {10: ("peluche", "lapin"), 20: ("coque", "silicone"), 30: ("puzzle", "paysage"), 40: ("tasse", "porcelaine")}
TEXT_PRODUCTS, IMAGE_PRODUCTS = 6, 6


def printed(words: str) -> Image.Image:
    """White image with black print only: nothing but the words tells the classes apart."""
    image = Image.new("RGB", (480, 240), "white")
    ImageDraw.Draw(image).text((30, 90), words.upper(), fill="black", font=ImageFont.load_default(size=40))
    return image


def write_catalogue(folder: Path) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    texts, index = [], []
    for c, (code, (first, second)) in enumerate(CLASSES.items()):
        for i in range(TEXT_PRODUCTS):
            texts.append([len(texts), f"{first} {second} modèle {i}", "", 1000 * c + i + 1, 5000 * c + i, code])
        for i in range(IMAGE_PRODUCTS):
            productid, imageid = 1000 * c + 100 + i, 5000 * c + 100 + i
            name = f"image_{imageid}_product_{productid}.jpg"
            printed(f"{first} {second}").save(images / name)
            index.append(image_index_row(name, len(index), productid, imageid, code))
    return write_tables(folder, texts, index)


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ocr.ocr_available():
        service_missing(f"tesseract with French data not found ({ocr.INSTALL_HINT})")
    root = tmp_path_factory.mktemp("ocr")
    data, bundle = write_catalogue(root / "data"), root / "bundle"
    assert main(["train", "--data", str(data), "--out", str(bundle), *TINY_MODEL, "--epochs", "2",
                 "--device", "cpu", "--feature-cache", str(root / "cache")]) == 0
    return bundle


def test_training_fits_the_ocr_view_and_the_bundle_says_which_tesseract_read(bundle: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    assert config["training"]["ocr"] == ocr.tesseract_version()
    views = {view["name"]: view["modality"] for view in config["classifier"]["views"]}
    assert views["ocr"] == "ocr"
    combiner = config["classifier"]["combiner"]
    weights = dict(zip(combiner["view_names"], combiner["without_knn"]["image_only"]))
    assert weights["ocr"] > 0  # validation found the words useful: they are all that tells these classes apart
    cached = list((bundle.parent / "cache").glob("ocr-*.json"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())) == len(CLASSES) * IMAGE_PRODUCTS


def test_classify_reads_the_words_on_a_new_products_image(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shopclip.model.bundle as bundle_module

    embedder = load_embedder(str(bundle), device="cpu")
    products = [ProductInput("", "", jpeg(printed(" ".join(words)))) for words in CLASSES.values()]
    products.append(ProductInput("tasse porcelaine modèle 9", "", jpeg(printed("peluche lapin"))))
    decoded = []
    monkeypatch.setattr(bundle_module, "prepare_image",
                        lambda image, *args: decoded.append(image) or prepare_image(image, *args))
    encoded = embedder.encode(products)
    assert sorted(decoded) == sorted(p.image for p in products)  # once each: the image tower and OCR share it
    assert encoded.views.ocr_texts == [" ".join(words) for words in CLASSES.values()] + [""]  # text: not read
    codes = np.array(embedder.codes)[embedder.classify(encoded, None).argmax(axis=1)]
    assert codes[:len(CLASSES)].tolist() == list(CLASSES)
    assert codes[-1] == 40  # a product with text is classified by its text, the print on its image not read


def test_words_read_ahead_are_the_ones_encode_reads_and_encode_reads_no_others(bundle: Path) -> None:
    embedder = load_embedder(str(bundle), device="cpu")
    image_only = ProductInput("", "", jpeg(printed("coque silicone")))
    with_text = ProductInput("coque", "", jpeg(printed("puzzle paysage")))
    assert embedder.read_words_on_image(image_only, "product.image") == "coque silicone"
    assert embedder.read_words_on_image(with_text, "product.image") is None  # the model reads none there
    with pytest.raises(InvalidInput) as refused:
        embedder.read_words_on_image(ProductInput("", "", b"\xff\xd8 not a jpeg"), "products[3].image")
    assert refused.value.field == "products[3].image"
    encoded = embedder.encode([image_only, image_only, with_text], image_words=["puzzle paysage", None, None])
    assert encoded.views.ocr_texts == ["puzzle paysage", "coque silicone", ""]  # given, read here, not read


def test_a_server_may_leave_image_words_unread(bundle: Path) -> None:
    embedder = load_embedder(str(bundle), device="cpu", read_image_words=False)
    encoded = embedder.encode([ProductInput("", "", jpeg(printed("coque silicone")))])
    assert encoded.views.ocr_texts is None
    probs = embedder.classify(encoded, None)
    assert probs.shape == (1, len(CLASSES)) and np.isclose(probs.sum(), 1.0, atol=1e-5)

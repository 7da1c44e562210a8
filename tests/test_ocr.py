"""Words read on product images (`shopclip.model.ocr`) by the real Tesseract (CI installs it with its French data)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from shopclip.model import ocr
from support.services import service_missing


@pytest.fixture(scope="module", autouse=True)
def tesseract() -> None:
    if not ocr.ocr_available():
        service_missing(f"tesseract with French data not found ({ocr.INSTALL_HINT})")


def printed(*lines: str, size: int = 44) -> Image.Image:
    """A product shot with print on it: black words on white, as a cover or a box shows them."""
    font = ImageFont.load_default(size=size)
    image = Image.new("RGB", (640, 120 + 80 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((40, 60 + 80 * i), line, fill="black", font=font)
    return image


def test_words_printed_on_an_image_are_read_lower_cased() -> None:
    words = ocr.read_image_words(printed("PUZZLE 1000 PIECES", "Chateau de Versailles")).split()
    assert {"puzzle", "chateau", "versailles"} <= set(words)
    assert "1000" not in words  # digits are not words


def test_a_picture_without_print_reads_as_no_words() -> None:
    image = Image.new("RGB", (400, 400), "white")
    ImageDraw.Draw(image).ellipse((80, 80, 320, 320), fill=(200, 40, 40))
    assert ocr.read_image_words(image) == ""


def test_short_runs_and_lone_words_count_as_no_text() -> None:
    assert ocr.words_of("Le 12 x LIVRE\n") == ""  # one word of 3+ letters: a picture read as letters
    assert ocr.words_of("ab, Coffret: 3 DVD — intégrale!") == "coffret dvd intégrale"


def test_many_images_are_read_in_parallel_in_order() -> None:
    images = [printed("Coque silicone"), Image.new("RGB", (300, 300), "white"), printed("Peluche lapin")]
    assert ocr.read_words(images, workers=2) == ["coque silicone", "", "peluche lapin"]
    assert ocr.read_words(["a", "b"], workers=2, prepare=lambda _: None) == ["", ""]  # nothing to read


def test_a_failing_tesseract_gives_no_words_not_an_error(monkeypatch, caplog) -> None:
    monkeypatch.setattr(ocr, "TESSERACT", "false")  # exits 1
    assert ocr.read_image_words(printed("Coque silicone")) == ""
    assert "OCR failed" in caplog.text


def test_without_tesseract_nothing_is_read(monkeypatch) -> None:
    monkeypatch.setattr(ocr, "ocr_available", lambda: False)
    assert ocr.read_words([printed("Coque silicone")]) == [""]

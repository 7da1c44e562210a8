"""Words printed on a product's image (book covers, game boxes, packaging), read by Tesseract OCR.

A product without text is classified from its image alone, the weakest case (README, "What it achieves"). Many
such images carry words: a title, a brand, "puzzle 1000 pièces". `read_image_words` returns those words so the
OCR view (`shopclip.model.ensemble`, modality "ocr") can score them with TF-IDF n-grams like a title.

How the image is read, and why (each choice measured on the images of ../shared/data, figures in the README):
- the content box of `prepare_image` (white borders cut), in grey, enlarged twice: Tesseract expects text at
  least ~20 px high, and product shots are 500 px with small print;
- page segmentation mode 6 (one uniform block of text) finds readable words on more images than the sparse-text
  mode 11 or the automatic mode 3;
- only runs of 3+ letters are kept, lower-cased: shorter runs are mostly noise read from pictures;
- fewer than `MIN_WORDS` such words count as no text (a picture read as letters).

Tesseract runs as a child process (`tesseract stdin stdout`) on one thread each (OMP_THREAD_LIMIT=1), so a
thread pool reads several images at once. It is optional: where the binary or its French data is missing,
`ocr_available()` is False, training leaves the OCR view out and a bundle that has one scores no OCR text
(every product then takes the path of a product whose image holds no words). A failed or slow read gives no
words and a warning; it never fails a request.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

TESSERACT = "tesseract"
LANGUAGE = "fra"
PAGE_SEGMENTATION = 6
ENLARGE = 2
MIN_WORDS = 2
TIMEOUT_S = 20.0
INSTALL_HINT = "apt-get install tesseract-ocr tesseract-ocr-fra"
_WORD_RE = re.compile(r"[^\W\d_]{3,}")
T = TypeVar("T")


@lru_cache(maxsize=1)
def tesseract_version() -> str | None:
    """"tesseract 5.3.0" when the binary runs and has the French data (LANGUAGE), else None."""
    binary = shutil.which(TESSERACT)
    if binary is None:
        return None
    try:
        languages = subprocess.run([binary, "--list-langs"], capture_output=True, text=True, timeout=30).stdout
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if LANGUAGE not in languages.split():
        return None
    return version.splitlines()[0].strip() if version else TESSERACT


def ocr_available() -> bool:
    return tesseract_version() is not None


def words_of(raw: str) -> str:
    """Tesseract's output -> the words kept (3+ letters, lower case, space-separated); "" below MIN_WORDS."""
    words = _WORD_RE.findall(raw.lower())
    return " ".join(words) if len(words) >= MIN_WORDS else ""


def read_image_words(image: Image.Image, page_segmentation: int = PAGE_SEGMENTATION, enlarge: int = ENLARGE) -> str:
    """The words printed on `image` (a prepared image: RGB, white borders cut), "" when none or on failure.
    The defaults are the shipped settings (bench/ocr.py compares the others)."""
    grey = image.convert("L")
    if enlarge != 1:
        grey = grey.resize((grey.width * enlarge, grey.height * enlarge), Image.Resampling.BICUBIC)
    png = io.BytesIO()
    grey.save(png, format="PNG")
    command = [TESSERACT, "stdin", "stdout", "-l", LANGUAGE, "--psm", str(page_segmentation)]
    try:
        done = subprocess.run(command, input=png.getvalue(), capture_output=True, timeout=TIMEOUT_S,
                              env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("OCR failed, image read as holding no words: %s", exc)
        return ""
    if done.returncode != 0:
        log.warning("OCR failed (exit %d), image read as holding no words: %s", done.returncode,
                    done.stderr.decode(errors="replace").strip()[-200:])
        return ""
    return words_of(done.stdout.decode(errors="replace"))


def read_words(items: Sequence[T], workers: int = 1, prepare: Callable[[T], Image.Image | None] | None = None,
               progress: str | None = None) -> list[str]:
    """`read_image_words` of each item, `workers` Tesseract processes at a time; all "" without Tesseract.

    `prepare` turns an item into a prepared image (None: no words), in the worker, so at most `workers`
    decoded images are held at once; without it the items are prepared images. `progress`: a bar's label."""
    if not items or not ocr_available():
        return [""] * len(items)

    def read(item: T) -> str:
        image = prepare(item) if prepare is not None else item
        return "" if image is None else read_image_words(image)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(read, items)
        if progress:
            results = tqdm(results, total=len(items), desc=progress, unit="image", leave=False)
        return list(results)

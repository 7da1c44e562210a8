"""What reading the words on product images costs and finds, beside the image forward it adds to, in one run.

    python bench/ocr.py [--data ../shared/data] [--bundle runs/bundle] [--count 200] [--workers 1,2]

Over the images of ../shared/data's products without text (the only ones Classify reads words for):
- (a) the image side of Classify as the server runs it, for the baseline: `encode` of the image-only products,
  4 at a time (decode, crop, both trunks, the views' inputs), the bundle's OCR left off;
- (b) `shopclip.model.ocr.read_words` with the shipped settings, with 1 and 2 Tesseract processes at once;
- (c) the alternatives the settings were chosen over (page segmentation mode 3 / 11 / 6, image as is or enlarged
  twice, one process), with how many images give at least two words that also occur in the folder's product
  texts (words a TF-IDF view fitted on those texts can use).
Figures are products per second and milliseconds per product of wall time.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

from shopclip.model import ocr

VARIANTS = ((3, 1), (3, 2), (11, 1), (11, 2), (6, 1), (6, 2))
"""(page segmentation mode, enlargement) of (c); (6, 2) is the shipped setting."""


def main() -> int:
    args = parse_args()
    if not ocr.ocr_available():
        print(f"tesseract with French data not found ({ocr.INSTALL_HINT})", file=sys.stderr)
        return 2
    products = image_only_products(Path(args.data), args.count)
    vocabulary = text_vocabulary(Path(args.data) / "rakuten_text.csv")
    print(f"{len(products)} image-only products of {args.data}; {ocr.tesseract_version()}")
    prepared = [prepare(product) for product in products]
    if args.bundle:
        seconds = image_forward(args.bundle, products)
        print(f"(a) image side of Classify, 4 at a time, no OCR: {rate(len(products), seconds)}")
    for workers in args.workers:
        started = time.perf_counter()
        words = ocr.read_words(prepared, workers=workers)
        elapsed = time.perf_counter() - started
        print(f"(b) read_words, {workers} process(es): {rate(len(products), elapsed)}; "
              f"words on {sum(bool(w) for w in words)} of {len(words)} images")
    for mode, enlarge in VARIANTS:
        started = time.perf_counter()
        found = [ocr.read_image_words(image, page_segmentation=mode, enlarge=enlarge) for image in prepared]
        elapsed = time.perf_counter() - started
        useful = sum(len([w for w in words.split() if w in vocabulary]) >= 2 for words in found)
        shipped = " (shipped)" if (mode, enlarge) == (ocr.PAGE_SEGMENTATION, ocr.ENLARGE) else ""
        print(f"(c) mode {mode:2d}, enlarged x{enlarge}{shipped}: {rate(len(products), elapsed)}; "
              f">=2 known words on {useful} of {len(found)} images")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="labelled folder (rakuten_text.csv + images/)")
    parser.add_argument("--bundle", default=None, help="a bundle for baseline (a); without it (a) is left out")
    parser.add_argument("--count", type=int, default=200, help="image-only products measured")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    return parser.parse_args()


def image_only_products(data: Path, count: int) -> list:
    from shopclip.training.data import has_text, load_products

    return [p for p in load_products(data) if p.image_path is not None and not has_text(p)][:count]


def text_vocabulary(path: Path) -> set[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {word for row in csv.DictReader(handle)
                for word in re.findall(r"[^\W\d_]{3,}", f"{row['designation']} {row['description']}".lower())}


def prepare(product):  # noqa: ANN001, ANN201 - a SourceRow -> a PIL image
    from shopclip.model.preprocess import prepare_image

    return prepare_image(Path(product.image_path).read_bytes())


def image_forward(bundle: str, products: list) -> float:
    from shopclip.model import load_embedder
    from shopclip.training.data import product_input

    embedder = load_embedder(bundle, device="cpu", read_image_words=False)
    inputs = [product_input(p) for p in products]
    embedder.encode(inputs[:4])  # warm-up: the trunks' inference graph
    started = time.perf_counter()
    for i in range(0, len(inputs), 4):
        embedder.encode(inputs[i:i + 4])
    return time.perf_counter() - started


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:6.1f} products/s, {seconds / count * 1e3:6.1f} ms each"


if __name__ == "__main__":
    sys.exit(main())

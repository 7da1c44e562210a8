"""The training tests' labelled catalogue and tiny model flags: a generated shared-layout folder (rakuten_text.csv +
images/ + images_index.csv) in which each class has two words of its own, and the flags of a model small enough to
train in seconds (hashed n-gram tower only, 64-pixel images, 64-d space). Shared by test_training_run and the
object-store training test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 1210
PER_CLASS = 3
TINY_MODEL = ["--text-towers", "ngram", "--ngram-buckets", str(2**16), "--ngram-dim", "64", "--embed-dim", "64",
              "--image-size", "64", "--image-extra-trunks", ""]


def class_words(rng: np.random.Generator) -> str:
    return " ".join("".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), 7)) for _ in range(2))


def write_catalogue(folder: Path, num_classes: int = NUM_CLASSES, per_class: int = PER_CLASS) -> Path:
    """rakuten_text.csv + images/ + images_index.csv: text+image, text-only and image-only products."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    texts, index = [], []
    for c in range(num_classes):
        code, words = 10_000 + c, class_words(rng)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for i in range(per_class):
            productid, imageid = c * 10 + i + 1, 900_000 + c * 10 + i
            image_only, with_image = c % 20 == 0 and i == 0, (c + i) % 5 == 0
            if not image_only:
                texts.append([len(texts), f"{words} {i}", "<b>lot</b> &amp; neuf" if i == 1 else "", productid,
                              imageid, code])
            if image_only or with_image:
                name = f"image_{imageid}_product_{productid}.jpg"
                Image.new("RGB", (40, 40), colour).save(images / name)
                index.append(image_index_row(name, len(index), productid, imageid, code))
    return write_tables(folder, texts, index)


def image_index_row(name: str, row: int, productid: int, imageid: int, code: int) -> list:
    return [name, row, productid, imageid, code, "synthetic", name, "0" * 40]


def write_tables(folder: Path, texts: list[list], index: list[list]) -> Path:
    """rakuten_text.csv (rows: row, designation, description, productid, imageid, prdtypecode) and
    images_index.csv (rows from `image_index_row`) in `folder`, which holds the images/ they name."""
    with open(folder / "rakuten_text.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["row", "designation", "description", "productid", "imageid", "prdtypecode"],
                                 *texts])
    with open(folder / "images_index.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["file", "row", "productid", "imageid", "prdtypecode", "source_repo",
                                  "source_path", "source_commit"], *index])
    return folder

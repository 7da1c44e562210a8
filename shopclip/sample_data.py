"""A small synthetic catalogue in the challenge layout, for the quickstart on machines without real data.

The products are generated, not real: titles are assembled from per-class French vocabularies so that
text alone is learnable, and images are 500x500 JPEGs with a class-coloured shape on a wide white
border, like Rakuten photos. Three kinds of row are produced (text + image, text only, image only).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

# A few challenge codes with a vocabulary each (nothing downstream assumes these codes or this count).
VOCABULARY: dict[int, tuple[str, ...]] = {
    10: ("livre", "roman", "édition", "poche", "auteur", "chapitre"),
    1280: ("jouet", "peluche", "enfant", "doudou", "éveil", "bébé"),
    1560: ("meuble", "chaise", "table", "bois", "salon", "commode"),
    2583: ("piscine", "pompe", "filtre", "bâche", "spa", "chlore"),
    2705: ("bande", "dessinée", "album", "tome", "manga", "série"),
    40: ("jeu", "console", "manette", "import", "cartouche", "nintendo"),
}
SHAPES = ("ellipse", "rectangle", "triangle")


def _title(rng: random.Random, code: int) -> str:
    words = rng.sample(VOCABULARY[code], 3) + [rng.choice(("neuf", "occasion", "lot", "promo"))]
    return " ".join(words).capitalize() + f" {rng.randint(1, 999)}"


def _image(rng: random.Random, code: int, path: Path) -> None:
    codes = sorted(VOCABULARY)
    hue = codes.index(code) / len(codes)
    colour = tuple(int(255 * c) for c in (hue, 1 - hue, (hue * 3) % 1))
    img = Image.new("RGB", (500, 500), "white")
    draw = ImageDraw.Draw(img)
    box = [rng.randint(90, 150), rng.randint(90, 150), rng.randint(350, 410), rng.randint(350, 410)]
    shape = SHAPES[codes.index(code) % len(SHAPES)]
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    img.save(path, quality=90)


def write_sample_catalogue(out_dir: str | Path, products_per_code: int = 40, seed: int = 0) -> Path:
    """Write `X_train.csv`, `Y_train.csv` and `image_train/` under `out_dir`; return `out_dir`."""
    rng = random.Random(seed)
    out = Path(out_dir)
    images = out / "image_train"
    images.mkdir(parents=True, exist_ok=True)
    x_rows, y_rows = [], []
    productid, imageid = 1000, 5000
    for code in VOCABULARY:
        for i in range(products_per_code):
            productid += 1
            imageid += 1
            kind = i % 4  # 0,1: text + image, 2: text only, 3: image only
            designation = _title(rng, code) if kind != 3 else ""
            description = f"<p>{designation} &amp; accessoires</p>" if kind == 0 else ""
            x_rows.append([len(x_rows), designation, description, productid, imageid])
            y_rows.append([len(y_rows), code])
            if kind != 2:
                _image(rng, code, images / f"image_{imageid}_product_{productid}.jpg")
    with open(out / "X_train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["", "designation", "description", "productid", "imageid"], *x_rows])
    with open(out / "Y_train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["", "prdtypecode"], *y_rows])
    return out

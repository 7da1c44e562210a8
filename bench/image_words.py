"""What reading the words on images ahead of the forward pass does for a mixed load (server/image_words.py).

`shopclip serve` runs in a child process as in bench/serve.py (same placement: the load generator on a core of its
own) with a bundle that has the OCR view, under one mixed load: `--text-callers` callers classify text products
(real listings) and `--image-callers` callers classify products without text (real images of the data folder, on
which Tesseract reads the words), each sending its next Classify when the previous one returns. The same load runs
against the server reading the words ahead of the forward (`--image-words-workers 2`, the default) and in the
forward (`0`, how it was before), alternating `--rounds` times so that drift of the machine hits both alike.
Printed side by side, per kind of product: answers per second and p50/p99 latency.

    python bench/image_words.py --bundle runs/bundle --index-root runs/index
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import serve  # bench/serve.py: the server process, placement, the product sample
from shopclip.client import AsyncShopclipClient, ProductInput, ShopclipRpcError

AHEAD, IN_FORWARD = 2, 0
"""--image-words-workers of the two servers compared."""


@dataclass
class Kind:
    """What the callers of one kind of product saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def add(self, other: "Kind") -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.seconds += other.seconds

    def row(self) -> str:
        rate = len(self.latencies) / self.seconds if self.seconds else float("nan")
        p50, p99 = (serve.percentile(self.latencies, q) * 1e3 for q in (50, 99))
        return f"{rate:8.1f} {p50:8.1f} {p99:8.1f} {self.errors:6d}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runs/bundle", help="a model bundle with the OCR view")
    parser.add_argument("--index-root", help="published index root (k-NN vote included)")
    parser.add_argument("--data", type=Path, default=serve.DEFAULT_DATA.parent, help="the data folder")
    parser.add_argument("--products", type=int, default=512, help="distinct text products cycled through")
    parser.add_argument("--images", type=int, default=64, help="distinct image-only products cycled through")
    parser.add_argument("--text-callers", type=int, default=16)
    parser.add_argument("--image-callers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per round and server")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (ahead, in the forward)")
    parser.add_argument("--placement", choices=("split", "shared"), default="split")
    return serve.with_server_defaults(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    texts = serve.load_products(args.data / "rakuten_text.csv", args.products)
    images = image_only_products(args.data, args.images)
    server_cpus, client_cpus = serve.placement(args.placement)
    seen = {workers: (Kind(), Kind()) for workers in (AHEAD, IN_FORWARD)}
    for round_ in range(args.rounds):
        for workers in (AHEAD, IN_FORWARD):
            serve.set_affinity(server_cpus)
            with serve.running_server(args, ["--image-words-workers", str(workers)]) as server:
                serve.set_affinity(client_cpus)
                text, image = asyncio.run(measure(server.target, texts, images, args))
            seen[workers][0].add(text)
            seen[workers][1].add(image)
            print(f"round {round_ + 1}, --image-words-workers {workers}: text {len(text.latencies)}, "
                  f"image only {len(image.latencies)} answers", file=sys.stderr)
    serve.set_affinity(server_cpus | client_cpus)
    print(report(args, len(images), seen))
    return 0 if all(kind.errors == 0 and kind.latencies for pair in seen.values() for kind in pair) else 1


def image_only_products(data: Path, count: int) -> list[ProductInput]:
    """Products of the folder without text, as a shop would send them: the image bytes alone."""
    from shopclip.training.data import has_text, load_products

    rows = [p for p in load_products(data) if p.image_path is not None and not has_text(p)][:count]
    return [ProductInput(designation="", image=Path(p.image_path).read_bytes()) for p in rows]


async def measure(target: str, texts: Sequence[ProductInput], images: Sequence[ProductInput],
                  args: argparse.Namespace) -> tuple[Kind, Kind]:
    async with AsyncShopclipClient(target, timeout=60) as client:
        await load(client, texts, images, args, 2.0)  # warm-up: lazy init, first reads
        return await load(client, texts, images, args, args.seconds)


async def load(client: AsyncShopclipClient, texts: Sequence[ProductInput], images: Sequence[ProductInput],
               args: argparse.Namespace, seconds: float) -> tuple[Kind, Kind]:
    text, image = Kind(seconds=seconds), Kind(seconds=seconds)
    stop_at = time.perf_counter() + seconds

    async def caller(products: Sequence[ProductInput], offset: int, step: int, kind: Kind) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await client.classify(products[i % len(products)], top_k=5)
                kind.latencies.append(time.perf_counter() - started)
            except ShopclipRpcError:
                kind.errors += 1
            i += step

    await asyncio.gather(*(caller(texts, i, args.text_callers, text) for i in range(args.text_callers)),
                         *(caller(images, i, args.image_callers, image) for i in range(args.image_callers)))
    return text, image


def report(args: argparse.Namespace, image_count: int, seen: dict[int, tuple[Kind, Kind]]) -> str:
    lines = [f"bundle {args.bundle}  index {args.index_root or '-'}  {args.text_callers} text callers, "
             f"{args.image_callers} image-only callers ({image_count} images)  {args.rounds} x {args.seconds:.0f} s "
             "per server",
             "",
             f"{'words read':<24} {'text products':>31}   {'image-only products':>31}",
             f"{'':<24} {'ans/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}   "
             f"{'ans/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for workers, label in ((AHEAD, f"ahead ({AHEAD} threads)"), (IN_FORWARD, "in the forward (0)")):
        text, image = seen[workers]
        lines.append(f"{label:<24} {text.row()}   {image.row()}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

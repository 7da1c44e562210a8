"""How many tokens e5 reads against how fast a text product is classified: the bare forward at several windows.

    python bench/e5_window.py --bundle runs/bundle [--windows 48 40 36 34 32] [--rounds 2]

The bundle's model is loaded once and its e5 tower is told to read each window in turn (the weights stay: only the
speed means anything here; accuracy at a window is `bench/accuracy.py --e5-max-tokens N`, on models trained at it).
Each window is timed as bench/serve.py's (a) times it: `encode` + `classify` of batches of real product texts on the
thread that loaded the model, one core by default (as the server gets in bench/serve.py's split placement). Windows
are measured in turn, `--rounds` times, so a drift of the machine's speed spreads over all of them; the bundle's
own window is printed first as the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import serve  # bench/serve.py: the product sample and the timed forward


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="model bundle dir with an e5 tower")
    parser.add_argument("--windows", type=int, nargs="+", default=[48, 40, 36, 34, 32], help="e5 tokens to time")
    parser.add_argument("--data", type=Path, default=serve.DEFAULT_DATA, help="CSV with designation,description")
    parser.add_argument("--products", type=int, default=512, help="distinct products cycled through")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per window and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core, as the server)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    embedder = serve.load_raw_embedder(args.bundle, args.threads)
    towers = getattr(getattr(embedder, "model", None), "text_towers", {})
    tower = towers["e5"] if "e5" in towers else None
    if tower is None:
        print(f"{args.bundle}: no e5 text tower to time", file=sys.stderr)
        return 2
    own = tower.max_tokens
    windows = [own, *(w for w in args.windows if w != own)]
    products = serve.load_products(args.data, args.products)
    rates: dict[int, list[float]] = {w: [] for w in windows}
    for _ in range(args.rounds):
        for window in windows:
            tower.max_tokens = window
            point, = serve.measure_raw(embedder, products, [args.batch_size], args.seconds)
            rates[window].append(point.items_per_s)
    tower.max_tokens = own
    print(f"bundle {args.bundle} (trained at {own} tokens)  torch threads {args.threads}  "
          f"batch {args.batch_size}  {args.rounds} rounds")
    print("e5 tokens   text products/s (each round)   vs the bundle's own")
    for window in windows:
        mean = sum(rates[window]) / len(rates[window])
        base = sum(rates[own]) / len(rates[own])
        rounds = ", ".join(f"{rate:.1f}" for rate in rates[window])
        print(f"{window:>9}   {mean:>15.1f} ({rounds})   {mean / base:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

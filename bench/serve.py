"""Serving benchmark (issue 4): raw batched forward vs Classify through the real server and client.

In one run:
  (a) the model alone: `encode` + `classify` (every view, no k-NN vote) called directly, batch sizes scanned, before and after
      (b) (their mean per batch size is the reference); the best throughput, and the batch-1 latency;
  (b) `shopclip serve` in a child process (the production entry point, micro-batching on), driven by
      the asyncio client at each concurrency: throughput and p50/p99 latency of Classify.
Targets, printed beside the figures: (b) at concurrency 32 >= 80% of (a)'s best throughput and >= 60
text products/s, a lone request ((b) at concurrency 1) under 40 ms at p50, and the single-request p50
overhead ((b) at concurrency 1 minus (a) at batch 1) <= 3 ms. Exits 1 when a load level got no answer
at all (a table of zeros is a broken server, not a slow one).

    python bench/serve.py --bundle fake:dim=32,classes=27          # seconds, no weights
    python bench/serve.py --bundle runs/bundle [--index-root runs/index]

Products are real listings (designation + description) from --data when the file exists, otherwise
generated French-like titles. Text only: images would measure JPEG decoding as much as serving.

CPU placement (--placement): `split` (default) gives the load generator a core of its own and runs (a) and the
server on the others, as in production where the shop backend runs elsewhere: both sides of the comparison
get the same cores, and the server is not billed for its client. `shared` lets everything share every core,
so (b) also pays for the load generator (the harsher figure on a small machine).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shopclip.client import AsyncShopclipClient, ProductInput, ShopclipRpcError
from shopclip.server.config import usable_cores

# ../shared/data beside the checkout (`.parent` never fails, even for a copy of this file in /).
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "rakuten_text.csv"
THROUGHPUT_TARGET = 0.80
RATE_TARGET = 60.0
"""Text products per second at the highest concurrency."""
LONE_P50_TARGET_MS = 40.0
OVERHEAD_TARGET_MS = 3.0
SERVER_START_TIMEOUT_S = 300.0
GAP = " " * 23  # between the (a) and (b) columns of the report


@dataclass(frozen=True)
class RawPoint:
    batch_size: int
    items_per_s: float
    p50_ms: float
    """Median time of one forward of `batch_size` products."""


@dataclass(frozen=True)
class ServedPoint:
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    client_cpu: float
    """CPU seconds per wall second of this (load-generating) process: 1.0 is one core busy."""
    server_cpu: float
    """Same for the server process (nan where /proc is unavailable)."""
    mean_batch: float
    """Products per forward pass on the server (from its Prometheus metrics): is micro-batching filling up?"""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    products = load_products(args.data, args.products)
    print(f"bundle {args.bundle}: {len(products)} products from "
          f"{args.data if args.data.is_file() else 'generated titles'}", file=sys.stderr)
    server_cpus, client_cpus = placement(args.placement)
    set_affinity(server_cpus)  # (a) here, then the server process, which inherits it
    embedder = load_raw_embedder(args.bundle, args.torch_threads)
    raw_before = measure_raw(embedder, products, args.batch_sizes, args.seconds)
    with running_server(args) as server:
        mismatch = served_model_mismatch(server.target, embedder, args.bundle)
        if mismatch:
            print(mismatch, file=sys.stderr)
            return 2
        set_affinity(client_cpus)
        served = asyncio.run(measure_served(server, products, args.concurrency, args.seconds, args.top_k))
    set_affinity(server_cpus)
    raw = mean_of(raw_before, measure_raw(embedder, products, args.batch_sizes, args.seconds))
    set_affinity(server_cpus | client_cpus)
    print(report(args, raw, served, server_cpus, client_cpus))
    if args.json_out:
        args.json_out.write_text(json.dumps({"bundle": args.bundle, "raw": [asdict(p) for p in raw],
                                             "served": [asdict(p) for p in served]}, indent=2))
    unanswered = [p.concurrency for p in served if p.requests == 0]
    if unanswered:
        print(f"no Classify call succeeded at concurrency {unanswered}: the figures above measure nothing",
              file=sys.stderr)
        return 1
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="fake:dim=32,classes=27", help="model bundle dir or fake:...")
    parser.add_argument("--index-root", help="published index root served in (b) (k-NN vote included)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with designation,description columns")
    parser.add_argument("--products", type=int, default=512, help="distinct products cycled through")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per point")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--max-batch", type=int, help="server micro-batch limit (server default if unset)")
    parser.add_argument("--max-wait-ms", type=float, help="server micro-batch wait (server default if unset)")
    parser.add_argument("--torch-threads", type=int,
                        help="intra-op threads for (a) and the server (unset: every core they may run on, the "
                             "server's own default)")
    parser.add_argument("--forward-workers", type=int, help="server forward passes at once (server default if unset)")
    parser.add_argument("--placement", choices=("split", "shared"), default="split",
                        help="split: the load generator on a core of its own, (a) and the server on the rest; "
                             "shared: everything on every core")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON")
    return parser.parse_args(argv)


def with_server_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """`args` of a benchmark that leaves the server's batching and threads to its defaults (the flags
    `running_server` passes on are set to None)."""
    for name in ("max_batch", "max_wait_ms", "torch_threads", "forward_workers"):
        setattr(args, name, None)
    return args


def placement(mode: str) -> tuple[set[int], set[int]]:
    """(cores for (a) and the server, cores for the load generator); the same set twice when shared."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if mode == "shared" or len(cores) < 2:
        if mode == "split":
            print("--placement split needs 2 cores or more (and Linux): sharing them", file=sys.stderr)
        return set(cores), set(cores)
    return set(cores[:-1]), {cores[-1]}


def set_affinity(cores: set[int]) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def load_products(data: Path, count: int) -> list[ProductInput]:
    if data.is_file():
        with data.open(newline="", encoding="utf-8") as handle:
            rows = [row for _, row in zip(range(count), csv.DictReader(handle))]
        return [ProductInput(designation=r["designation"], description=r.get("description") or "") for r in rows]
    rng = random.Random(0)
    words = ("coussin lampe chaise roman figurine jeu console câble housse piscine jouet bébé tasse livre "
             "poster guitare montre sac tapis bougie vase drone filtre pompe étagère").split()
    adjectives = "bleu rouge vintage enfant bois métal lot de 2 xxl collector neuf déco jardin".split()
    return [ProductInput(designation=" ".join(rng.choices(words, k=2) + rng.choices(adjectives, k=3)))
            for _ in range(count)]


def load_raw_embedder(bundle: str, torch_threads: int | None):  # noqa: ANN201 - an Embedder
    from shopclip.model import load_embedder  # heavy: torch for real bundles

    embedder = load_embedder(bundle)
    if "torch" in sys.modules:  # as the server does: the given count, else every core this process may use
        sys.modules["torch"].set_num_threads(torch_threads or usable_cores())
    return embedder


def measure_raw(embedder: Any, products: Sequence[ProductInput], batch_sizes: Sequence[int],
                seconds: float) -> list[RawPoint]:
    """(a): the embedder called directly, on the thread that loaded it, as the server's forward thread does."""
    points = []
    for batch_size in tqdm(batch_sizes, desc="(a) raw forward", unit="batch size", file=sys.stderr):
        batches = [list(products[i:i + batch_size]) for i in range(0, len(products) - batch_size + 1, batch_size)]
        embedder.classify(embedder.encode(batches[0]), None)  # warm-up (lazy init, allocator)
        timings: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(timings) < 3:
            batch = batches[len(timings) % len(batches)]
            t0 = time.perf_counter()
            embedder.classify(embedder.encode(batch), None)
            timings.append(time.perf_counter() - t0)
        points.append(RawPoint(batch_size, batch_size * len(timings) / sum(timings), percentile(timings, 50) * 1e3))
    return points


def served_model_mismatch(target: str, embedder: Any, bundle: str) -> str | None:
    """Why (b) would not time the model (a) times, None when it does. A server given an index follows the model
    that index was built with (`--follow-model`, on by default), so a bundle other than that one, even a copy
    with another precision, would be swapped out before the first request and (b) would time the index's model."""
    from shopclip.client import ShopclipClient

    with ShopclipClient(target, timeout=30) as client:
        served = client.info().versions.model_release  # the child runs this checkout's server: it always says
    if served == embedder.release:
        return None
    return (f"the server answers with model release {served}, not {bundle}'s {embedder.release}: its index was "
            f"built with another model (rebuild the index with this bundle, or leave --index-root out)")


def mean_of(before: Sequence[RawPoint], after: Sequence[RawPoint]) -> list[RawPoint]:
    """Per batch size, the mean of (a) measured before and after (b). This VM's speed drifts by +-15% within
    minutes; the mean estimates the speed during (b) when the drift is steady (the faster of the two would bill
    every upward blip to the server, the slower would flatter it)."""
    return [RawPoint(a.batch_size, (a.items_per_s + b.items_per_s) / 2, (a.p50_ms + b.p50_ms) / 2)
            for a, b in zip(before, after)]


class running_server:
    """`shopclip serve` in a child process on a free port (plus `extra_argv`), SIGTERM (drain) on exit."""

    def __init__(self, args: argparse.Namespace, extra_argv: Sequence[str] = ()) -> None:
        self.args = args
        self.extra_argv = list(extra_argv)
        self.log = tempfile.NamedTemporaryFile(prefix="shopclip-bench-server-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "running_server":
        port, self.metrics_port = free_port(), free_port()
        argv = [sys.executable, "-m", "shopclip.cli", "serve", "--bundle", self.args.bundle,
                "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(self.metrics_port)]
        for flag, value in (("--index-root", self.args.index_root), ("--max-batch", self.args.max_batch),
                            ("--max-wait-ms", self.args.max_wait_ms), ("--torch-threads", self.args.torch_threads),
                            ("--forward-workers", self.args.forward_workers)):
            if value is not None:
                argv += [flag, str(value)]
        self.process = subprocess.Popen(argv + self.extra_argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{port}"
        self._wait_until_serving(self.target)
        return self

    def forwards(self) -> tuple[float, float]:
        """(products, forward passes) so far, from the server's shopclip_batch_size histogram."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            samples = dict(line.rsplit(" ", 1) for line in response.read().decode().splitlines()
                           if line.startswith("shopclip_batch_size_"))
        return float(samples.get("shopclip_batch_size_sum", 0)), float(samples.get("shopclip_batch_size_count", 0))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc; nan elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def _wait_until_serving(self, target: str) -> None:
        """Until gRPC health says SERVING: the model and, with an index root, an index are loaded (GetInfo
        answers before that, and Classify would fail)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"server exited with {self.process.returncode}:\n{self._log_tail()}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise SystemExit(f"server not SERVING after {SERVER_START_TIMEOUT_S:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def measure_served(server: running_server, products: Sequence[ProductInput], concurrencies: Sequence[int],
                         seconds: float, top_k: int) -> list[ServedPoint]:
    """(b): `concurrency` callers, each sending its next Classify as soon as the previous one returns."""
    points = []
    async with AsyncShopclipClient(server.target, timeout=30) as client:
        for concurrency in tqdm(concurrencies, desc="(b) served Classify", unit="level", file=sys.stderr):
            await run_load(client, server, products, concurrency, min(1.0, seconds / 4), top_k)  # warm-up
            points.append(await run_load(client, server, products, concurrency, seconds, top_k))
    return points


async def run_load(client: AsyncShopclipClient, server: running_server, products: Sequence[ProductInput],
                   concurrency: int, seconds: float, top_k: int) -> ServedPoint:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                await client.classify(products[i % len(products)], top_k=top_k)
                latencies.append(time.perf_counter() - t0)
            except ShopclipRpcError:
                errors += 1
            i += concurrency

    started, client_cpu, server_cpu = time.perf_counter(), time.process_time(), server.cpu_seconds()
    products_before, forwards_before = server.forwards()
    await asyncio.gather(*(caller(offset) for offset in range(concurrency)))
    elapsed = time.perf_counter() - started
    products_after, forwards_after = server.forwards()
    return ServedPoint(concurrency, len(latencies) / elapsed, percentile(latencies, 50) * 1e3,
                       percentile(latencies, 99) * 1e3, len(latencies), errors,
                       client_cpu=(time.process_time() - client_cpu) / elapsed,
                       server_cpu=(server.cpu_seconds() - server_cpu) / elapsed,
                       mean_batch=(products_after - products_before) / max(1.0, forwards_after - forwards_before))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def report(args: argparse.Namespace, raw: Sequence[RawPoint], served: Sequence[ServedPoint],
           server_cpus: set[int], client_cpus: set[int]) -> str:
    best = max(raw, key=lambda p: p.items_per_s)
    where = (f"(a) and server on cores {_cores(server_cpus)}, client on {_cores(client_cpus)}"
             if server_cpus != client_cpus else f"everything shares cores {_cores(server_cpus)}")
    lines = [f"bundle {args.bundle}  index {args.index_root or '(none: head only)'}  cpus {os.cpu_count()}  "
             f"torch threads {torch_threads()}  load average {os.getloadavg()[0]:.1f}", where, "",
             "(a) raw forward (encode + classify)        (b) Classify through server + asyncio client",
             f"{'batch':>5} {'items/s':>9} {'p50 ms':>8}{GAP}{'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'errors':>6} {'cpu client':>10} {'server':>6} {'batch':>5}"]
    for i in range(max(len(raw), len(served))):
        left = f"{raw[i].batch_size:>5} {raw[i].items_per_s:>9.1f} {raw[i].p50_ms:>8.2f}" if i < len(raw) else " " * 24
        right = (f"{served[i].concurrency:>4} {served[i].requests_per_s:>9.1f} {served[i].p50_ms:>8.2f} "
                 f"{served[i].p99_ms:>8.2f} {served[i].errors:>6} {served[i].client_cpu:>10.0%} "
                 f"{served[i].server_cpu:>6.0%} {served[i].mean_batch:>5.1f}") if i < len(served) else ""
        lines.append(f"{left}{GAP}{right}".rstrip())
    lines.append("")
    lines += target_lines(raw, served, best)
    return "\n".join(lines)


def target_lines(raw: Sequence[RawPoint], served: Sequence[ServedPoint], best: RawPoint) -> list[str]:
    lines = []
    top = max(served, key=lambda p: p.concurrency)
    share = top.requests_per_s / best.items_per_s
    lines.append(f"throughput: (b) at concurrency {top.concurrency} = {top.requests_per_s:.1f} req/s = {share:.0%} "
                 f"of (a) best {best.items_per_s:.1f} items/s (batch {best.batch_size}); target >= "
                 f"{THROUGHPUT_TARGET:.0%}: {'MET' if share >= THROUGHPUT_TARGET else 'NOT MET'}")
    lines.append(f"rate:       (b) at concurrency {top.concurrency} = {top.requests_per_s:.1f} text products/s; "
                 f"target >= {RATE_TARGET:g}: {'MET' if top.requests_per_s >= RATE_TARGET else 'NOT MET'}")
    single = next((p for p in served if p.concurrency == 1), None)
    forward = next((p for p in raw if p.batch_size == 1), None)
    if single:
        lines.append(f"lone:       (b) p50 at concurrency 1 = {single.p50_ms:.2f} ms; target < {LONE_P50_TARGET_MS:g} ms: "
                     f"{'MET' if single.p50_ms < LONE_P50_TARGET_MS else 'NOT MET'}")
    if single and forward:
        overhead = single.p50_ms - forward.p50_ms
        lines.append(f"overhead:   (b) p50 at concurrency 1 = {single.p50_ms:.2f} ms - (a) batch-1 forward "
                     f"{forward.p50_ms:.2f} ms = {overhead:.2f} ms; target <= {OVERHEAD_TARGET_MS:g} ms: "
                     f"{'MET' if overhead <= OVERHEAD_TARGET_MS else 'NOT MET'}")
    return lines


def _cores(cores: set[int]) -> str:
    return ",".join(map(str, sorted(cores))) or "(unknown)"


def torch_threads() -> str:
    if "torch" not in sys.modules:
        return "-"
    return str(sys.modules["torch"].get_num_threads())


if __name__ == "__main__":
    sys.exit(main())

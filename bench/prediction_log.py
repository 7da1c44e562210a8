"""What the prediction log costs Classify (issue 12): the same server under the same load, logging off and on.

`shopclip serve` runs in a child process as in bench/serve.py (same placement: the load generator on a core of its
own), once without `--prediction-log` and once with it, alternating off/on `--rounds` times so that drift of the
machine (thermal, other work) hits both sides alike. Each round measures Classify at `--concurrency` callers.
Printed side by side: throughput and p50/p99 of each, the cost of logging (target: at most 5% of throughput), and,
after the logging server has drained, the rows in the log against the products the server counted as classified
(they must be equal: nothing lost, nothing twice).

    python bench/prediction_log.py                                      # fake model, SQLite log, seconds
    python bench/prediction_log.py --bundle runs/bundle --index-root runs/index
    python bench/prediction_log.py --postgres                           # a throwaway local PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import serve  # bench/serve.py: the server process, the load generator and the product sample
from shopclip.client import AsyncShopclipClient

COST_TARGET = 0.05


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="fake:dim=32,classes=27", help="model bundle dir or fake:...")
    parser.add_argument("--index-root", help="published index root (k-NN vote included)")
    parser.add_argument("--data", type=Path, default=serve.DEFAULT_DATA, help="CSV with designation,description")
    parser.add_argument("--products", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--prediction-log", help="database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--postgres", action="store_true",
                        help="start a throwaway PostgreSQL on loopback (tests/support/postgres.py) and log there")
    parser.add_argument("--placement", choices=("split", "shared"), default="split")
    return serve.with_server_defaults(parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    products = serve.load_products(args.data, args.products)
    server_cpus, client_cpus = serve.placement(args.placement)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopclip-bench-log-")))
        url = args.prediction_log or (_postgres(stack) if args.postgres else f"sqlite:///{work / 'predictions.db'}")
        logging_flags = ["--prediction-log", url, "--prediction-log-spill", str(work / "spill")]
        off, on, counted = [], [], 0.0
        for round_ in range(args.rounds):
            for flags, points in (([], off), (logging_flags, on)):
                serve.set_affinity(server_cpus)
                with serve.running_server(args, flags) as server:
                    serve.set_affinity(client_cpus)
                    points.append(asyncio.run(_measure(server, products, args)))
                    if flags:
                        counted += _classified(server)
                print(f"round {round_ + 1} {'on ' if flags else 'off'}: {points[-1].requests_per_s:.1f} req/s",
                      file=sys.stderr)
        serve.set_affinity(server_cpus | client_cpus)
        rows = _rows(url)
    print(report(args, url, off, on, rows, counted))
    return 0 if all(p.errors == 0 for p in off + on) and rows == counted else 1


async def _measure(server: serve.running_server, products: Sequence, args: argparse.Namespace) -> serve.ServedPoint:
    async with AsyncShopclipClient(server.target, timeout=30) as client:
        await serve.run_load(client, server, products, args.concurrency, 1.0, 5)  # warm-up (logged too)
        return await serve.run_load(client, server, products, args.concurrency, args.seconds, 5)


def _classified(server: serve.running_server) -> float:
    """shopclip_classified_total over both abstain labels, read before the server drains."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        return sum(float(line.rsplit(" ", 1)[1]) for line in response.read().decode().splitlines()
                   if line.startswith("shopclip_classified_total{"))


def _rows(url: str) -> int:
    from shopclip.predlog.store import PredictionStore

    store = PredictionStore.open(url)
    try:
        return store.count_predictions()
    finally:
        store.dispose()


def _postgres(stack: ExitStack) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.postgres import running_postgres

    server = stack.enter_context(running_postgres())
    return server.create_database("bench_prediction_log")


def report(args: argparse.Namespace, url: str, off: Sequence[serve.ServedPoint], on: Sequence[serve.ServedPoint],
           rows: int, counted: float) -> str:
    def line(name: str, points: Sequence[serve.ServedPoint]) -> str:
        rates = [p.requests_per_s for p in points]
        return (f"{name:<16} {statistics.median(rates):>9.1f} {min(rates):>9.1f} {max(rates):>9.1f} "
                f"{statistics.median(p.p50_ms for p in points):>8.2f} {statistics.median(p.p99_ms for p in points):>8.2f} "
                f"{sum(p.errors for p in points):>6}")

    median_off = statistics.median(p.requests_per_s for p in off)
    median_on = statistics.median(p.requests_per_s for p in on)
    cost = 1 - median_on / median_off
    backend = url.split(":", 1)[0]
    return "\n".join([
        f"bundle {args.bundle}  index {args.index_root or '(none: head only)'}  concurrency {args.concurrency}  "
        f"{args.rounds} rounds of {args.seconds:g} s per side  log {backend}",
        "",
        f"{'logging':<16} {'req/s med':>9} {'min':>9} {'max':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}",
        line("off", off),
        line(f"on ({backend})", on),
        "",
        f"cost: {cost:+.1%} of throughput (median on vs off); target <= {COST_TARGET:.0%}: "
        f"{'MET' if cost <= COST_TARGET else 'NOT MET'}",
        f"rows: {rows} in the log, {counted:.0f} products classified by the logging servers: "
        f"{'equal' if rows == counted else 'DIFFERENT'}",
    ])


if __name__ == "__main__":
    sys.exit(main())

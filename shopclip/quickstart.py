"""`shopclip quickstart`: the main job end to end on embedded defaults, no external service.

1. data: `--data`, else `../shared/data` when present (real Rakuten rows), else a synthetic sample
   written by `shopclip.sample_data`;
2. train a model bundle (frozen pretrained towers on CPU, so it takes minutes), unless one exists;
3. ingest the same folder into an embedded LanceDB catalogue, embed it, build and publish the index;
4. start `shopclip serve` as a real server process on a free port, recording every answer in an embedded
   SQLite prediction log, and wait for grpc.health SERVING;
5. call Classify on held-out test products and SearchSimilar through the typed client, print the answers, and
   send one piece of feedback (the true code of an example) the way the shop backend would.

Everything lands under `--workdir` (default `runs/quickstart`); a second run reuses the bundle and the index.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shopclip.products import ProductInput

DEFAULT_SHARED_DATA = Path("../shared/data")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quickstart", help="train, index, serve and query end to end on embedded defaults")
    parser.add_argument("--data", type=Path, help="labelled folder (default ../shared/data, else a generated sample)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--retrain", action="store_true", help="train a new bundle even if one exists")
    parser.add_argument("--examples", type=int, default=5, help="held-out products to classify")
    parser.set_defaults(handler=_quickstart)


def resolve_data(data: Path | None, workdir: Path) -> Path:
    if data is not None:
        return data
    if (DEFAULT_SHARED_DATA / "rakuten_text.csv").exists():
        return DEFAULT_SHARED_DATA
    from shopclip.sample_data import write_sample_catalogue

    sample = workdir / "sample-data"
    if not (sample / "X_train.csv").exists():
        _step(f"no {DEFAULT_SHARED_DATA} here: generating a synthetic sample catalogue in {sample}")
        write_sample_catalogue(sample)
    return sample


def _step(message: str) -> None:
    """A heading on stdout, in line with the answers printed under it (progress bars go to stderr)."""
    print(f"\n==> {message}", flush=True)


QUICKSTART_TEST_FRACTION = 0.15


def train_bundle(data: Path, bundle: Path, retrain: bool) -> None:
    if (bundle / "model.safetensors").exists() and not retrain:
        _step(f"reusing model bundle {bundle} (--retrain to train again)")
        return
    from shopclip.training.config import TrainConfig
    from shopclip.training.train import train

    _step(f"training a model bundle on {data} -> {bundle}")
    # The shipped default learns from every product; the quickstart keeps a test split out of training and
    # out of the catalogue, so that its Classify calls are about products the system has never seen.
    train(data, bundle, config=TrainConfig(test_fraction=QUICKSTART_TEST_FRACTION))


def held_out_ids(bundle: Path) -> list[int]:
    """The productids the bundle held out for its test split (see training.data.split_products)."""
    import json

    return json.loads((bundle / "config.json").read_text())["training"]["split"]["test"]


def publish_index(data: Path, workdir: Path, bundle: Path) -> Path:
    from shopclip.indexer.build import BuildOptions, build_and_publish
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.ingest import ingest_folder, summary_line
    from shopclip.model import load_embedder

    catalogue = Catalogue(str(workdir / "catalogue"), "products")
    held_out = held_out_ids(bundle)
    _step(f"ingesting {data} into the embedded catalogue {workdir / 'catalogue'}, leaving out the "
          f"{len(held_out)} products of the bundle's test split (they are the queries below)")
    summary = ingest_folder(data, catalogue, rejects_path=workdir / "rejects.csv", exclude_productids=held_out)
    print(summary_line(summary), file=sys.stderr)
    index_root = workdir / "index"
    _step(f"embedding changed rows, building and publishing the index under {index_root}")
    result = build_and_publish(catalogue, index_root, load_embedder(str(bundle)), BuildOptions())
    print(f"published {result.version}: {result.manifest['counts']}", file=sys.stderr)
    return index_root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prediction_log_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'predictions.db').resolve()}"


def start_server(bundle: Path, index_root: Path, port: int, workdir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "shopclip.cli", "serve", "--bundle", str(bundle), "--index-root",
               str(index_root), "--host", "127.0.0.1", "--port", str(port),
               "--prediction-log", prediction_log_url(workdir),
               "--prediction-log-spill", str(workdir / "prediction-log-spill")]
    _step("starting the server: " + " ".join(command[2:]))
    return subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def held_out_products(bundle: Path, data: Path) -> list[tuple[int, "ProductInput"]]:
    """(true code, product) for every test-split product of the bundle: never trained on and kept out of the
    index, so the answers are honest."""
    from shopclip.products import ProductInput
    from shopclip.training.data import load_products, select

    test = select(load_products(data), held_out_ids(bundle))
    return [(row.prdtypecode, ProductInput(row.designation, row.description,
                                           Path(row.image_path).read_bytes() if row.image_path else None))
            for row in test]


def _examples(products: list[tuple[int, "ProductInput"]], count: int) -> list[tuple[int, "ProductInput"]]:
    """Up to `count` products, spread over the kinds of row: text + image, then text only, then image only."""
    kinds: dict[tuple[bool, bool], list] = {(True, True): [], (True, False): [], (False, True): []}
    for true_code, product in products:
        kinds.setdefault((bool(product.designation), product.image is not None), []).append((true_code, product))
    present = [rows for rows in kinds.values() if rows]
    picked = [row for rows in present for row in rows[:-(-count // max(1, len(present)))]]
    return picked[:count]


def _describe(product: "ProductInput") -> str:
    title = repr(product.designation[:70]) if product.designation else "(no title)"
    return f"{title} image={'yes' if product.image else 'no'}"


def query(port: int, products: list[tuple[int, "ProductInput"]], count: int) -> None:
    from shopclip.client import ShopclipClient
    from shopclip.client.cli import format_classify, format_feedback, format_info, format_search

    with ShopclipClient(f"127.0.0.1:{port}", timeout=120) as client:
        client.wait_ready(timeout=300)
        _step("GetInfo")
        print(format_info(client.info()))
        examples = _examples(products, count)
        answers = []
        for true_code, product in examples:
            _step(f"Classify {_describe(product)} (true prdtypecode {true_code})")
            answers.append(client.classify(product, top_k=3))
            print(format_classify(answers[-1]))
        true_code, answer = examples[0][0], answers[0]
        _step(f"Feedback: the first example's true prdtypecode {true_code}, by the request_id of its answer")
        print(format_feedback(client.feedback(true_code, request_id=answer.request_id, actor="quickstart"),
                              true_code))
        probe = examples[0][1]
        _step(f"SearchSimilar to {_describe(probe)}")
        print(format_search(client.search(probe, top_k=5)))
        _step(f"ClassifyBatch over all {len(products)} held-out test products")
        results = client.classify_batch([product for _, product in products])
        print(held_out_report([code for code, _ in products], [r.code for r in results],
                              [r.abstain for r in results]))


def held_out_report(true_codes: list[int], predicted: list[int | None], abstained: list[bool]) -> str:
    """Accuracy and weighted F1 (the challenge metric) of the served answers, and how abstaining helps."""
    from sklearn.metrics import f1_score

    pred = [code if code is not None else -1 for code in predicted]
    answered = [i for i, abstain in enumerate(abstained) if not abstain]
    accuracy = sum(t == p for t, p in zip(true_codes, pred)) / len(true_codes)
    lines = [f"products          {len(true_codes)}",
             f"accuracy          {accuracy:.4f}",
             f"weighted F1       {f1_score(true_codes, pred, average='weighted', zero_division=0):.4f}",
             f"abstained         {len(true_codes) - len(answered)} ({1 - len(answered) / len(true_codes):.1%})"]
    if answered:
        kept = sum(true_codes[i] == pred[i] for i in answered) / len(answered)
        lines.append(f"accuracy when answering  {kept:.4f}")
    return "\n".join(lines)


def _quickstart(args: argparse.Namespace) -> int:
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    data = resolve_data(args.data, workdir)
    bundle = workdir / "bundle"
    train_bundle(data, bundle, args.retrain)
    index_root = publish_index(data, workdir, bundle)
    port = free_port()
    server = start_server(bundle, index_root, port, workdir)
    try:
        query(port, held_out_products(bundle, data), args.examples)
    finally:
        server.terminate()
        server.wait(timeout=60)
    log_url = prediction_log_url(workdir)
    _step(f"done: bundle {bundle}, index {index_root}, every answer in {log_url}; serve it yourself with "
          f"`shopclip serve --bundle {bundle} --index-root {index_root} --prediction-log {log_url}`, "
          f"then watch it with `shopclip monitor --prediction-log {log_url} --reference {data}`; `make ui` opens "
          f"the administrators' console on all of it")
    return 0

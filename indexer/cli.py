"""`shopclip index ingest|build|run|status`: the catalogue and index commands.

Locations default to `SHOPCLIP_CATALOGUE`, `SHOPCLIP_INDEX_ROOT` and `SHOPCLIP_BUNDLE` (the server reads the
same two last variables), then to `./catalogue` and `./index`. Each command prints one JSON object on stdout
(machine-readable for schedulers) and logs progress on stderr. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path



def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _add_catalogue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalogue", default=_env("SHOPCLIP_CATALOGUE", "catalogue"),
                        help="LanceDB URI: local directory (default ./catalogue), s3://..., memory://")
    parser.add_argument("--table", default="products", help="catalogue table name")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--known-codes", type=Path,
                        help="file of accepted prdtypecodes (one per line); default: any positive code")
    parser.add_argument("--no-image-check", action="store_true",
                        help="skip decoding images at ingest (presence, size and header are still checked)")


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index-root", type=Path, default=Path(_env("SHOPCLIP_INDEX_ROOT", "index")),
                        help="where versions are published (default $SHOPCLIP_INDEX_ROOT or ./index)")
    parser.add_argument("--bundle", default=_env("SHOPCLIP_BUNDLE"),
                        help="model bundle directory, or fake:dim=..,classes=.. (default $SHOPCLIP_BUNDLE)")
    parser.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto",
                        help="auto: exact below --approx-threshold vectors, IVF + exact re-rank above")
    parser.add_argument("--approx-threshold", type=int,
                        help="vectors from which auto builds IVF (default: AnnParams.approx_threshold in "
                             "indexer/ann.py, 10000, measured there)")
    parser.add_argument("--min-recall", type=float, default=0.95,
                        help="refuse to publish an approximate index whose recall@10 vs exact is lower")
    parser.add_argument("--nprobe", type=int, default=16, help="starting IVF nprobe (raised to meet recall)")
    parser.add_argument("--ef-search", type=int, default=32, help="starting HNSW efSearch (raised likewise)")
    parser.add_argument("--embed-batch", type=int, default=32, help="products per embedding call")
    parser.add_argument("--commit-every", type=int, default=2048,
                        help="rows per committed embedding chunk (what a killed build does not redo)")
    parser.add_argument("--keep", type=int, default=3, help="published versions to keep")
    parser.add_argument("--no-gpu", action="store_true", help="do not use FAISS GPU even when present")


def register(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser("index", help="catalogue ingest, index build and publish, periodic job")
    commands = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    ingest = commands.add_parser("ingest", help="validate a catalogue folder and upsert it")
    ingest.add_argument("folder", type=Path, help="challenge layout (X/Y csv + images) or rakuten_text.csv layout")
    _add_catalogue(ingest)
    _add_source_options(ingest)
    ingest.add_argument("--rejects", type=Path, help="rejects csv (default ./rejects-<folder>.csv)")
    ingest.add_argument("--batch", help="source batch name recorded on rows (default: folder name)")
    ingest.set_defaults(handler=_ingest)

    remove = commands.add_parser("remove", help="delete products from the catalogue (published by the next build)",
                                 description="Delete products from the catalogue in one commit; the next `index "
                                             "build` or `index run` publishes an index without them. Ingesting a "
                                             "folder that still lists a product adds it back.")
    remove.add_argument("productids", nargs="*", help="productids to delete")
    remove.add_argument("--from-file", type=Path, help="file of productids, one per line or comma-separated")
    _add_catalogue(remove)
    remove.set_defaults(handler=_remove)

    build = commands.add_parser("build", help="embed changed rows, build the index, check recall, publish")
    _add_catalogue(build)
    _add_build_options(build)
    build.set_defaults(handler=_build)

    run = commands.add_parser("run", help="periodic job: ingest new drop folders, build, publish")
    run.add_argument("--drops", type=Path, required=True, help="directory whose subfolders are monthly drops")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="one pass (cron, Airflow)")
    when.add_argument("--every", help="run forever at this interval: 30m, 1h, 1d")
    run.add_argument("--max-runs", type=int, help=argparse.SUPPRESS)
    _add_catalogue(run)
    _add_source_options(run)
    _add_build_options(run)
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="published versions and catalogue state as JSON")
    _add_catalogue(status)
    status.add_argument("--index-root", type=Path, default=Path(_env("SHOPCLIP_INDEX_ROOT", "index")))
    status.add_argument("--bundle", default=_env("SHOPCLIP_BUNDLE"),
                        help="also count rows this model has not embedded yet")
    status.set_defaults(handler=_status)


def _source_options(args: argparse.Namespace):
    from shopclip.errors import InvalidInput
    from shopclip.catalogue_files import SourceOptions

    codes = None
    if args.known_codes is not None:
        try:
            codes = {int(line) for line in args.known_codes.read_text().split() if line.strip()}
        except (OSError, ValueError) as exc:
            raise InvalidInput("known-codes", f"cannot read integer codes from {args.known_codes}: {exc}") from exc
    return SourceOptions(known_codes=codes, check_images=not args.no_image_check)


def _build_options(args: argparse.Namespace):
    from shopclip.indexer.ann import AnnParams
    from shopclip.indexer.build import BuildOptions

    threshold = AnnParams.approx_threshold if args.approx_threshold is None else args.approx_threshold
    ann = AnnParams(kind=args.index, approx_threshold=threshold, nprobe=args.nprobe,
                    ef_search=args.ef_search, use_gpu=not args.no_gpu)
    return BuildOptions(ann=ann, min_recall=args.min_recall, embed_batch=args.embed_batch,
                        commit_every=args.commit_every, keep_versions=args.keep)


def _require_bundle(args: argparse.Namespace) -> str:
    from shopclip.errors import InvalidInput

    if not args.bundle:
        raise InvalidInput("bundle", "give --bundle (model bundle directory or fake:...) or set SHOPCLIP_BUNDLE")
    return args.bundle


def _print(data: dict) -> None:
    print(json.dumps(data, sort_keys=True, default=str), flush=True)


def _ingest(args: argparse.Namespace) -> int:
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.ingest import ingest_folder

    rejects = args.rejects or Path(f"rejects-{args.folder.resolve().name}.csv")
    summary = ingest_folder(args.folder, Catalogue(args.catalogue, args.table), rejects_path=rejects,
                            source_batch=args.batch, options=_source_options(args))
    _print(summary.to_dict())
    return 0


def _remove(args: argparse.Namespace) -> int:
    from shopclip.errors import InvalidInput
    from shopclip.indexer.catalogue import Catalogue

    tokens = list(args.productids)
    if args.from_file is not None:
        try:
            tokens += args.from_file.read_text(encoding="utf-8").replace(",", " ").split()
        except OSError as exc:
            raise InvalidInput("from-file", f"cannot read {args.from_file}: {exc}") from exc
    try:
        productids = [int(token) for token in tokens]
    except ValueError as exc:
        raise InvalidInput("productids", f"productids are integers: {exc}") from None
    if not productids:
        raise InvalidInput("productids", "give productids or --from-file")
    catalogue = Catalogue(args.catalogue, args.table)
    removed = catalogue.remove(productids)
    _print({"removed": len(removed), "not_found": sorted(set(productids) - set(removed)),
            "catalogue_version": catalogue.version})
    return 0


def _build(args: argparse.Namespace) -> int:
    from shopclip.errors import PublishRefused, exit_code
    from shopclip.indexer.build import build_and_publish
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.model import load_embedder

    embedder = load_embedder(_require_bundle(args))
    try:
        result = build_and_publish(Catalogue(args.catalogue, args.table), args.index_root, embedder,
                                   _build_options(args))
    except PublishRefused as exc:
        _print({"status": "refused", "error": str(exc)})
        return exit_code(exc)
    _print({"status": "published", "version": result.version, "embedded": result.embedded,
            "counts": result.manifest["counts"], "index": result.manifest["index"]})
    return 0


def _run(args: argparse.Namespace) -> int:
    from shopclip.indexer import job

    config = job.JobConfig(drops=args.drops, catalogue_uri=args.catalogue, index_root=args.index_root,
                           bundle=_require_bundle(args), table=args.table, build=_build_options(args),
                           sources=_source_options(args))
    if args.once:
        code, summary = job.run_once(config)
        job.print_line(json.dumps(summary, sort_keys=True))
        return code
    return job.run_every(config, job.parse_duration(args.every), max_runs=args.max_runs)


def _status(args: argparse.Namespace) -> int:
    from shopclip.indexer import publish
    from shopclip.indexer.catalogue import Catalogue

    current = publish.read_current(args.index_root)
    catalogue = Catalogue(args.catalogue, args.table)
    report = {"index_root": str(args.index_root), "current": current,
              "versions": publish.list_versions(args.index_root),
              "manifest": publish.read_manifest(args.index_root, current) if current else None,
              "catalogue": {"uri": catalogue.uri, "rows": len(catalogue), "version": catalogue.version}}
    if args.bundle:
        from shopclip.model import load_embedder

        fingerprint = load_embedder(args.bundle).fingerprint
        report["catalogue"]["stale_rows"] = catalogue.stale_rows(fingerprint).num_rows
    _print(report)
    return 0

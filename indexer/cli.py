"""`shopclip index ingest|build|run|status`: the catalogue and index commands.

Every option is a field of `Locations`, `SourceOptions` or `BuildOptions`: a flag, else a `SHOPCLIP_*`
variable (`SHOPCLIP_INDEX_ROOT`, `SHOPCLIP_BUNDLE`, `SHOPCLIP_MAX_IMAGE_BYTES`... as the server reads them),
else the field's default (see shopclip/settings.py). Each command prints one JSON object on stdout
(machine-readable for schedulers) and logs progress on stderr. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from shopclip import objectstore, settings
from shopclip.catalogue_files import SourceOptions
from shopclip.indexer.options import BuildOptions
from shopclip.settings import option



@dataclass(frozen=True)
class Locations:
    """Where the catalogue, the published indexes and the model are; the server reads the same variables."""

    catalogue: str = option("catalogue", "LanceDB URI: local directory, s3://..., memory://")
    table: str = option("products", "catalogue table name")
    index_root: Path = option(Path("index"), "where index versions are published")
    bundle: str | None = option(None, "model bundle directory or s3:// URI, or fake:dim=..,classes=..")


def _add_catalogue(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, Locations, skip=("index_root", "bundle"))
    objectstore.add_arguments(parser)


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--known-codes", type=Path,
                        help="file of accepted prdtypecodes (one per line); default: any positive code")
    settings.add_arguments(parser.add_argument_group("what ingest accepts (the server's input policy)"),
                           SourceOptions)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, Locations, skip=("catalogue", "table"))
    settings.add_arguments(parser.add_argument_group("index build"), BuildOptions)


def _locations(args: argparse.Namespace) -> Locations:
    return settings.from_sources(Locations, args, os.environ)


def register(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser("index", help="catalogue ingest, index build and publish, periodic job")
    commands = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    ingest = commands.add_parser("ingest", help="validate a catalogue folder and upsert it")
    ingest.add_argument("folder", help="challenge layout (X/Y csv + images) or rakuten_text.csv layout: a folder, "
                                       "or an s3:// prefix (staged into the store cache, its rejects file also "
                                       "written beside it as rejects.csv)")
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
    run.add_argument("--drops", required=True, help="directory, or s3://bucket/prefix, whose subfolders are monthly "
                                                    "drops")
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
    settings.add_arguments(status, Locations, skip=("catalogue", "table"))
    status.set_defaults(handler=_status)

    export = commands.add_parser("export", help="write the catalogue's labelled products as a training folder",
                                 description="Write every labelled product of the catalogue (all drops ingested so "
                                             "far) as a challenge-layout folder for `shopclip train --data`.")
    export.add_argument("--out", type=Path, required=True, help="folder to write (replaced whole if an export)")
    _add_catalogue(export)
    export.set_defaults(handler=_export)

    activate = commands.add_parser("activate", help="make a kept published version live again (rollback)",
                                   description="Flip CURRENT to a kept, complete version (see `index status` for "
                                               "the versions and the model that built each). Servers swap to it, "
                                               "with its model when they follow models, at their next poll.")
    activate.add_argument("version", help="version name as listed by `index status`")
    settings.add_arguments(activate, Locations, skip=("catalogue", "table", "bundle"))
    activate.set_defaults(handler=_activate)


def _source_options(args: argparse.Namespace) -> SourceOptions:
    from shopclip.errors import InvalidInput

    codes = None
    if args.known_codes is not None:
        try:
            codes = {int(line) for line in args.known_codes.read_text().split() if line.strip()}
        except (OSError, ValueError) as exc:
            raise InvalidInput("known-codes", f"cannot read integer codes from {args.known_codes}: {exc}") from exc
    return settings.from_sources(SourceOptions, args, os.environ, known_codes=codes)


def _build_options(args: argparse.Namespace) -> BuildOptions:
    return settings.from_sources(BuildOptions, args, os.environ)


def _require_bundle(locations: Locations) -> str:
    from shopclip.errors import InvalidInput

    if not locations.bundle:
        raise InvalidInput("bundle", "give --bundle (model bundle directory or fake:...) or set SHOPCLIP_BUNDLE")
    return locations.bundle


def _print(data: dict) -> None:
    print(json.dumps(data, sort_keys=True, default=str), flush=True)


def _ingest(args: argparse.Namespace) -> int:
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.ingest import ingest_drop
    from shopclip.staging import DATA_DIR, cache_folder

    where = _locations(args)
    rejects = args.rejects or Path(f"rejects-{objectstore.name_of(args.folder)}.csv")
    _print(ingest_drop(args.folder, Catalogue(where.catalogue, where.table), rejects,
                       cache_folder(DATA_DIR, args.folder), _source_options(args), source_batch=args.batch))
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
    where = _locations(args)
    catalogue = Catalogue(where.catalogue, where.table)
    removed = catalogue.remove(productids)
    _print({"removed": len(removed), "not_found": sorted(set(productids) - set(removed)),
            "catalogue_version": catalogue.version})
    return 0


def _build(args: argparse.Namespace) -> int:
    from shopclip.errors import PublishRefused, exit_code
    from shopclip.indexer.build import build_and_publish
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.model import load_embedder

    where = _locations(args)
    embedder = load_embedder(_require_bundle(where))
    try:
        result = build_and_publish(Catalogue(where.catalogue, where.table), where.index_root, embedder,
                                   _build_options(args))
    except PublishRefused as exc:
        _print({"status": "refused", "error": str(exc)})
        return exit_code(exc)
    _print({"status": "published", "version": result.version, "embedded": result.embedded,
            "counts": result.manifest["counts"], "index": result.manifest["index"]})
    return 0


def _run(args: argparse.Namespace) -> int:
    from shopclip.indexer import job

    where = _locations(args)
    config = job.JobConfig(drops=args.drops, catalogue_uri=where.catalogue, index_root=where.index_root,
                           bundle=_require_bundle(where), table=where.table, build=_build_options(args),
                           sources=_source_options(args))
    if args.once:
        code, summary = job.run_once(config)
        job.print_line(json.dumps(summary, sort_keys=True))
        return code
    return job.run_every(config, job.parse_duration(args.every), max_runs=args.max_runs)


def _status(args: argparse.Namespace) -> int:
    from shopclip.indexer import publish
    from shopclip.indexer.catalogue import Catalogue

    where = _locations(args)
    current = publish.read_current(where.index_root)
    catalogue = Catalogue(where.catalogue, where.table)
    versions = publish.list_versions(where.index_root)
    report = {"index_root": str(where.index_root), "current": current, "versions": versions,
              "models": {version: publish.model_of(where.index_root, version) for version in versions},
              "releases": {version: publish.release_of(where.index_root, version) for version in versions},
              "manifest": publish.read_manifest(where.index_root, current) if current else None,
              "catalogue": {"uri": catalogue.uri, "rows": len(catalogue), "version": catalogue.version}}
    if where.bundle:  # also count rows this model has not embedded yet
        from shopclip.model import load_embedder

        fingerprint = load_embedder(where.bundle).fingerprint
        report["catalogue"]["stale_rows"] = catalogue.stale_rows(fingerprint).num_rows
    _print(report)
    return 0


def _activate(args: argparse.Namespace) -> int:
    from shopclip.indexer import publish

    where = _locations(args)
    previous = publish.read_current(where.index_root)
    publish.activate_version(where.index_root, args.version)
    _print({"index_root": str(where.index_root), "current": args.version, "previous": previous,
            "model": publish.model_of(where.index_root, args.version),
            "release": publish.release_of(where.index_root, args.version)})
    return 0


def _export(args: argparse.Namespace) -> int:
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.export import export_labelled

    where = _locations(args)
    _print(export_labelled(Catalogue(where.catalogue, where.table), args.out).to_dict())
    return 0

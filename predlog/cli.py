"""`shopclip corrections list | apply`: the feedback stored in the prediction log, and writing it into the catalogue.

`--prediction-log` (or `SHOPCLIP_PREDICTION_LOG`, the variable the server reads) names the database; the catalogue
flags are the indexer's (`--catalogue`, `--table`, or their `SHOPCLIP_*` variables). `apply` prints one JSON object
on stdout, like the index commands, so a scheduler can run it before `shopclip index build`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from shopclip import settings
from shopclip.errors import InvalidInput
from shopclip.indexer.cli import Locations
from shopclip.settings import option

LIST_LIMIT = 50


@dataclass(frozen=True)
class LogLocation:
    prediction_log: str = option("", "prediction log database: postgresql://user@host/db or sqlite:///path",
                                 secret=True)

    def __post_init__(self) -> None:
        if not self.prediction_log:
            raise InvalidInput("prediction_log", f"required: pass --prediction-log or set "
                                                 f"{settings.env_name('prediction_log')}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LogLocation":
        return settings.from_sources(cls, vars(args), os.environ)


def register(subparsers: argparse._SubParsersAction) -> None:
    corrections = subparsers.add_parser(
        "corrections", help="feedback from the shop and the administrators: list it, write it into the catalogue")
    sub = corrections.add_subparsers(dest="corrections_command", metavar="SUBCOMMAND", required=True)

    listing = sub.add_parser("list", help="feedback not yet written into the catalogue, oldest first")
    settings.add_arguments(listing, LogLocation)
    listing.add_argument("--limit", type=int, default=LIST_LIMIT, help=f"rows to show (default {LIST_LIMIT})")
    listing.add_argument("--json", action="store_true", help="one JSON object per row")
    listing.set_defaults(handler=_list)

    apply = sub.add_parser(
        "apply", help="write pending feedback into the catalogue as labelled rows (then: shopclip index build)",
        description="Each product's latest feedback gives it its code: a catalogue product is relabelled, a "
                    "product sent with its content joins the catalogue. The rows go through the same ingest as "
                    "a drop (validation, rejects file), from a folder kept under --folder-root.")
    settings.add_arguments(apply, LogLocation)
    settings.add_arguments(apply, Locations, skip=("index_root", "bundle"))
    apply.add_argument("--folder-root", type=Path, default=Path("runs/corrections"),
                       help="where each batch of corrections is written as a drop folder and kept (catalogue "
                            "rows point at its images; default runs/corrections)")
    apply.add_argument("--limit", type=int, help="apply at most this many feedback rows (oldest first)")
    apply.set_defaults(handler=_apply)


def _list(args: argparse.Namespace) -> int:
    from shopclip.predlog.store import PredictionStore

    if args.limit < 0:
        raise InvalidInput("--limit", f"must be >= 0, got {args.limit}")
    store = PredictionStore.open(LogLocation.from_args(args).prediction_log)
    try:
        rows = store.pending_corrections(args.limit)
    finally:
        store.dispose()
    if args.json:
        for row in rows:
            print(json.dumps({"feedback_id": row.feedback_id, "created_at": row.created_at.isoformat(),
                              "productid": row.productid, "request_id": row.request_id,
                              "prdtypecode": row.prdtypecode, "predicted_code": row.predicted_code,
                              "actor": row.actor, "has_content": row.designation is not None or row.image is not None}))
        return 0
    from shopclip.client.cli import format_table

    print(format_table(["created_at", "productid", "predicted", "code", "actor", "content"],
                       [[f"{r.created_at:%Y-%m-%d %H:%M}", r.productid, r.predicted_code, r.prdtypecode, r.actor,
                         "sent" if r.designation is not None or r.image is not None else "-"] for r in rows])
          if rows else "no pending feedback")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.predlog.corrections import apply_corrections, default_folder
    from shopclip.predlog.store import PredictionStore

    if args.limit is not None and args.limit < 1:
        raise InvalidInput("--limit", f"must be >= 1, got {args.limit}")
    where = settings.from_sources(Locations, vars(args), os.environ)
    store = PredictionStore.open(LogLocation.from_args(args).prediction_log)
    try:
        summary = apply_corrections(store, Catalogue(where.catalogue, where.table), default_folder(args.folder_root),
                                    args.limit)
    finally:
        store.dispose()
    print(json.dumps(summary.to_dict(), sort_keys=True), flush=True)
    return 0

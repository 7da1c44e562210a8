"""Feedback becomes catalogue rows: the administrators' and the shop's confirmations and corrections, written as a
drop and ingested like one.

Each pending feedback row gives a product its code. The product's content comes from the feedback when it was
sent along (a listing the catalogue does not hold yet), else from the catalogue's own row (a relabel). The
latest feedback of a product wins. The rows are written in the drop layout (`New_X_train.csv`, `New_y_train.csv`,
`images/`) under a folder that is kept (catalogue rows point at its image files) and go through the one ingest:
same validation, same rejects file, same idempotency. So the next index build votes with the corrected labels,
and the next `index export` / training learns from them.

Feedback is marked applied only once its row is committed to the catalogue. What cannot be applied yet (no
productid, or a product neither the catalogue nor the feedback has content for) stays pending and is reported:
the product may arrive with a later drop.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.export import DROP_X_FILE, DROP_Y_FILE, IMAGES_DIR, image_name, write_challenge_folder
from shopclip.indexer.ingest import ingest_folder
from shopclip.predictions import utc_now
from shopclip.predlog.store import FeedbackRow, PredictionStore

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.csv"


@dataclass(frozen=True)
class CorrectionsSummary:
    pending: int
    """Feedback rows that were waiting."""
    products: int
    """Products written into the drop (one per product: its latest feedback)."""
    added: int
    """Products new to the catalogue (their content came with the feedback)."""
    relabelled: int
    """Catalogue products whose code changed."""
    unchanged: int
    """Confirmations: the catalogue already had that code."""
    rejected: int
    applied: int
    """Feedback rows marked applied (superseded ones of the same product included)."""
    left_pending: dict[str, int] = field(default_factory=dict)
    """Why the rest waits, with counts: `no productid`, `unknown product, no content`, `rejected by ingest`."""
    folder: str | None = None
    rejects_file: str | None = None
    catalogue_version: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Plan:
    rows: list[dict]
    """Drop rows: productid, designation, description, imageid, prdtypecode, image_uri."""
    feedback_ids: dict[int, list[str]]
    """Per productid, the feedback its row settles (the latest and the ones it supersedes)."""
    waiting: dict[str, list[str]]
    """Reason -> feedback ids that cannot be applied yet."""


def apply_corrections(store: PredictionStore, catalogue: Catalogue, folder: str | Path,
                      limit: int | None = None) -> CorrectionsSummary:
    """Write the pending feedback (at most `limit` rows, oldest first) into `catalogue` through a drop folder
    `folder` (created; must not exist yet: each batch of corrections keeps its own images)."""
    pending = store.pending_corrections(limit)
    plan = _plan(pending, catalogue)
    waiting = {reason: len(ids) for reason, ids in plan.waiting.items() if ids}
    if not plan.rows:
        return CorrectionsSummary(pending=len(pending), products=0, added=0, relabelled=0, unchanged=0,
                                  rejected=0, applied=0, left_pending=waiting)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    _write_drop(folder, plan.rows)
    summary = ingest_folder(folder, catalogue, rejects_path=folder / REJECTS_FILE, source_batch=folder.name)
    rejected = _rejected_productids(folder / REJECTS_FILE)
    settled = [fid for pid, ids in plan.feedback_ids.items() if pid not in rejected for fid in ids]
    applied = store.mark_applied(settled)
    if rejected:
        waiting["rejected by ingest"] = sum(len(plan.feedback_ids[pid]) for pid in rejected
                                            if pid in plan.feedback_ids)
    log.info("corrections: %d products written to the catalogue (%d new), %d feedback rows applied",
             summary.added + summary.updated, summary.added, applied)
    return CorrectionsSummary(
        pending=len(pending), products=len(plan.rows), added=summary.added, relabelled=summary.updated,
        unchanged=summary.unchanged, rejected=summary.rejected, applied=applied, left_pending=waiting,
        folder=str(folder), rejects_file=str(folder / REJECTS_FILE), catalogue_version=summary.catalogue_version)


def _plan(pending: Sequence[FeedbackRow], catalogue: Catalogue) -> _Plan:
    latest: dict[int, FeedbackRow] = {}
    feedback_ids: dict[int, list[str]] = {}
    waiting: dict[str, list[str]] = {"no productid": [], "unknown product, no content": []}
    for row in pending:  # oldest first: a later row of the same product replaces an earlier one
        if row.productid is None:
            waiting["no productid"].append(row.feedback_id)
            continue
        latest[row.productid] = row
        feedback_ids.setdefault(row.productid, []).append(row.feedback_id)
    known = {r["productid"]: r for r in catalogue.products(sorted(latest)).to_pylist()} if latest else {}
    rows = []
    for productid, feedback in latest.items():
        row = _drop_row(feedback, known.get(productid))
        if row is None:
            waiting["unknown product, no content"] += feedback_ids.pop(productid)
        else:
            rows.append(row)
    return _Plan(rows, feedback_ids, waiting)


def _drop_row(feedback: FeedbackRow, catalogued: dict | None) -> dict | None:
    """The product with the feedback's code: its content as sent with the feedback, else the catalogue's."""
    assert feedback.productid is not None
    if feedback.designation is not None or feedback.image is not None:
        imageid = catalogued["imageid"] if catalogued and catalogued["imageid"] is not None else feedback.productid
        return {"productid": feedback.productid, "designation": feedback.designation or "",
                "description": feedback.description or "", "imageid": imageid if feedback.image else None,
                "prdtypecode": feedback.prdtypecode, "image_uri": None, "_image": feedback.image}
    if catalogued is None:
        return None
    return {"productid": feedback.productid, "designation": catalogued["designation"],
            "description": catalogued["description"], "imageid": catalogued["imageid"],
            "prdtypecode": feedback.prdtypecode, "image_uri": catalogued["image_uri"], "_image": None}


def _write_drop(folder: Path, rows: list[dict]) -> None:
    """The drop layout; an image sent with the feedback is written under the name ingest looks for."""
    (folder / IMAGES_DIR).mkdir(parents=True)
    for row in rows:
        if row["_image"] is not None:
            (folder / IMAGES_DIR / image_name(row["imageid"], row["productid"])).write_bytes(row["_image"])
    write_challenge_folder(folder, [{k: v for k, v in row.items() if k != "_image"} for row in rows],
                           DROP_X_FILE, DROP_Y_FILE)


def _rejected_productids(rejects_file: Path) -> set[int]:
    if not rejects_file.is_file():
        return set()
    with rejects_file.open(newline="", encoding="utf-8") as handle:
        return {int(r["productid"]) for r in csv.DictReader(handle) if r["productid"].strip().lstrip("-").isdigit()}


def default_folder(root: str | Path) -> Path:
    """A new batch folder under `root`, named by time (sorts in application order)."""
    return Path(root) / f"corrections-{utc_now():%Y%m%dT%H%M%S%fZ}"

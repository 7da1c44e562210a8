"""Catalogue and drops: the published index versions (the live one marked, each with the model that built it,
when, and its manifest's counts), the catalogue's rows and labelled products per code, and the recent drops with
what their ingest left behind (catalogue rows, rejected rows, the rejects file to read and download).

Read through the indexer's own read side: `publish` for versions and manifests, `Catalogue` for rows, the index
job's drops.json and rejects files for drops. Each part has its own section, so a missing back end hides only it.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from shopclip.indexer import job, publish
from shopclip.indexer.ingest import REJECTS_FILE
from shopclip.ui import session
from shopclip.ui.backends import Backends, Unavailable
from shopclip.ui.layout import section

if TYPE_CHECKING:
    from shopclip.indexer.catalogue import Catalogue

# Module-level strings would show on the page (Streamlit magic): constants are documented by comments.
CODES_CHARTED = 40  # bars of the per-code chart (the largest codes); its table lists every code (1000+ for real)
RECENT_DROPS = 20
REJECTS_SHOWN = 1000  # rejected rows shown in a drop's table; the download holds them all
NEW, CHANGED, INGESTED = "new: not ingested yet", "changed since its ingest", "ingested"


def render(backends: Backends) -> None:
    st.title("Catalogue and drops")
    with section("Published index versions"):
        _index_versions(backends.index_root())
    with section("Catalogue"):
        _catalogue(backends)
    with section("Recent drops"):
        _drops(backends)


# -- index versions ----------------------------------------------------------------------------------------------

def index_version_rows(root: Path) -> list[dict[str, Any]]:
    """One row per kept complete version, newest first, from its manifest."""
    current = publish.read_current(root)
    return [_version_row(root, version, version == current) for version in reversed(publish.list_versions(root))]


def _version_row(root: Path, version: str, live: bool) -> dict[str, Any]:
    try:
        manifest = publish.read_manifest(root, version)
    except (OSError, ValueError) as exc:  # a damaged manifest hides only its own row's figures
        return {"live": live, "version": version, "model": f"(manifest unreadable: {exc})"}
    counts, model, index = manifest.get("counts", {}), manifest.get("model", {}), manifest.get("index", {})
    return {"live": live, "version": version, "model": model.get("fingerprint", ""), "bundle": model.get("bundle", ""),
            "created (UTC)": str(manifest.get("created_at", "")).replace("+00:00", ""),
            "vectors": counts.get("vectors"), "labelled": counts.get("labelled"),
            "unlabelled": counts.get("unlabelled"), "codes": counts.get("codes"),
            "embedded by this build": counts.get("embedded_this_build"), "index": index.get("kind", ""),
            "recall@k": index.get("recall_at_k"), "catalogue version": (manifest.get("catalogue") or {}).get("version")}


def _index_versions(root: Path) -> None:
    rows = index_version_rows(root)
    if not rows:
        st.info(f"Nothing is published under {root} yet: `shopclip index build` (or `shopclip index run`) "
                f"publishes the first version.")
        return
    live = next((row for row in rows if row["live"]), None)
    if live is None:
        st.warning(f"{root} names no live version (CURRENT): servers following it serve nothing new.")
    else:
        st.caption(f"Live: {live['version']}, built by model {live['model']} · {len(rows)} kept version(s) under "
                   f"{root}")
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"live": st.column_config.CheckboxColumn("live", help="what CURRENT names")})


# -- catalogue ---------------------------------------------------------------------------------------------------

def code_counts(catalogue: "Catalogue") -> list[tuple[int, int]]:
    """(prdtypecode, labelled products), largest first (ties by code)."""
    counts = Counter(catalogue.labelled_products().column("prdtypecode").to_pylist())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _catalogue(backends: Backends) -> None:
    catalogue = backends.catalogue()
    counts = code_counts(catalogue)
    total, labelled = len(catalogue), sum(n for _, n in counts)
    for column, (label, value) in zip(st.columns(4), (("products", total), ("labelled", labelled),
                                                     ("unlabelled", total - labelled), ("codes", len(counts)))):
        column.metric(label, f"{value:,}")
    st.caption(f"{catalogue.uri} table {catalogue.table_name}, version {catalogue.version}")
    if not counts:
        st.info("The catalogue holds no labelled product yet: ingest a drop (`shopclip index ingest FOLDER`).")
        return
    book = backends.codebook()
    shown = counts[:CODES_CHARTED]
    st.markdown("**Labelled products per code**" + (f" (the {CODES_CHARTED} largest of {len(counts)})"
                                                      if len(counts) > CODES_CHARTED else ""))
    st.bar_chart({"prdtypecode": [str(code) for code, _ in shown], "products": [n for _, n in shown]},
                 x="prdtypecode", y="products", sort=False)
    st.dataframe([{"prdtypecode": code, "code": book.label(code), "products": n, "share": n / labelled}
                  for code, n in counts], hide_index=True, width="stretch",
                 column_config={"share": st.column_config.ProgressColumn("share", min_value=0.0, max_value=1.0,
                                                                         format="percent")})


# -- drops -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DropRow:
    name: str
    state: str
    ingested_at: datetime | None
    """When its rejects file was written: the end of its last ingest."""
    rejects_file: Path | None
    rejected: int | None
    catalogue_rows: int | None
    """Catalogue products whose current row came from this drop (None without a catalogue)."""


def drop_rows(index_root: Path, drops: str | None, batches: dict[str, int] | None) -> list[DropRow]:
    """The drops the index job ingested (drops.json) and, with `drops`, those waiting for it; waiting ones first,
    then the most recently ingested, RECENT_DROPS at most."""
    state = job.load_state(index_root)
    pending = {drop.name for drop in job.pending_drops(drops, state)} if drops else set()
    rows = []
    for name in set(state) | pending:
        rejects = index_root / job.REJECTS_DIR / f"{name}.csv"
        found = rejects.is_file()
        state_word = (CHANGED if name in state else NEW) if name in pending else INGESTED
        rows.append(DropRow(name, state_word,
                            datetime.fromtimestamp(rejects.stat().st_mtime, timezone.utc) if found else None,
                            rejects if found else None, _data_rows(rejects) if found else None,
                            None if batches is None else batches.get(name, 0)))
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    rows.sort(key=lambda row: (row.state == INGESTED, -(row.ingested_at or oldest).timestamp(), row.name))
    return rows[:RECENT_DROPS]


def rows_per_drop(catalogue: "Catalogue") -> dict[str, int]:
    """Catalogue rows by the drop (source batch) their current version came from."""
    return catalogue.rows_per_batch()


def _drops(backends: Backends) -> None:
    config = backends.config
    if not config.index_root:
        raise Unavailable("No index root is configured: the drops the index job ingested and their rejects are "
                          "recorded under it. Start the console with --index-root DIR (and --drops DIR|s3://... to "
                          "see the drops still waiting).")
    try:
        batches = rows_per_drop(backends.catalogue())
    except Unavailable:
        batches = None
    rows = drop_rows(Path(config.index_root), config.drops, batches)
    if not config.drops:
        st.caption("No drops folder is configured (--drops): only drops already ingested are listed.")
    if not rows:
        st.info(f"No drop ingested under {config.index_root} yet" + (f" and none waiting in {config.drops}."
                                                                      if config.drops else "."))
        return
    st.dataframe([{"drop": row.name, "state": row.state,
                   "ingested (UTC)": f"{row.ingested_at:%Y-%m-%d %H:%M}" if row.ingested_at else "",
                   "catalogue rows": row.catalogue_rows, "rejected rows": row.rejected} for row in rows],
                 hide_index=True, width="stretch")
    for row in rows:
        if row.rejects_file is not None and row.rejected:
            _rejects(row, config.drops)


def _rejects(row: DropRow, drops: str | None) -> None:
    """The drop's rejected rows (file, row, productid, field, reason) and the file to download."""
    data = row.rejects_file.read_bytes()
    with st.expander(f"{row.name}: {row.rejected} rejected row(s)"):
        records = list(csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"))))
        st.dataframe(records[:REJECTS_SHOWN], hide_index=True, width="stretch")
        if len(records) > REJECTS_SHOWN:
            st.caption(f"The first {REJECTS_SHOWN} of {len(records)}: the download has them all.")
        if drops and "://" in drops:
            st.caption(f"Also beside the drop in the store: {drops.rstrip('/')}/{row.name}/{REJECTS_FILE}")
        st.download_button("Download rejects.csv", data, file_name=f"{row.name}-rejects.csv", mime="text/csv",
                           key=f"rejects_{row.name}")


def _data_rows(path: Path) -> int:
    """Records of a csv file, less its header row."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


render(session.backends())

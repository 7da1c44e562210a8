"""The catalogue: one LanceDB table of products keyed by productid, with each product's embedding.

LanceDB is embedded (a local directory) by default and accepts any LanceDB URI (s3://, gs://, memory://).
Every write is one Lance commit, so a killed writer leaves the previous table version intact: ingest writes
all of a drop in one commit, the builder commits embeddings chunk by chunk (what is committed is kept, which
makes an interrupted build resumable).

A damaged table (data files truncated or removed, a version manifest cut short) fails every read that needs the
lost files with InvalidInput naming the table, its location and the file, never with a partial answer.

A row needs (re-)embedding when the model fingerprint that made its vector differs from the current model's,
or when its content hash (text + image bytes) changed since. Label or metadata changes do not re-embed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from shopclip.errors import InvalidInput, ShopclipError

DEFAULT_TABLE = "products"

METADATA_FIELDS = [
    pa.field("productid", pa.int64(), nullable=False),
    pa.field("designation", pa.string()),
    pa.field("description", pa.string()),
    pa.field("imageid", pa.int64()),
    pa.field("image_uri", pa.string()),
    pa.field("image_note", pa.string()),
    pa.field("prdtypecode", pa.int64()),
    pa.field("content_hash", pa.string()),
    pa.field("row_hash", pa.string()),
    pa.field("source_batch", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
    pa.field("updated_at", pa.timestamp("us", tz="UTC")),
]
EMBEDDING_FIELDS = [
    # Variable-length so the table does not fix the model's dimension; one model's vectors share it.
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("embed_fingerprint", pa.string()),
    pa.field("embedded_hash", pa.string()),
    pa.field("embed_note", pa.string()),
]
SCHEMA = pa.schema(METADATA_FIELDS + EMBEDDING_FIELDS)
METADATA_SCHEMA = pa.schema(METADATA_FIELDS)
EMBEDDING_SCHEMA = pa.schema([METADATA_FIELDS[0]] + EMBEDDING_FIELDS)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_RUST_LOCATION = re.compile(r",\s*/\S+\.rs:\d+:\d+")


def _lance_message(exc: Exception) -> str:
    """Lance's error without the Rust source locations it appends."""
    return _RUST_LOCATION.sub("", str(exc)).strip()


def embedding_matrix(rows: pa.Table, dim: int) -> np.ndarray:
    """The `embedding` column of `rows` (none null) as a (rows, dim) float32 matrix; InvalidInput when a stored
    vector has another dimension."""
    flat = rows.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    flat = flat.astype(np.float32, copy=False)
    if flat.size != rows.num_rows * dim:
        raise InvalidInput("embedding", f"stored vectors do not all have the model's dimension {dim}")
    return np.ascontiguousarray(flat.reshape(rows.num_rows, dim))


class Catalogue:
    """The product table of one LanceDB database."""

    def __init__(self, uri: str, table: str = DEFAULT_TABLE) -> None:
        import lancedb  # lazy: the CLI parser must not pay for it

        self.uri = uri
        self.table_name = table
        try:
            self._db = lancedb.connect(uri)
        except Exception as exc:  # lancedb raises plain ValueError/OSError for bad URIs
            raise InvalidInput("catalogue", f"cannot open LanceDB at {uri!r}: {exc}") from exc
        if table in self._db:  # there, but unreadable: create_table would silently start an empty one over it
            with self._errors("open"):
                self._db.open_table(table)
        try:
            self._table = self._db.create_table(table, schema=SCHEMA, exist_ok=True)
        except ValueError as exc:  # lancedb's answer when an existing table has another schema
            raise InvalidInput("catalogue", f"table {table!r} at {uri} is not a shopclip catalogue: {exc}") from exc

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Lance's failures (RuntimeError, OSError, ValueError: a missing or truncated file of the table, a full
        disk) as one InvalidInput naming the table, where it lives and what Lance could not do."""
        try:
            yield
        except ShopclipError:
            raise
        except Exception as exc:  # noqa: BLE001 - lance's error types are not part of its API
            raise InvalidInput("catalogue", f"table {self.table_name!r} at {self.uri}: cannot {action} "
                                            f"({_lance_message(exc)}); the table is damaged or its storage "
                                            "failed: restore it, or ingest into a new catalogue") from exc

    @property
    def version(self) -> int:
        """The Lance version: changes with every committed write."""
        with self._errors("read its version"):
            self._table.checkout_latest()
            return int(self._table.version)

    def __len__(self) -> int:
        with self._errors("count its rows"):
            return int(self._table.count_rows())

    def _select(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        with self._errors("read it"):
            self._table.checkout_latest()
            total = self._table.count_rows()
            if total == 0:
                return pa.table({name: pa.array([], SCHEMA.field(name).type) for name in columns})
            query = self._table.search().select(list(columns)).limit(total)
            if where:
                query = query.where(where)
            return query.to_arrow()

    def rows_per_batch(self) -> dict[str, int]:
        """How many products each source batch (drop, corrections batch) last wrote, by batch name."""
        return dict(Counter(self._select(["source_batch"]).column("source_batch").to_pylist()))

    def row_states(self) -> pa.Table:
        """productid, row_hash, content_hash, created_at of every product (what ingest compares against)."""
        return self._select(["productid", "row_hash", "content_hash", "created_at"])

    def upsert_metadata(self, rows: pa.Table) -> None:
        """Insert new products and update the metadata of known ones, in one commit (embeddings untouched)."""
        if rows.num_rows:
            rows = rows.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)
            with self._errors("write products"):
                self._table.merge_insert("productid").when_matched_update_all() \
                    .when_not_matched_insert_all().execute(rows)

    def remove(self, productids: Sequence[int]) -> list[int]:
        """Delete these products in one commit (the next build publishes an index without them); returns the
        ones that were there. Unknown productids are not an error: removing twice changes nothing."""
        wanted = sorted({int(pid) for pid in productids})
        present = self.products(wanted).column("productid").to_pylist() if wanted else []
        if present:
            with self._errors("delete products"):
                self._table.delete(f"productid IN ({','.join(str(pid) for pid in present)})")
        return sorted(present)

    def stale_rows(self, fingerprint: str) -> pa.Table:
        """Products whose vector is missing, made by another model, or older than their content."""
        where = (f"embed_fingerprint IS NULL OR embed_fingerprint != {_quote(fingerprint)} "
                 "OR embedded_hash IS NULL OR embedded_hash != content_hash")
        return self._select(["productid", "designation", "description", "image_uri", "content_hash"], where)

    def store_embeddings(self, productids: Sequence[int], vectors: Sequence[np.ndarray | None],
                         content_hashes: Sequence[str], notes: Sequence[str | None], fingerprint: str) -> None:
        """Record vectors (None: nothing embeddable) for these products, in one commit."""
        if not productids:
            return
        embeddings = pa.array([None if v is None else np.asarray(v, np.float32) for v in vectors],
                              pa.list_(pa.float32()))
        rows = pa.Table.from_arrays(
            [pa.array(productids, pa.int64()), embeddings, pa.array([fingerprint] * len(productids), pa.string()),
             pa.array(content_hashes, pa.string()), pa.array(notes, pa.string())], schema=EMBEDDING_SCHEMA)
        with self._errors("write embeddings"):
            self._table.merge_insert("productid").when_matched_update_all().execute(rows)

    def current_vectors(self, fingerprint: str) -> list[tuple[int, str, np.ndarray]]:
        """(productid, content hash, vector) of the products whose vector this model made from their current
        content."""
        where = (f"embed_fingerprint = {_quote(fingerprint)} AND embedding IS NOT NULL "
                 "AND embedded_hash = content_hash")
        rows = self._select(["productid", "embedded_hash", "embedding"], where)
        if not rows.num_rows:
            return []
        vectors = embedding_matrix(rows, len(rows.column("embedding")[0]))
        return list(zip(rows.column("productid").to_pylist(), rows.column("embedded_hash").to_pylist(), vectors))

    def embedded_products(self, fingerprint: str) -> pa.Table:
        """Everything an index version needs, for the products that have a vector from this model."""
        where = f"embed_fingerprint = {_quote(fingerprint)} AND embedding IS NOT NULL"
        return self._select(["productid", "designation", "description", "imageid", "prdtypecode", "image_uri",
                             "embedding"], where)

    def labelled_products(self) -> pa.Table:
        """What a model can learn from: metadata of every product with a code, by productid."""
        return self._select(["productid", "designation", "description", "imageid", "prdtypecode", "image_uri"],
                            "prdtypecode IS NOT NULL").sort_by("productid")

    def products(self, productids: Sequence[int]) -> pa.Table:
        """Full rows of some products (for inspection and tests)."""
        ids = ",".join(str(int(pid)) for pid in productids) or "NULL"
        return self._select(SCHEMA.names, f"productid IN ({ids})")

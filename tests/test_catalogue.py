"""The LanceDB catalogue table: any URI, staleness rules, embeddings round-trip, schema guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from shopclip.errors import InvalidInput
from shopclip.indexer.catalogue import METADATA_SCHEMA, Catalogue, utc_now


def metadata(productids: list[int], content: str = "c1") -> pa.Table:
    now = utc_now()
    rows = [{"productid": pid, "designation": f"produit {pid}", "description": "", "imageid": None,
             "image_uri": None, "image_note": None, "prdtypecode": 10, "content_hash": f"{content}-{pid}",
             "row_hash": f"r-{content}-{pid}", "source_batch": "b", "created_at": now, "updated_at": now}
            for pid in productids]
    return pa.Table.from_pylist(rows, schema=METADATA_SCHEMA)


def test_memory_uri_works_like_a_directory() -> None:
    catalogue = Catalogue("memory://")
    catalogue.upsert_metadata(metadata([1, 2]))
    assert len(catalogue) == 2 and catalogue.products([2]).column("designation").to_pylist() == ["produit 2"]


def test_rows_go_stale_on_content_or_model_change_only(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "db"))
    catalogue.upsert_metadata(metadata([1, 2, 3]))
    assert catalogue.stale_rows("m1").num_rows == 3
    hashes = catalogue.stale_rows("m1").sort_by("productid").column("content_hash").to_pylist()
    vectors = [np.full(4, i, np.float32) for i in range(3)]
    catalogue.store_embeddings([1, 2, 3], vectors, hashes, [None, None, None], "m1")
    assert catalogue.stale_rows("m1").num_rows == 0
    assert catalogue.stale_rows("m2").num_rows == 3  # another model: everything is stale

    catalogue.upsert_metadata(metadata([2], content="c2"))  # new content for product 2
    assert catalogue.stale_rows("m1").column("productid").to_pylist() == [2]
    embedded = catalogue.embedded_products("m1").sort_by("productid")
    assert embedded.column("productid").to_pylist() == [1, 2, 3]  # the old vector stays until re-embedded
    assert embedded.column("embedding").to_pylist()[2] == [2.0] * 4


def test_product_without_vector_is_not_stale_again_but_not_indexed(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "db"))
    catalogue.upsert_metadata(metadata([7]))
    catalogue.store_embeddings([7], [None], ["c1-7"], ["image: corrupt, no text"], "m1")
    assert catalogue.stale_rows("m1").num_rows == 0
    assert catalogue.embedded_products("m1").num_rows == 0


def test_remove_deletes_in_one_commit_and_reports_what_was_there(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "db"))
    catalogue.upsert_metadata(metadata([1, 2, 3, 4]))
    before = catalogue.version
    assert catalogue.remove([4, 2, 99, 2]) == [2, 4]
    assert catalogue.version == before + 1
    assert sorted(catalogue.products([1, 2, 3, 4]).column("productid").to_pylist()) == [1, 3]
    assert catalogue.remove([2, 4]) == [] and catalogue.version == before + 1  # nothing left to delete


def test_foreign_table_schema_is_refused(tmp_path: Path) -> None:
    import lancedb

    lancedb.connect(str(tmp_path / "db")).create_table("products", pa.table({"x": [1]}))
    with pytest.raises(InvalidInput) as info:
        Catalogue(str(tmp_path / "db"))
    assert info.value.field == "catalogue"

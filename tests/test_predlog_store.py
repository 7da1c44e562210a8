"""The prediction log's store and codec, on SQLite and on a real PostgreSQL (tests/support/postgres.py)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from sqlalchemy import select  # noqa: E402

from shopclip.errors import InvalidInput, NotFound, NotReady  # noqa: E402
from shopclip.predictions import Feedback, PredictionRecord  # noqa: E402
from shopclip.predlog.codec import (decode_embedding, encode_embedding, record_from_json,  # noqa: E402
                                    record_row, record_to_json)
from shopclip.predlog.db import engine_for, migrate  # noqa: E402
from shopclip.predlog.schema import SCHEMA_VERSION, schema_migrations  # noqa: E402
from shopclip.predlog.store import PredictionStore  # noqa: E402
from shopclip.products import ProductInput  # noqa: E402
from support.postgres import free_port  # noqa: E402

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def make_record(n: int, productid: int | None = None, top: int = 10, at: datetime | None = None,
                embedding: tuple[float, ...] | None = None) -> PredictionRecord:
    return PredictionRecord.of(ProductInput(designation=f"produit {n}", description="desc" if n % 2 else ""),
                               productid=productid, predictions=[(top, 0.8), (2583, 0.15), (40, 0.05)],
                               abstain=False, model_fingerprint="fp-1", index_version="v1", latency_ms=3.5,
                               embedding=embedding, created_at=at or T0 + timedelta(seconds=n),
                               model_release="rel-1")


@pytest.fixture
def store(db_url: str):  # noqa: ANN201 - PredictionStore
    opened = PredictionStore.open(db_url)
    yield opened
    opened.dispose()


# -- codec ---------------------------------------------------------------------------------------------------------

def test_embedding_codec_is_float16_little_endian() -> None:
    vector = np.array([0.5, -1.25, 3.0, 1e-3], dtype=np.float32)
    data = encode_embedding(vector)
    assert data == vector.astype("<f2").tobytes() and len(data) == 8
    decoded = decode_embedding(data)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, vector, rtol=1e-3)
    assert encode_embedding([0.5, 1.0]) == encode_embedding(np.array([0.5, 1.0]))


def test_embedding_codec_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput) as error:
        decode_embedding(b"\x00\x01\x02")
    assert error.value.field == "embedding"
    with pytest.raises(InvalidInput):
        encode_embedding(np.zeros((2, 2)))


def test_record_json_round_trip_keeps_timezone() -> None:
    paris = timezone(timedelta(hours=1))
    record = make_record(1, productid=42, at=datetime(2025, 3, 1, 13, 0, tzinfo=paris), embedding=(0.25, -0.5))
    data = json.loads(json.dumps(record_to_json(record)))
    assert data["created_at"] == "2025-03-01T13:00:00+01:00"
    assert record_from_json(data) == record
    written_before_releases = {key: value for key, value in data.items() if key != "model_release"}
    assert record_from_json(written_before_releases) == dataclasses.replace(record, model_release="")
    data.pop("content_hash")
    with pytest.raises(InvalidInput) as error:
        record_from_json(data)
    assert error.value.field == "content_hash"


def test_record_row_has_ranked_top_and_encoded_embedding() -> None:
    record = make_record(3, productid=7, top=1280, embedding=(1.0, 2.0, 3.0))
    row = record_row(record)
    assert row["ranked"] == [[1280, 0.8], [2583, 0.15], [40, 0.05]]
    assert (row["top_code"], row["top_probability"]) == (1280, 0.8)
    assert decode_embedding(row["embedding"]).tolist() == [1.0, 2.0, 3.0]
    assert record_row(make_record(4))["embedding"] is None


# -- predictions ---------------------------------------------------------------------------------------------------

def test_insert_is_idempotent(store: PredictionStore) -> None:
    records = [make_record(n, productid=n) for n in range(5)]
    assert store.insert_predictions(records) == 5
    assert store.insert_predictions(records) == 0
    assert store.insert_predictions(records[:2] + [make_record(9)] + records[:1]) == 1
    assert store.count_predictions() == 6
    assert store.insert_predictions([]) == 0


def test_get_prediction_round_trip(store: PredictionStore) -> None:
    paris = timezone(timedelta(hours=2))
    record = make_record(1, productid=3, at=datetime(2025, 6, 1, 10, 0, tzinfo=paris), embedding=(0.5, -0.25))
    store.insert_predictions([record])
    loaded = store.get_prediction(record.request_id)
    assert loaded == record  # equal datetimes across offsets; these embedding values are exact in float16
    assert loaded.created_at.utcoffset() is not None
    assert store.get_prediction("0" * 32) is None


def test_insert_many_in_chunks(store: PredictionStore) -> None:
    records = [make_record(n) for n in range(1_234)]
    assert store.insert_predictions(records) == 1_234
    assert store.count_predictions() == 1_234


# -- feedback ------------------------------------------------------------------------------------------------------

def test_feedback_by_request_id(store: PredictionStore) -> None:
    record = make_record(1, productid=77, top=10)
    store.insert_predictions([record])
    wrong = store.add_feedback(Feedback(prdtypecode=2583, request_id=record.request_id, actor="admin:alice"))
    assert (wrong.productid, wrong.predicted_code, wrong.prdtypecode, wrong.was_correct) == (77, 10, 2583, False)
    right = store.add_feedback(Feedback(prdtypecode=10, request_id=record.request_id, productid=77))
    assert right.was_correct is True
    with pytest.raises(InvalidInput) as error:
        store.add_feedback(Feedback(prdtypecode=10, request_id=record.request_id, productid=78))
    assert error.value.field == "productid"


def test_feedback_by_productid_uses_latest_prediction(store: PredictionStore) -> None:
    store.insert_predictions([make_record(1, productid=5, top=10, at=T0),
                              make_record(2, productid=5, top=40, at=T0 + timedelta(hours=1)),
                              make_record(3, productid=6, top=60, at=T0 + timedelta(hours=2))])
    receipt = store.add_feedback(Feedback(prdtypecode=40, productid=5))
    assert (receipt.productid, receipt.predicted_code, receipt.was_correct) == (5, 40, True)
    unknown = store.add_feedback(Feedback(prdtypecode=40, productid=999))
    assert (unknown.productid, unknown.predicted_code, unknown.was_correct) == (999, None, None)


def test_feedback_unknown_request_id_is_not_found(store: PredictionStore) -> None:
    with pytest.raises(NotFound, match="request_id"):
        store.add_feedback(Feedback(prdtypecode=10, request_id="f" * 32))
    assert store.pending_corrections() == []


def test_feedback_needs_productid_or_request_id(store: PredictionStore) -> None:
    with pytest.raises(InvalidInput) as error:
        store.add_feedback(Feedback(prdtypecode=10))
    assert error.value.field == "productid"


def test_feedback_content_pending_and_applied(store: PredictionStore) -> None:
    product = ProductInput(designation="Chaise en bois", description="chêne massif", image=b"\xff\xd8jpeg")
    first = Feedback(prdtypecode=1560, productid=1, product=product, actor="shop-backend", created_at=T0)
    second = Feedback(prdtypecode=10, productid=2, created_at=T0 + timedelta(minutes=1))
    third = Feedback(prdtypecode=40, productid=3, created_at=T0 - timedelta(minutes=1))
    for item in (first, second, third):
        store.add_feedback(item)
    store.add_feedback(first)  # sent again after a timeout: stored once
    pending = store.pending_corrections()
    assert [row.feedback_id for row in pending] == [third.feedback_id, first.feedback_id, second.feedback_id]
    stored = pending[1]
    assert (stored.designation, stored.description, stored.image) == ("Chaise en bois", "chêne massif",
                                                                      b"\xff\xd8jpeg")
    assert (stored.actor, stored.prdtypecode, stored.created_at, stored.applied_at) == ("shop-backend", 1560, T0,
                                                                                        None)
    assert pending[2].designation is None and pending[2].image is None
    assert [row.feedback_id for row in store.pending_corrections(limit=1)] == [third.feedback_id]
    at = T0 + timedelta(days=1)
    assert store.mark_applied([third.feedback_id, first.feedback_id, first.feedback_id], at=at) == 2
    assert store.mark_applied([third.feedback_id]) == 0  # keeps its first time
    assert [row.feedback_id for row in store.pending_corrections()] == [second.feedback_id]
    assert store.mark_applied([]) == 0


# -- schema and reachability ----------------------------------------------------------------------------------------

def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    engine = engine_for(db_url)
    try:
        assert migrate(engine) == SCHEMA_VERSION
        assert migrate(engine) == SCHEMA_VERSION
        with engine.connect() as connection:
            versions = connection.execute(select(schema_migrations.c.version)).scalars().all()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        engine.dispose()


def test_a_version_1_database_is_migrated_keeping_its_rows(db_url: str) -> None:
    """A log created by a shopclip of schema 1 gains what later versions add (predictions.designation, the
    feedback.request_id index, predictions.model_release); its rows stay."""
    from sqlalchemy import MetaData, Table, text

    from shopclip.predlog.schema import feedback, monitor_reports, predictions

    engine = engine_for(db_url)
    try:
        v1 = MetaData()  # the tables as schema 1 made them: no predictions.designation, no v3 index, no v4 column
        Table("predictions", v1, *[column.copy() for column in predictions.columns
                                   if column.name not in ("designation", "model_release")])
        Table("feedback", v1, *[column.copy() for column in feedback.columns])
        Table("monitor_reports", v1, *[column.copy() for column in monitor_reports.columns])
        with engine.begin() as connection:
            v1.create_all(connection)
            schema_migrations.create(connection)
            connection.execute(schema_migrations.insert().values(version=1, description="v1", applied_at=T0))
            connection.execute(text(
                "INSERT INTO predictions (request_id, created_at, content_hash, text_length, has_description, "
                "has_image, image_bytes, ranked, abstain, model_fingerprint, index_version, latency_ms) VALUES "
                "('aa', :t, 'h', 3, false, false, 0, '[[10, 0.9]]', false, 'fp', 'v1', 1.0)"), {"t": T0})
        assert migrate(engine) == SCHEMA_VERSION
        from sqlalchemy import inspect

        assert "feedback_request_id" in {i["name"] for i in inspect(engine).get_indexes("feedback")}
        store = PredictionStore(engine)
        old = store.get_prediction("aa")
        assert old is not None and old.designation == "" and old.model_release == ""
        assert old.predictions == ((10, 0.9),)
        fresh = make_record(7)
        store.insert_predictions([fresh])
        stored = store.get_prediction(fresh.request_id)
        assert (stored.designation, stored.model_release) == ("produit 7", "rel-1")
    finally:
        engine.dispose()


def test_newer_schema_is_refused(db_url: str) -> None:
    engine = engine_for(db_url)
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(schema_migrations.insert().values(version=SCHEMA_VERSION + 1, description="future",
                                                                 applied_at=T0))
        with pytest.raises(InvalidInput, match="newer") as error:
            migrate(engine)
        assert error.value.field == "prediction_log"
    finally:
        engine.dispose()


def test_unreachable_database_is_not_ready() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(NotReady):
        PredictionStore.open(url)
    store = PredictionStore(engine_for(url))
    with pytest.raises(NotReady):
        store.add_feedback(Feedback(prdtypecode=10, productid=1))
    with pytest.raises(NotReady):
        store.insert_predictions([make_record(1)])


def test_bad_url_names_the_field() -> None:
    with pytest.raises(InvalidInput) as error:
        PredictionStore.open("mysql://x/y")
    assert error.value.field == "prediction_log"

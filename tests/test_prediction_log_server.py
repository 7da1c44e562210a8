"""The server and the real prediction log together: `serve --prediction-log URL` on SQLite (the embedded default)
and on a real PostgreSQL that is stopped and started again under load, and a correction sent through the RPC that
ends up in the catalogue, the next published index and the server's answers."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, func, select

from shopclip.predlog.corrections import apply_corrections
from shopclip.predlog.schema import feedback, predictions
from shopclip.predlog.store import PredictionStore
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, feedback_pb2, feedback_pb2_grpc, product_pb2,
                         search_pb2, search_pb2_grpc)
from support.catalogue import catalogue_title, productid_of
from support.index import PublishedCatalogue, build_catalogue_index
from support.server import running_server, wait_until


def classify(designation: str, productid: int | None = None) -> classification_pb2.ClassifyRequest:
    product = product_pb2.Product(designation=designation)
    if productid is not None:
        product.productid = productid
    return classification_pb2.ClassifyRequest(product=product)


def logged_rows(url: str) -> dict[str, dict]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            return {row.request_id: row._asdict() for row in connection.execute(select(predictions))}
    finally:
        engine.dispose()


def test_serve_with_a_sqlite_prediction_log_writes_one_row_per_classified_product(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log' / 'predictions.db'}"

    async def scenario() -> list[str]:
        async with running_server(prediction_log=url, prediction_log_spill=str(tmp_path / "spill"),
                                  metrics_port=0) as (server, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            ids = [(await stub.Classify(classify(f"Lot de {i} tasses", productid=i))).request_id for i in range(5)]
            batch = await stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(
                products=[product_pb2.Product(designation=f"Coussin {i}") for i in range(20)]))
            ids += [r.request_id for r in batch.results]
            exposed = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
            assert b"shopclip_prediction_log_queue_capacity" in exposed
            assert b'shopclip_classified_total{abstain=' in exposed
            return ids

    ids = asyncio.run(scenario())  # stopping the server closes the log: everything queued is written
    rows = logged_rows(url)
    assert sorted(rows) == sorted(ids)
    assert [rows[i]["productid"] for i in ids[:5]] == list(range(5))
    assert all(rows[i]["productid"] is None and rows[i]["embedding"] for i in ids[5:])
    assert not any((tmp_path / "spill").glob("*.jsonl"))


def test_postgres_stopped_and_started_under_load_fails_no_call_and_loses_no_row(postgres_server, postgres_url: str,
                                                                                tmp_path: Path) -> None:
    answered: list[str] = []
    failures: list[BaseException] = []

    async def client(stub, worker: int, stop: asyncio.Event) -> None:  # noqa: ANN001 - stub
        n = 0
        while not stop.is_set():
            try:
                answer = await stub.Classify(classify(f"Lampe {worker} {n}", productid=worker * 100_000 + n),
                                             timeout=10)
                answered.append(answer.request_id)
            except grpc.aio.AioRpcError as error:
                failures.append(error)
            n += 1

    async def scenario() -> dict:
        async with running_server(prediction_log=postgres_url, prediction_log_spill=str(tmp_path / "spill")
                                  ) as (server, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            stop = asyncio.Event()
            workers = [asyncio.create_task(client(stub, w, stop)) for w in range(8)]
            await wait_until(lambda: len(answered) >= 100, timeout_s=30)
            await asyncio.to_thread(postgres_server.stop)
            down_at = len(answered)
            await wait_until(lambda: len(answered) >= down_at + 300, timeout_s=60)
            stats_down = server.owned_log.stats()
            await asyncio.to_thread(postgres_server.start)
            back_at = len(answered)
            await wait_until(lambda: len(answered) >= back_at + 100, timeout_s=30)
            stop.set()
            await asyncio.gather(*workers)
            assert server.owned_log.flush(30)
            return {"down": stats_down, "after": server.owned_log.stats()}

    stats = asyncio.run(scenario())
    assert failures == []
    assert stats["down"].spilled > 0 and not stats["down"].database_up
    assert stats["after"].pending_spill_rows == 0 and stats["after"].database_up
    rows = logged_rows(postgres_url)
    assert len(answered) == len(set(answered))
    assert sorted(rows) == sorted(answered)  # exactly one row per classified product


def test_a_correction_sent_through_the_rpc_is_served_after_the_next_index_build(tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path / "root")
    url = f"sqlite:///{tmp_path / 'log.db'}"
    productid, title = productid_of(3, 2), catalogue_title(3, 2)

    def code_served_for(hits: search_pb2.SearchSimilarResponse) -> int | None:
        return next((hit.prdtypecode for hit in hits.results if hit.productid == productid), None)

    async def scenario() -> None:
        async with running_server(prediction_log=url, prediction_log_spill=str(tmp_path / "spill"),
                                  index_root=published.index_root, poll_interval_s=0.05) as (server, channel):
            answer = await classification_pb2_grpc.ClassificationServiceStub(channel).Classify(
                classify(title, productid=productid))
            receipt = await feedback_pb2_grpc.FeedbackServiceStub(channel).SubmitFeedback(
                feedback_pb2.SubmitFeedbackRequest(request_id=answer.request_id, prdtypecode=19,
                                                   actor="admin:test"))
            assert receipt.productid == productid and receipt.was_correct is False
            search = search_pb2_grpc.SearchServiceStub(channel)
            query = search_pb2.SearchSimilarRequest(product=product_pb2.Product(designation=title), top_k=5)
            assert code_served_for(await search.SearchSimilar(query)) == 3

            store = PredictionStore.open(url)
            summary = await asyncio.to_thread(apply_corrections, store, published.catalogue, tmp_path / "c")
            store.dispose()
            assert summary.relabelled == 1
            version = await asyncio.to_thread(published.publish)
            await wait_until(lambda: server.engine.versions().index_version == version, timeout_s=30)
            assert code_served_for(await search.SearchSimilar(query)) == 19

    asyncio.run(scenario())
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(feedback)
                                  .where(feedback.c.applied_at.is_not(None))).scalar_one() == 1
    engine.dispose()

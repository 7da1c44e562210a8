"""What the server records of each answer and the feedback RPC, on the real server with an in-memory prediction
log (tests/test_predlog_*.py test the database side; tests/test_prediction_log_server.py the two together).

Checked from outside: every classified product gets its own request id, the log receives exactly one record per
classified product with what was answered, and feedback is validated field by field before it reaches the log."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest

from shopclip.client.sync import ShopclipClient
from shopclip.products import ProductInput
from shopclip.v1 import classification_pb2, classification_pb2_grpc, feedback_pb2, feedback_pb2_grpc, product_pb2
from support.prediction_log import MemoryPredictionLog
from support.server import running_server, serving, status_of

REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def product(designation: str, **fields: object) -> product_pb2.Product:
    return product_pb2.Product(designation=designation, **fields)


def served_codes(server) -> list[int]:  # noqa: ANN001 - ShopclipServer
    return server.engine.info().prdtypecodes


# ------------------------------------------------------------------ what Classify records


def test_every_classified_product_gets_a_request_id_and_one_record() -> None:
    log = MemoryPredictionLog()

    async def scenario() -> None:
        async with running_server(log_double=log) as (server, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            single = await stub.Classify(classification_pb2.ClassifyRequest(
                product=product("Lot de 3 tasses", productid=77, description="porcelaine blanche")))
            batch = await stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(
                products=[product("Coussin déco", productid=78), product("Puzzle 1000 pièces")]))
            answers = [single, *batch.results]
            ids = [a.request_id for a in answers]
            assert all(REQUEST_ID.fullmatch(i) for i in ids) and len(set(ids)) == 3
            assert [r.request_id for r in log.records] == ids
            assert [r.productid for r in log.records] == [77, 78, None]
            for record, answer in zip(log.records, answers):
                assert record.predictions[0] == pytest.approx((answer.predictions[0].prdtypecode,
                                                              answer.predictions[0].probability))
                assert len(record.predictions) == len(answer.predictions)
                assert record.abstain == answer.abstain
                assert record.model_fingerprint == answer.versions.model_fingerprint
                assert record.model_release == answer.versions.model_release == server.engine.embedder.release
                assert record.latency_ms > 0
                assert record.embedding is not None and len(record.embedding) == server.engine.embedder.dim
            assert log.records[0].text_length == len("Lot de 3 tasses") + len("porcelaine blanche")
            assert log.records[0].has_description and not log.records[1].has_description
            assert not log.records[0].has_image and log.records[0].image_bytes == 0
            counted = sum(sample.value for metric in server.metrics.classified.collect()
                          for sample in metric.samples if sample.name.endswith("_total"))
            assert counted == 3

    asyncio.run(scenario())


def test_refused_products_are_not_recorded_and_embeddings_can_be_left_out() -> None:
    log = MemoryPredictionLog()

    async def scenario() -> None:
        async with running_server(log_double=log, prediction_log_embeddings=False) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            code, details = await status_of(stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(
                products=[product("ok"), product("")])))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "products[1]" in details
            code, details = await status_of(stub.Classify(classification_pb2.ClassifyRequest(
                product=product("ok", productid=-5))))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "product.productid" in details
            assert log.records == []
            await stub.Classify(classification_pb2.ClassifyRequest(product=product("Tapis de souris")))
            assert len(log.records) == 1 and log.records[0].embedding is None

    asyncio.run(scenario())


def test_without_a_prediction_log_classify_still_answers_with_request_ids() -> None:
    async def scenario() -> None:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            answer = await stub.Classify(classification_pb2.ClassifyRequest(product=product("Lampe de bureau")))
            assert REQUEST_ID.fullmatch(answer.request_id)

    asyncio.run(scenario())


# ------------------------------------------------------------------ SubmitFeedback


def test_feedback_without_a_prediction_log_says_how_to_enable_it() -> None:
    async def scenario() -> None:
        async with running_server() as (server, channel):
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            code, details = await status_of(stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(
                productid=1, prdtypecode=served_codes(server)[0])))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "--prediction-log" in details

    asyncio.run(scenario())


def test_feedback_confirms_or_corrects_the_logged_answer() -> None:
    log = MemoryPredictionLog()

    async def scenario() -> None:
        async with running_server(log_double=log) as (server, channel):
            answer = await classification_pb2_grpc.ClassificationServiceStub(channel).Classify(
                classification_pb2.ClassifyRequest(product=product("Lot de 3 tasses", productid=41)))
            predicted = answer.predictions[0].prdtypecode
            other = next(c for c in served_codes(server) if c != predicted)
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            confirm = await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(
                request_id=answer.request_id, prdtypecode=predicted, actor="shop-backend"))
            assert (confirm.productid, confirm.predicted_code, confirm.was_correct) == (41, predicted, True)
            correct = await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(
                productid=41, prdtypecode=other, actor="admin:alice",
                product=product("Lot de 3 tasses", description="porcelaine")))
            assert (correct.predicted_code, correct.was_correct) == (predicted, False)
            unmatched = await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(productid=999,
                                                                                    prdtypecode=other))
            assert not unmatched.HasField("was_correct") and not unmatched.HasField("predicted_code")
            assert REQUEST_ID.fullmatch(correct.feedback_id)
            stored = log.feedback[1]
            assert (stored.productid, stored.prdtypecode, stored.actor) == (41, other, "admin:alice")
            assert stored.product == ProductInput("Lot de 3 tasses", "porcelaine")
            kinds = {sample.labels["kind"]: sample.value for metric in server.metrics.feedback.collect()
                     for sample in metric.samples if sample.name.endswith("_total")}
            assert kinds == {"confirm": 1, "correct": 1, "unmatched": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize("fields, field", [
    ({}, "productid"),
    ({"productid": -1}, "productid"),
    ({"request_id": "not-an-id"}, "request_id"),
    ({"productid": 1, "feedback_id": "x" * 32}, "feedback_id"),
    ({"productid": 1, "prdtypecode": 123456}, "prdtypecode"),
    ({"productid": 1, "actor": "a" * 201}, "actor"),
    ({"productid": 1, "product": product("")}, "product"),
])
def test_invalid_feedback_is_refused_naming_the_field(fields: dict, field: str) -> None:
    log = MemoryPredictionLog()

    async def scenario() -> None:
        async with running_server(log_double=log) as (server, channel):
            request = feedback_pb2.SubmitFeedbackRequest(**{"prdtypecode": served_codes(server)[0], **fields})
            code, details = await status_of(feedback_pb2_grpc.FeedbackServiceStub(channel).SubmitFeedback(request))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith(field), details
            assert log.feedback == []

    asyncio.run(scenario())


def test_feedback_on_an_unknown_request_or_an_unreachable_log() -> None:
    log = MemoryPredictionLog()

    async def scenario() -> None:
        async with running_server(log_double=log) as (server, channel):
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            code, _ = await status_of(stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(
                request_id="0" * 32, prdtypecode=served_codes(server)[0])))
            assert code == grpc.StatusCode.NOT_FOUND
            log.database_up = False
            code, _ = await status_of(stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(
                productid=3, prdtypecode=served_codes(server)[0])))
            assert code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_the_python_client_sends_productids_and_feedback() -> None:
    log = MemoryPredictionLog()
    with serving(log_double=log) as target, ShopclipClient(target) as client:
        results = client.classify_batch(["Tasse", "Coussin", "Lampe"], productids=[5, None, 7], chunk_size=2)
        assert [r.productid for r in log.records] == [5, None, 7]
        assert [r.request_id for r in results] == [r.request_id for r in log.records]
        code = client.info().prdtypecodes[0]
        receipt = client.feedback(code, request_id=results[2].request_id, actor="test")
        assert receipt.productid == 7 and receipt.predicted_code == results[2].code
        assert receipt.was_correct == (results[2].code == code)
        assert log.feedback[0].feedback_id == receipt.feedback_id
        with pytest.raises(ValueError, match="productid"):
            client.feedback(code)


def test_the_cli_classifies_with_a_productid_and_sends_feedback(capsys: pytest.CaptureFixture[str]) -> None:
    from shopclip.cli import main

    log = MemoryPredictionLog()
    with serving(log_double=log) as target:
        assert main(["classify", "--target", target, "--title", "Lot de 3 tasses", "--productid", "12",
                     "--json"]) == 0
        predicted = log.records[0].top_code
        other = next(c for c in range(1000) if c != predicted and c in _codes(target))
        capsys.readouterr()
        assert main(["feedback", "--target", target, "--code", str(other), "--productid", "12",
                     "--actor", "admin:bob"]) == 0
        out = capsys.readouterr().out
        assert f"corrects prdtypecode {predicted} to {other}" in out and "productid 12" in out
        assert (log.feedback[0].actor, log.feedback[0].prdtypecode) == ("admin:bob", other)
        assert main(["feedback", "--target", target, "--code", str(other)]) == 2
        assert "--productid" in capsys.readouterr().err
        assert main(["feedback", "--target", target, "--code", "999999", "--productid", "1"]) == 2
        assert "prdtypecode" in capsys.readouterr().err


def _codes(target: str) -> tuple[int, ...]:
    with ShopclipClient(target) as client:
        return client.info().prdtypecodes

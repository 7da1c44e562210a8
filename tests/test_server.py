"""The real server on a free port, a real channel, the fake embedder from the same factory as real bundles, and
a real flat index that the indexer built and published from a tiny catalogue (`published_index`, conftest.py).
Assertions are on status codes and on answers recomputed independently from the embedder."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shopclip.indexer.published import LoadedIndex
from shopclip.model import load_embedder
from shopclip.products import ProductInput
from shopclip.server import app
from shopclip.server.app import SERVICE_NAMES
from shopclip.server.index_watch import PublishedIndexSource
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc, info_pb2,
                         info_pb2_grpc, product_pb2, search_pb2, search_pb2_grpc)
from support.catalogue import (CODES_IN_INDEX, FAKE_BUNDLE, catalogue_rows, catalogue_title, productid_of,
                              unlabelled_rows)
from support.embedders import SlowEmbedder, install_embedder
from support.images import jpeg_bytes, png_header
from support.index import PublishedCatalogue, build_catalogue_index
from support.server import health_status, running_server, server_config, status_of, wait_until


def classify_request(designation: str = "", top_k: int | None = None, **fields: object
                     ) -> classification_pb2.ClassifyRequest:
    return classification_pb2.ClassifyRequest(product=product_pb2.Product(designation=designation, **fields),
                                              top_k=top_k)


def indexed(published: PublishedCatalogue, **overrides: object) -> dict[str, object]:
    """Server overrides that serve `published`'s index root."""
    return {"index_root": published.index_root, **overrides}


# ------------------------------------------------------------------ Classify


def test_classify_without_index_ranks_the_head_probabilities() -> None:
    async def scenario() -> None:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            response = await stub.Classify(classify_request("Lot de 3 tasses en porcelaine", top_k=4))
        embedder = load_embedder(FAKE_BUNDLE)
        probs = embedder.classify_vectors(embedder.embed([ProductInput("Lot de 3 tasses en porcelaine")]))[0]
        expected = [embedder.codes[i] for i in np.argsort(-probs)[:4]]
        assert [p.prdtypecode for p in response.predictions] == expected
        assert response.predictions[0].probability == pytest.approx(probs.max(), rel=1e-5)
        assert not response.neighbors
        assert response.versions.model_fingerprint == embedder.fingerprint
        assert response.versions.model_release == embedder.release
        assert response.versions.index_version == ""

    asyncio.run(scenario())


def test_classify_votes_with_labelled_neighbours_of_the_index(published_index: PublishedCatalogue) -> None:
    code = CODES_IN_INDEX[2]

    async def scenario() -> None:
        async with running_server(**indexed(published_index)) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            response = await stub.Classify(classify_request(f"famille{code} sorte{code} neuf"))
        assert response.predictions[0].prdtypecode == code
        assert len(response.predictions) == 5  # default top_k
        probabilities = [p.probability for p in response.predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert response.versions.index_version == published_index.version
        voters = response.neighbors
        assert 0 < len(voters) <= 10
        assert [n.similarity for n in voters] == sorted((n.similarity for n in voters), reverse=True)
        assert voters[0].prdtypecode == code and voters[0].designation.startswith(f"famille{code} ")
        assert voters[0].imageid == voters[0].productid + 1

    asyncio.run(scenario())


@pytest.mark.parametrize("threshold, abstains", [(1.0, True), (0.0, False)])
def test_abstain_follows_the_configured_threshold(threshold: float, abstains: bool) -> None:
    async def scenario() -> bool:
        async with running_server(abstain_threshold=threshold) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return (await stub.Classify(classify_request("chaise de jardin"))).abstain

    assert asyncio.run(scenario()) is abstains


def test_classify_batch_answers_each_product_in_order(published_index: PublishedCatalogue) -> None:
    titles = [f"famille{code} sorte{code}" for code in CODES_IN_INDEX]

    async def scenario() -> classification_pb2.ClassifyBatchResponse:
        async with running_server(**indexed(published_index)) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(
                products=[product_pb2.Product(designation=t) for t in titles], top_k=2))

    response = asyncio.run(scenario())
    assert [r.predictions[0].prdtypecode for r in response.results] == list(CODES_IN_INDEX)
    assert all(len(r.predictions) == 2 for r in response.results)


def test_an_image_only_product_is_classified() -> None:
    async def scenario() -> classification_pb2.ClassifyResponse:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await stub.Classify(classify_request(image=jpeg_bytes()))

    assert len(asyncio.run(scenario()).predictions) == 5


# ------------------------------------------------------------------ validation


BIG = 10 * 1024 * 1024


@pytest.mark.parametrize("request_fields, field", [
    ({}, "product.designation"),
    ({"designation": "x" * 1001}, "product.designation"),
    ({"designation": "ok", "description": "y" * 20_001}, "product.description"),
    ({"designation": "ok", "image": b"definitely not an image"}, "product.image"),
    ({"designation": "ok", "image": b"\xff\xd8" + b"\0" * (BIG + 1)}, "product.image"),
    ({"designation": "ok", "image": png_header(20_000, 20_000)}, "product.image"),
    ({"designation": "ok", "image": b""}, "product.image"),
])
def test_invalid_products_are_refused_naming_the_field(request_fields: dict, field: str) -> None:
    async def scenario() -> tuple[grpc.StatusCode, str]:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await status_of(stub.Classify(classify_request(**request_fields)))

    code, details = asyncio.run(scenario())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":")


def test_decompression_bomb_is_named_as_such() -> None:
    async def scenario() -> tuple[grpc.StatusCode, str]:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await status_of(stub.Classify(classify_request("ok", image=png_header(8000, 6000))))

    code, details = asyncio.run(scenario())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "decompression bomb" in details


@pytest.mark.parametrize("top_k", [0, 51, -3])
def test_top_k_out_of_range_is_refused(top_k: int) -> None:
    async def scenario() -> tuple[grpc.StatusCode, str]:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await status_of(stub.Classify(classify_request("ok", top_k=top_k)))

    code, details = asyncio.run(scenario())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("top_k:")


def test_batch_limits_name_the_offending_product() -> None:
    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            too_many = classification_pb2.ClassifyBatchRequest(
                products=[product_pb2.Product(designation="a")] * 257)
            one_bad = classification_pb2.ClassifyBatchRequest(
                products=[product_pb2.Product(designation="a"), product_pb2.Product()])
            empty = embedding_pb2.EmbedRequest()
            return [await status_of(stub.ClassifyBatch(too_many)), await status_of(stub.ClassifyBatch(one_bad)),
                    await status_of(embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(empty))]

    (code1, details1), (code2, details2), (code3, details3) = asyncio.run(scenario())
    assert {code1, code2, code3} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert details1.startswith("products:") and "257" in details1
    assert details2.startswith("products[1].designation:")
    assert details3.startswith("products:")


def test_an_image_the_model_cannot_decode_fails_only_its_own_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The header passes validation but the model's decoding raises InvalidInput inside a shared batch."""
    from shopclip.errors import InvalidInput

    truncated = png_header(64, 64)  # a valid header, too little pixel data: only decoding finds the problem

    class PickyEmbedder(SlowEmbedder):
        def embed(self, products):  # type: ignore[no-untyped-def]
            if any(p.image == truncated for p in products):
                raise InvalidInput("products[1].image", "truncated image data")
            return super().embed(products)

    install_embedder(monkeypatch, PickyEmbedder(0.05))

    async def scenario() -> list[object]:
        async with running_server(max_wait_ms=50) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            calls = [stub.Classify(classify_request("bon produit")),
                     stub.Classify(classify_request("mauvais", image=truncated)),
                     stub.Classify(classify_request("autre produit"))]
            return await asyncio.gather(*calls, return_exceptions=True)

    good1, bad, good2 = asyncio.run(scenario())
    assert isinstance(good1, classification_pb2.ClassifyResponse)
    assert isinstance(good2, classification_pb2.ClassifyResponse)
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details() == "product.image: truncated image data"  # the caller's name, not the batch's


# ------------------------------------------------------------------ Search, Embed, GetInfo


def test_search_by_productid_excludes_itself_and_filters_by_code(published_index: PublishedCatalogue) -> None:
    code = CODES_IN_INDEX[1]
    query_id = productid_of(code, 2)

    async def scenario() -> tuple[search_pb2.SearchSimilarResponse, search_pb2.SearchSimilarResponse]:
        async with running_server(**indexed(published_index)) as (_, channel):
            stub = search_pb2_grpc.SearchServiceStub(channel)
            near = await stub.SearchSimilar(search_pb2.SearchSimilarRequest(productid=query_id, top_k=3))
            other = await stub.SearchSimilar(search_pb2.SearchSimilarRequest(
                productid=query_id, prdtypecode=CODES_IN_INDEX[0]))
            return near, other

    near, other = asyncio.run(scenario())
    assert len(near.results) == 3 and query_id not in [r.productid for r in near.results]
    assert {r.prdtypecode for r in near.results} == {code}
    assert len(other.results) == 5 and {r.prdtypecode for r in other.results} == {CODES_IN_INDEX[0]}
    assert near.versions.index_version == published_index.version


def test_search_by_text_finds_the_matching_products(published_index: PublishedCatalogue) -> None:
    async def scenario() -> search_pb2.SearchSimilarResponse:
        async with running_server(**indexed(published_index)) as (_, channel):
            stub = search_pb2_grpc.SearchServiceStub(channel)
            return await stub.SearchSimilar(search_pb2.SearchSimilarRequest(
                product=product_pb2.Product(designation=catalogue_title(7, 3)), top_k=1))

    (hit,) = asyncio.run(scenario()).results
    assert hit.productid == productid_of(7, 3) and hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_search_errors_not_found_and_unavailable(published_index: PublishedCatalogue) -> None:
    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        out = []
        async with running_server(**indexed(published_index)) as (_, channel):
            stub = search_pb2_grpc.SearchServiceStub(channel)
            out.append(await status_of(stub.SearchSimilar(search_pb2.SearchSimilarRequest(productid=123456))))
            out.append(await status_of(stub.SearchSimilar(search_pb2.SearchSimilarRequest(productid=7001, top_k=101))))
            out.append(await status_of(stub.SearchSimilar(search_pb2.SearchSimilarRequest())))
        async with running_server() as (_, channel):  # no index at all
            stub = search_pb2_grpc.SearchServiceStub(channel)
            out.append(await status_of(stub.SearchSimilar(search_pb2.SearchSimilarRequest(productid=7001))))
        return out

    (c1, d1), (c2, d2), (c3, d3), (c4, _) = asyncio.run(scenario())
    assert c1 == grpc.StatusCode.NOT_FOUND and "123456" in d1
    assert c2 == grpc.StatusCode.INVALID_ARGUMENT and d2.startswith("top_k:")
    assert c3 == grpc.StatusCode.INVALID_ARGUMENT and d3.startswith("query:")
    assert c4 == grpc.StatusCode.UNAVAILABLE


def test_embed_returns_the_model_vectors() -> None:
    products = [ProductInput("tasse"), ProductInput("", "une longue description")]

    async def scenario() -> embedding_pb2.EmbedResponse:
        async with running_server() as (_, channel):
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            return await stub.Embed(embedding_pb2.EmbedRequest(products=[
                product_pb2.Product(designation="tasse"), product_pb2.Product(description="une longue description")]))

    response = asyncio.run(scenario())
    expected = load_embedder(FAKE_BUNDLE).embed(products)
    got = np.array([e.values for e in response.embeddings], dtype=np.float32)
    assert response.dim == 32 and got.shape == (2, 32)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_get_info_describes_model_and_index(published_index: PublishedCatalogue) -> None:
    async def scenario() -> info_pb2.GetInfoResponse:
        async with running_server(**indexed(published_index, abstain_threshold=0.3)) as (_, channel):
            return await info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest())

    info = asyncio.run(scenario())
    assert list(info.prdtypecodes) == list(range(27)) and info.embed_dim == 32
    assert info.architecture == "fake" and info.knn_k == 10
    assert info.index_size == len(catalogue_rows()) + len(unlabelled_rows())
    assert info.index_type == info_pb2.INDEX_TYPE_FLAT
    assert info.versions.index_version == published_index.version and info.abstain_threshold == pytest.approx(0.3)


# ------------------------------------------------------------------ health, reflection


def test_health_waits_for_the_first_published_index(tmp_path: Path) -> None:
    async def scenario() -> None:
        index_root = str(tmp_path / "index")  # where build_catalogue_index(tmp_path) publishes
        async with running_server(index_root=index_root, poll_interval_s=0.05) as (server, channel):
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            code, _ = await status_of(stub.Classify(classify_request("tasse")))
            assert code == grpc.StatusCode.UNAVAILABLE
            published = await asyncio.to_thread(build_catalogue_index, tmp_path)
            for _ in range(200):
                if await health_status(channel) == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.02)
            for name in SERVICE_NAMES:
                assert await health_status(channel, name) == health_pb2.HealthCheckResponse.SERVING
            assert (await stub.Classify(classify_request("tasse"))).versions.index_version == published.version

    asyncio.run(scenario())


def test_reflection_lists_every_service() -> None:
    async def scenario() -> set[str]:
        async with running_server() as (_, channel):
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for response in responses:
                return {s.name for s in response.list_services_response.service}
        return set()

    assert asyncio.run(scenario()) == set(SERVICE_NAMES)


def test_drain_finishes_in_flight_calls_and_reports_not_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    install_embedder(monkeypatch, SlowEmbedder(0.3))

    async def scenario() -> None:
        async with running_server() as (server, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.Classify(classify_request("tasse")))
            await asyncio.sleep(0.1)
            stopping = asyncio.ensure_future(server.stop(grace=5))
            await asyncio.sleep(0.05)
            check = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert len((await in_flight).predictions) == 5
            await stopping
            code, _ = await status_of(stub.Classify(classify_request("tasse"), timeout=1))
            assert code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


# ------------------------------------------------------------------ load: queue, deadlines, internal errors


def test_full_queue_answers_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    install_embedder(monkeypatch, SlowEmbedder(0.2))

    async def scenario() -> list[object]:
        async with running_server(max_batch=1, queue_size=1, max_wait_ms=0) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await asyncio.gather(*(stub.Classify(classify_request(f"p{i}")) for i in range(6)),
                                        return_exceptions=True)

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert refused and all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
    assert len(refused) < len(outcomes)


def test_expired_request_never_reaches_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = SlowEmbedder(0.3)
    install_embedder(monkeypatch, embedder)

    async def scenario() -> tuple[object, grpc.StatusCode]:
        async with running_server(max_batch=1, max_wait_ms=0) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            first = asyncio.ensure_future(stub.Classify(classify_request("premier")))
            await asyncio.sleep(0.05)
            code, _ = await status_of(stub.Classify(classify_request("en retard"), timeout=0.1))
            result = await first
            await asyncio.sleep(0.4)  # the late one would have been embedded by now
            return result, code

    first, code = asyncio.run(scenario())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(first, classification_pb2.ClassifyResponse)
    assert "en retard" not in embedder.seen


def test_unexpected_errors_are_internal_with_a_generic_message(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    embedder = SlowEmbedder(0.0, fail_with=RuntimeError("secret path /models/x.safetensors"))
    install_embedder(monkeypatch, embedder)

    async def scenario() -> tuple[grpc.StatusCode, str]:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await status_of(stub.Classify(classify_request("tasse")))

    code, details = asyncio.run(scenario())
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details
    logged = [r for r in caplog.records if r.name == "shopclip.server.errors"]
    assert logged and logged[0].exc_info is not None and "secret" in str(logged[0].exc_info[1])


def test_concurrent_classify_calls_share_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = SlowEmbedder(0.05)
    install_embedder(monkeypatch, embedder)

    async def scenario() -> list[classification_pb2.ClassifyResponse]:
        async with running_server(max_batch=32, max_wait_ms=5) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await asyncio.gather(*(stub.Classify(classify_request(f"produit {i}")) for i in range(24)))

    responses = asyncio.run(scenario())
    assert len(responses) == 24 and sum(embedder.batch_sizes) == 24
    assert len(embedder.batch_sizes) < 12 and max(embedder.batch_sizes) > 1


def test_the_model_is_loaded_and_run_on_the_forward_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch keeps one OpenMP thread team per calling thread; a second team made every forward ~50% slower
    (measured), so the model is loaded on the thread that runs it, and nothing else runs it."""
    embedder = SlowEmbedder(0.0)
    threads: dict[str, set[str]] = {"load": set(), "forward": set()}

    def load(spec: str, device: str | None = None, limits: object = None, read_image_words: bool = True
             ) -> SlowEmbedder:
        threads["load"].add(threading.current_thread().name)
        return embedder

    def embed(products: Sequence[ProductInput]) -> np.ndarray:
        threads["forward"].add(threading.current_thread().name)
        return SlowEmbedder.embed(embedder, products)

    monkeypatch.setattr(app, "load_embedder", load)
    monkeypatch.setattr(embedder, "embed", embed)

    async def scenario() -> None:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            await asyncio.gather(*(stub.Classify(classify_request(f"produit {i}")) for i in range(8)))

    asyncio.run(scenario())
    assert len(threads["load"]) == 1 and threads["forward"] == threads["load"]
    assert threads["load"].pop().startswith("shopclip-forward")


@pytest.mark.parametrize("read_image_words", [True, False])
def test_the_server_loads_its_model_reading_image_words_as_configured(monkeypatch, read_image_words: bool) -> None:
    """`--no-read-image-words` reaches the loaded model (an OCR view's words are then never read)."""
    asked: list[bool] = []

    def load(spec: str, device: str | None = None, limits: object = None, read_image_words: bool = True
             ) -> SlowEmbedder:
        asked.append(read_image_words)
        return SlowEmbedder(0.0)

    monkeypatch.setattr(app, "load_embedder", load)

    async def scenario() -> None:
        async with running_server(read_image_words=read_image_words):
            pass

    asyncio.run(scenario())
    assert asked == [read_image_words]


# ------------------------------------------------------------------ hot swap


class SlowPublishedSource(PublishedIndexSource):
    """The published index root, each open `delay_s` late and recording the thread it ran on: shows that a slow
    load runs off the event loop while the previous version keeps answering."""

    def __init__(self, root: str, delay_s: float) -> None:
        super().__init__(root)
        self.delay_s = delay_s
        self.opened_on_threads: list[str] = []

    def open(self) -> LoadedIndex:
        self.opened_on_threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().open()


def test_hot_swap_under_concurrent_classify_has_zero_failures(tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path)
    first = published.version
    source = SlowPublishedSource(published.index_root, delay_s=0.3)

    async def scenario() -> tuple[list[str], list[Exception], int, str]:
        seen: list[str] = []
        failures: list[Exception] = []
        async with running_server(source, poll_interval_s=0.05) as (server, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            stop = asyncio.Event()

            async def client(i: int) -> None:
                while not stop.is_set():
                    try:
                        response = await stub.Classify(classify_request(f"famille3 sorte3 essai{i}"))
                        seen.append(response.versions.index_version)
                    except grpc.aio.AioRpcError as exc:
                        failures.append(exc)

            clients = [asyncio.ensure_future(client(i)) for i in range(8)]
            await asyncio.sleep(0.2)
            dropped = [row.productid for row in catalogue_rows()[-2:]]
            second = await asyncio.to_thread(published.publish_without, dropped)
            await wait_until(lambda: len(source.opened_on_threads) >= 2)  # the load of `second` has begun
            load_began = len(seen)
            await wait_until(lambda: server.engine.index is not None and server.engine.index.version == second, 10)
            await wait_until(lambda: bool(seen) and seen[-1] == second)
            stop.set()
            await asyncio.gather(*clients)
            assert len(server.engine.index) == len(catalogue_rows()) - 2
        return seen, failures, load_began, second

    seen, failures, load_began, second = asyncio.run(scenario())
    assert failures == []
    assert first in seen[load_began:]  # served from the old version while the new one loaded (0.3 s, off the loop)
    assert seen[-1] == second and seen.index(second) > seen.index(first)
    assert seen[seen.index(second):].count(first) == 0  # never back to the old version once swapped
    assert source.opened_on_threads and all(name != "MainThread" for name in source.opened_on_threads)


def test_an_index_of_another_model_is_not_swapped_in_when_the_server_does_not_follow_models(tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path)
    first = published.version

    async def scenario() -> tuple[str, str, int]:
        async with running_server(index_root=published.index_root, poll_interval_s=0.05, follow_model=False
                                  ) as (server, channel):
            await asyncio.to_thread(published.publish, "fake:dim=32,classes=28")  # same dim, another model
            await wait_until(lambda: server.watcher is not None and server.watcher.problem is not None, 10)
            assert server.engine.index is not None
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            answered = (await stub.Classify(classify_request("famille3 sorte3"))).versions.index_version
            return server.watcher.problem, answered, await health_status(channel, app.INDEX_HEALTH_SERVICE)

    problem, answered, index_health = asyncio.run(scenario())
    assert answered == first
    assert "fake-32-28" in problem and published.version in problem
    assert index_health == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("model_section", ["missing", None, {}, {"fingerprint": "fake-32-27"}])
def test_an_index_whose_manifest_does_not_name_its_model_is_refused(
        published_index: PublishedCatalogue, tmp_path: Path, model_section: object) -> None:
    """A version written by a builder that did not record its model (an old format, a hand-made index) on disk:
    it loads, but the engine refuses to serve vectors nothing proves are its own."""
    from shopclip.errors import NotReady
    from shopclip.server.engine import Engine

    directory = copy_current_version(published_index, tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    if model_section == "missing":
        del manifest["model"]
    else:
        manifest["model"] = model_section
    (directory / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine(load_embedder(FAKE_BUNDLE), abstain_threshold=0.5, index_required=True)
    with pytest.raises(NotReady, match="does not say which model"):
        engine.swap_index(LoadedIndex(directory))
    assert engine.index is None


def copy_current_version(published: PublishedCatalogue, tmp_path: Path) -> Path:
    """A copy of `published`'s live version directory (so a test may damage it)."""
    source = Path(published.index_root) / "versions" / published.version
    return Path(shutil.copytree(source, tmp_path / published.version))


# ------------------------------------------------------------------ auth, TLS, metrics


def test_bearer_token_is_required_except_for_health() -> None:
    async def scenario() -> list[object]:
        out: list[object] = []
        async with running_server(token="s3cret") as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            request = classify_request("tasse")
            out.append(await status_of(stub.Classify(request)))
            out.append(await status_of(stub.Classify(request, metadata=(("authorization", "Bearer nope"),))))
            out.append(await stub.Classify(request, metadata=(("authorization", "Bearer s3cret"),)))
            out.append(await health_status(channel))
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            out.append(await status_of(reflection.read()))
        return out

    no_token, wrong, ok, health, reflection = asyncio.run(scenario())
    assert no_token[0] == wrong[0] == reflection[0] == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(ok, classification_pb2.ClassifyResponse)
    assert health == health_pb2.HealthCheckResponse.SERVING


def app_calls(channel: grpc.aio.Channel) -> dict[str, Callable[..., object]]:
    """One valid call of each RPC the services expose, by method name, taking call options (metadata=...)."""
    classify = classification_pb2_grpc.ClassificationServiceStub(channel)
    search = search_pb2_grpc.SearchServiceStub(channel)
    product = product_pb2.Product(designation="tasse")
    return {
        "Classify": lambda **kw: classify.Classify(classification_pb2.ClassifyRequest(product=product), **kw),
        "ClassifyBatch": lambda **kw: classify.ClassifyBatch(
            classification_pb2.ClassifyBatchRequest(products=[product]), **kw),
        "SearchSimilar": lambda **kw: search.SearchSimilar(search_pb2.SearchSimilarRequest(product=product), **kw),
        "Embed": lambda **kw: embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embedding_pb2.EmbedRequest(products=[product]), **kw),
        "GetInfo": lambda **kw: info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest(), **kw),
    }


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "s3cret", "Bearer s3cret2", "Bearer  s3cret",
                                           "Basic s3cret", "Bearer "])
def test_every_rpc_refuses_a_missing_or_wrong_token(published_index: PublishedCatalogue,
                                                    authorization: str | None) -> None:
    """No token, a wrong one, the right secret without its scheme or with another, a longer one: UNAUTHENTICATED
    on every RPC of every service, and the right token still answers each of them afterwards."""
    refused_metadata = () if authorization is None else (("authorization", authorization),)

    async def scenario() -> tuple[dict[str, grpc.StatusCode], list[str]]:
        async with running_server(**indexed(published_index, token="s3cret")) as (_, channel):
            calls = app_calls(channel)
            refused = {name: (await status_of(call(metadata=refused_metadata, timeout=10)))[0]
                       for name, call in calls.items()}
            accepted = [type(await call(metadata=(("authorization", "Bearer s3cret"),), timeout=10)).__name__
                        for call in calls.values()]
        return refused, accepted

    refused, accepted = asyncio.run(scenario())
    assert set(refused) == {"Classify", "ClassifyBatch", "SearchSimilar", "Embed", "GetInfo"}
    assert set(refused.values()) == {grpc.StatusCode.UNAUTHENTICATED}
    assert accepted == ["ClassifyResponse", "ClassifyBatchResponse", "SearchSimilarResponse", "EmbedResponse",
                        "GetInfoResponse"]


def test_tls_with_a_self_signed_certificate(tls_certificate) -> None:  # type: ignore[no-untyped-def]
    cert, key = tls_certificate.cert, tls_certificate.key

    async def scenario() -> tuple[classification_pb2.ClassifyResponse, grpc.StatusCode]:
        server, port = await app.create_server(server_config(tls_cert=str(cert), tls_key=str(key)))
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                stub = classification_pb2_grpc.ClassificationServiceStub(channel)
                response = await stub.Classify(classify_request("tasse"), timeout=10)
            async with grpc.aio.insecure_channel(f"localhost:{port}") as plain:
                stub = classification_pb2_grpc.ClassificationServiceStub(plain)
                code, _ = await status_of(stub.Classify(classify_request("tasse"), timeout=2))
            return response, code
        finally:
            await server.stop(0)

    response, plaintext_code = asyncio.run(scenario())
    assert len(response.predictions) == 5
    assert plaintext_code == grpc.StatusCode.UNAVAILABLE


def test_tls_client_to_a_plaintext_server_is_unavailable(tls_certificate) -> None:  # type: ignore[no-untyped-def]
    """The handshake fails: UNAVAILABLE, quickly, and the server still answers plaintext callers."""
    async def scenario() -> tuple[grpc.StatusCode, int]:
        async with running_server() as (server, plain):
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_certificate.cert_pem)
            async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
                stub = classification_pb2_grpc.ClassificationServiceStub(channel)
                code, _ = await status_of(stub.Classify(classify_request("tasse"), timeout=5))
            stub = classification_pb2_grpc.ClassificationServiceStub(plain)
            return code, len((await stub.Classify(classify_request("tasse"), timeout=10)).predictions)

    code, answered = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNAVAILABLE
    assert answered == 5


def test_tls_client_that_does_not_trust_the_certificate_is_unavailable(tls_certificate, tmp_path: Path
                                                                       ) -> None:  # type: ignore[no-untyped-def]
    """A client whose root is another CA refuses the server's certificate (no silent fallback to trust)."""
    from support.certs import make_certificate

    stranger = make_certificate(tmp_path / "stranger")
    cert, key = tls_certificate.cert, tls_certificate.key

    async def scenario() -> grpc.StatusCode:
        async with running_server(tls_cert=str(cert), tls_key=str(key), token="s3cret") as (server, _):
            credentials = grpc.ssl_channel_credentials(root_certificates=stranger.cert_pem)
            async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
                stub = classification_pb2_grpc.ClassificationServiceStub(channel)
                code, _ = await status_of(stub.Classify(classify_request("tasse"), timeout=5,
                                                        metadata=(("authorization", "Bearer s3cret"),)))
            return code

    assert asyncio.run(scenario()) == grpc.StatusCode.UNAVAILABLE


def test_token_over_tls_is_still_required(tls_certificate) -> None:  # type: ignore[no-untyped-def]
    """TLS authenticates the server, not the caller: without the token a TLS call is UNAUTHENTICATED."""
    cert, key = tls_certificate.cert, tls_certificate.key

    async def scenario() -> tuple[grpc.StatusCode, int]:
        async with running_server(tls_cert=str(cert), tls_key=str(key), token="s3cret") as (server, _):
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
                stub = classification_pb2_grpc.ClassificationServiceStub(channel)
                code, _ = await status_of(stub.Classify(classify_request("tasse"), timeout=10))
                return code, await health_status(channel)

    code, health = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert health == health_pb2.HealthCheckResponse.SERVING


def test_metrics_endpoint_counts_requests_batches_and_versions(published_index: PublishedCatalogue) -> None:
    async def scenario() -> str:
        async with running_server(**indexed(published_index, metrics_port=0)) as (server, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            await asyncio.gather(*(stub.Classify(classify_request(f"tasse {i}")) for i in range(3)))
            await status_of(stub.Classify(classify_request("")))
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())

    text = asyncio.run(scenario())
    method = "/shopclip.v1.ClassificationService/Classify"
    assert f'shopclip_requests_total{{code="OK",method="{method}"}} 3.0' in text
    assert f'shopclip_requests_total{{code="INVALID_ARGUMENT",method="{method}"}} 1.0' in text
    assert f'shopclip_request_latency_seconds_count{{method="{method}"}} 4.0' in text
    assert "shopclip_batch_size_sum 3.0" in text
    assert "shopclip_queue_depth 0.0" in text
    assert 'shopclip_model_info{architecture="fake",fingerprint="fake-32-27",release="fake-32-27"} 1.0' in text
    assert f'shopclip_index_info{{version="{published_index.version}"}} 1.0' in text
    assert "shopclip_ready 1.0" in text


def test_a_taken_port_is_a_clear_error() -> None:
    from shopclip.errors import InvalidInput

    async def scenario() -> None:
        async with running_server() as (server, _):
            with pytest.raises(InvalidInput) as error:
                await app.create_server(server_config(port=server.port))
            assert error.value.field == "port"

    asyncio.run(scenario())

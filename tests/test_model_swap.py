"""The server follows the model of the published index: a version built with another model is served with that
model, the two swapped together under load with no failed call and no answer that pairs a model with an index
of another; activating the previous version (a rollback) brings the previous pair back; a model that cannot be
loaded leaves the served pair in place and says why. Real server, real published flat indexes, fake models of
two dimensions (the same factory as real bundles), so a vector of the wrong model would not even fit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from shopclip.indexer import publish
from shopclip.indexer.build import BuildOptions, build_and_publish
from shopclip.model import FakeEmbedder
from shopclip.server import app
from shopclip.v1 import (classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc, info_pb2, info_pb2_grpc,
                         product_pb2, search_pb2, search_pb2_grpc)
from support.catalogue import FAKE_BUNDLE
from support.index import build_catalogue_index
from support.server import health_status, running_server, wait_until
from test_server import classify_request

NEW_BUNDLE = "fake:dim=24,classes=28"
OLD_MODEL, NEW_MODEL = "fake-32-27", "fake-24-28"
DIMS = {OLD_MODEL: 32, NEW_MODEL: 24}


class Answers:
    """What the load generator saw: (model, index) of every answer, per client in order, and failures."""

    def __init__(self) -> None:
        self.pairs: dict[int, list[tuple[str, str]]] = {}
        self.failures: list[grpc.aio.AioRpcError] = []
        self.wrong_dims: list[tuple[str, int]] = []

    def seen(self) -> set[tuple[str, str]]:
        return {pair for pairs in self.pairs.values() for pair in pairs}


async def load(channel: grpc.aio.Channel, answers: Answers, stop: asyncio.Event, client: int) -> None:
    """Classify, Embed and search by product in turn until `stop`, recording the versions of each answer."""
    classify = classification_pb2_grpc.ClassificationServiceStub(channel)
    embed = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    search = search_pb2_grpc.SearchServiceStub(channel)
    pairs = answers.pairs.setdefault(client, [])
    text = f"famille3 sorte3 essai{client}"
    product = product_pb2.Product(designation=text)
    while not stop.is_set():
        try:
            versions = (await classify.Classify(classify_request(text))).versions
            pairs.append((versions.model_fingerprint, versions.index_version))
            embedded = await embed.Embed(embedding_pb2.EmbedRequest(products=[product] * 3))
            model = embedded.versions.model_fingerprint
            if embedded.dim != DIMS[model] or any(len(e.values) != DIMS[model] for e in embedded.embeddings):
                answers.wrong_dims.append((model, embedded.dim))
            found = await search.SearchSimilar(search_pb2.SearchSimilarRequest(product=product, top_k=3))
            pairs.append((found.versions.model_fingerprint, found.versions.index_version))
        except grpc.aio.AioRpcError as exc:
            answers.failures.append(exc)


async def served_info(channel: grpc.aio.Channel) -> info_pb2.GetInfoResponse:
    return await info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest())


def test_a_new_model_and_its_index_swap_in_together_under_load_and_a_rollback_brings_the_old_pair_back(
        tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path)
    first = published.version

    async def scenario() -> tuple[Answers, str, info_pb2.GetInfoResponse, info_pb2.GetInfoResponse, float]:
        answers, stop = Answers(), asyncio.Event()
        async with running_server(index_root=published.index_root, poll_interval_s=0.05) as (server, channel):
            clients = [asyncio.ensure_future(load(channel, answers, stop, i)) for i in range(6)]
            await asyncio.sleep(0.2)
            second = await asyncio.to_thread(published.publish, NEW_BUNDLE)
            await wait_until(lambda: server.engine.versions().index_version == second, 15)
            await asyncio.sleep(0.3)  # answers from the new pair
            after_swap = await served_info(channel)
            rollback_started = time.monotonic()
            await asyncio.to_thread(publish.activate_version, published.index_root, first)
            await wait_until(lambda: server.engine.versions().index_version == first, 10)
            rollback_s = time.monotonic() - rollback_started
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*clients)
            return answers, second, after_swap, await served_info(channel), rollback_s

    answers, second, after_swap, after_rollback, rollback_s = asyncio.run(scenario())
    assert answers.failures == [] and answers.wrong_dims == []
    assert answers.seen() == {(OLD_MODEL, first), (NEW_MODEL, second)}  # never a model with another's index
    assert (after_swap.versions.model_fingerprint, after_swap.versions.index_version) == (NEW_MODEL, second)
    assert after_swap.embed_dim == 24 and len(after_swap.prdtypecodes) == 28
    assert (after_rollback.versions.model_fingerprint, after_rollback.versions.index_version) == (OLD_MODEL, first)
    assert rollback_s < 10
    for pairs in answers.pairs.values():  # each client: old pair, new pair, old pair again, in that order
        runs = [pair for i, pair in enumerate(pairs) if i == 0 or pairs[i - 1] != pair]
        assert runs in ([(OLD_MODEL, first), (NEW_MODEL, second), (OLD_MODEL, first)],
                        [(OLD_MODEL, first), (NEW_MODEL, second)], [(NEW_MODEL, second), (OLD_MODEL, first)])


def test_a_retrain_that_changed_only_the_classifier_reaches_the_server_and_a_rollback_brings_the_old_one_back(
        tmp_path: Path) -> None:
    """Same weights (fingerprint, so every vector is reused), another classifier (release): the version published
    with the retrained model makes the server load it, and activating the earlier version brings the earlier
    classifier back. Comparing fingerprints alone, the server would have kept answering with the old classifier."""
    published = build_catalogue_index(tmp_path)
    first = published.version
    retrained = FakeEmbedder(release="b")

    async def classify_versions(channel: grpc.aio.Channel) -> product_pb2.Versions:
        stub = classification_pb2_grpc.ClassificationServiceStub(channel)
        return (await stub.Classify(classify_request("famille3 sorte3"))).versions

    async def scenario() -> tuple[product_pb2.Versions, str, product_pb2.Versions, product_pb2.Versions]:
        async with running_server(index_root=published.index_root, poll_interval_s=0.05) as (server, channel):
            before = await classify_versions(channel)
            second = await asyncio.to_thread(published.publish, retrained.source)
            await wait_until(lambda: server.engine.versions().index_version == second, 15)
            after = await classify_versions(channel)
            await asyncio.to_thread(publish.activate_version, published.index_root, first)
            await wait_until(lambda: server.engine.versions().index_version == first, 10)
            return before, second, after, await classify_versions(channel)

    before, second, after, back = asyncio.run(scenario())
    assert retrained.fingerprint == OLD_MODEL and retrained.release != OLD_MODEL
    assert (before.model_fingerprint, before.model_release, before.index_version) == (OLD_MODEL, OLD_MODEL, first)
    assert (after.model_fingerprint, after.model_release, after.index_version) == (OLD_MODEL, retrained.release,
                                                                                   second)
    assert (back.model_fingerprint, back.model_release, back.index_version) == (OLD_MODEL, OLD_MODEL, first)


def publish_with_model_at(published, bundle_location: str) -> str:
    """Publish the catalogue embedded by another model whose manifest records `bundle_location` as its bundle."""
    embedder = FakeEmbedder(dim=24, codes=range(28))
    embedder.source = bundle_location
    return build_and_publish(published.catalogue, published.index_root, embedder, BuildOptions()).version


def test_an_index_whose_model_cannot_be_loaded_leaves_the_served_pair_and_says_why(tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path)
    first = published.version
    missing = str(tmp_path / "no-such-bundle")

    async def scenario() -> tuple[str, str, str, int, int]:
        async with running_server(index_root=published.index_root, poll_interval_s=0.05) as (server, channel):
            second = await asyncio.to_thread(publish_with_model_at, published, missing)
            await wait_until(lambda: server.watcher is not None and server.watcher.problem is not None, 10)
            answered = (await classification_pb2_grpc.ClassificationServiceStub(channel).Classify(
                classify_request("famille3 sorte3"))).versions
            return (server.watcher.problem, second, f"{answered.model_fingerprint}/{answered.index_version}",
                    await health_status(channel, app.INDEX_HEALTH_SERVICE), await health_status(channel))

    problem, second, answered, index_health, service_health = asyncio.run(scenario())
    assert answered == f"{OLD_MODEL}/{first}"
    assert second in problem and "no-such-bundle" in problem
    assert index_health == health_pb2.HealthCheckResponse.NOT_SERVING  # monitoring sees it
    assert service_health == health_pb2.HealthCheckResponse.SERVING  # callers are still answered


def test_an_index_of_another_model_that_does_not_say_where_its_model_is_is_refused(tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path)

    async def scenario() -> tuple[str, str]:
        async with running_server(index_root=published.index_root, poll_interval_s=0.05) as (server, _):
            second = await asyncio.to_thread(publish_with_model_at, published, "")
            await wait_until(lambda: server.watcher is not None and server.watcher.problem is not None, 10)
            assert server.engine.embedder.fingerprint == OLD_MODEL
            return server.watcher.problem, second

    problem, second = asyncio.run(scenario())
    assert second in problem and "model.bundle" in problem


def test_the_bundle_location_is_recorded_in_the_manifest(tmp_path: Path) -> None:
    published = build_catalogue_index(tmp_path, bundle=FAKE_BUNDLE)
    manifest = publish.read_manifest(published.index_root, published.version)
    assert manifest["model"]["bundle"] == FAKE_BUNDLE and manifest["model"]["fingerprint"] == OLD_MODEL

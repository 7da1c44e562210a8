"""The server over a real model bundle (small, randomly initialised: no pretrained weights needed) and an index
that bundle built through the real indexer, so the model's own preprocessing decodes images inside
micro-batches and the bundle's k-NN params reach GetInfo and Classify's voters."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from shopclip.model import load_embedder
from shopclip.products import ProductInput
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc, info_pb2,
                         info_pb2_grpc, product_pb2)
from support.bundles import TINY_BUNDLE_CODES, tiny_bundle
from support.catalogue import catalogue_rows
from support.images import jpeg_bytes, png_header
from support.index import PublishedCatalogue, build_catalogue_index
from support.server import running_server

CODES = list(TINY_BUNDLE_CODES)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_bundle(Path(tmp_path_factory.mktemp("bundle")), metrics={"test_weighted_f1": 0.61})


@pytest.fixture(scope="module")
def bundle_index(bundle: str, tmp_path_factory: pytest.TempPathFactory) -> PublishedCatalogue:
    """The support catalogue embedded by the bundle and published (so Classify votes with the bundle's k-NN)."""
    return build_catalogue_index(Path(tmp_path_factory.mktemp("bundle-index")), catalogue_rows(CODES[:4]),
                                 bundle=bundle)


def test_classify_embed_and_info_over_a_real_bundle(bundle: str, bundle_index: PublishedCatalogue) -> None:
    image = jpeg_bytes((80, 60))

    async def scenario() -> tuple[list[classification_pb2.ClassifyResponse], embedding_pb2.EmbedResponse,
                                  info_pb2.GetInfoResponse]:
        async with running_server(bundle=bundle, index_root=bundle_index.index_root, max_wait_ms=20) as (
                _, channel):
            classify = classification_pb2_grpc.ClassificationServiceStub(channel)
            answers = await asyncio.gather(
                classify.Classify(classification_pb2.ClassifyRequest(
                    product=product_pb2.Product(designation="Chaise de jardin pliante"), top_k=3)),
                classify.Classify(classification_pb2.ClassifyRequest(product=product_pb2.Product(image=image))),
                classify.Classify(classification_pb2.ClassifyRequest(
                    product=product_pb2.Product(designation="Lampe", description="<b>LED</b>", image=image))))
            embedded = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(embedding_pb2.EmbedRequest(
                products=[product_pb2.Product(designation="Chaise de jardin pliante"),
                          product_pb2.Product(image=image)]))
            info = await info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest())
            return list(answers), embedded, info

    answers, embedded, info = asyncio.run(scenario())
    embedder = load_embedder(bundle)
    assert [len(a.predictions) for a in answers] == [3, 5, 5]
    assert all(a.versions.model_fingerprint == embedder.fingerprint for a in answers)
    assert all(a.versions.index_version == bundle_index.version for a in answers)
    assert all(0 < len(a.neighbors) <= 4 for a in answers)  # the bundle's knn k, voters from the real index
    assert {p.prdtypecode for a in answers for p in a.predictions} <= set(CODES)
    expected = embedder.embed([ProductInput("Chaise de jardin pliante"), ProductInput(image=image)])
    got = np.array([e.values for e in embedded.embeddings], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert info.knn_k == 4 and list(info.prdtypecodes) == CODES and info.embed_dim == 32
    assert info.index_size == len(bundle_index.open_current())
    assert info.metrics["test_weighted_f1"] == pytest.approx(0.61)


def test_an_image_only_the_model_can_find_corrupt_is_invalid_argument(bundle: str) -> None:
    corrupt = png_header(64, 64)  # the header passes the server's check; decoding fails in the model

    async def scenario() -> list[object]:
        async with running_server(bundle=bundle, max_wait_ms=20) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            return await asyncio.gather(
                stub.Classify(classification_pb2.ClassifyRequest(product=product_pb2.Product(designation="tasse"))),
                stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(products=[
                    product_pb2.Product(designation="ok"), product_pb2.Product(designation="x", image=corrupt)])),
                return_exceptions=True)

    fine, refused = asyncio.run(scenario())
    assert isinstance(fine, classification_pb2.ClassifyResponse)
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("products[1].image: corrupt image")  # the model's verdict, renamed

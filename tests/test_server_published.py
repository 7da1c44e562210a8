"""The server over a real published index built by the indexer (LanceDB catalogue, FAISS, atomic publish),
including a hot swap to a newly published version while clients keep calling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from shopclip.indexer.build import BuildOptions, build_and_publish
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import ingest_folder
from shopclip.model import load_embedder
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, info_pb2, info_pb2_grpc, product_pb2,
                         search_pb2, search_pb2_grpc)
from support.index import synthetic_drop
from support.server import running_server

BUNDLE = "fake:dim=32,classes=3000"  # codes 0..2999 cover the synthetic drop's prdtypecodes
SMALL = BuildOptions(embed_batch=16, commit_every=64)


def publish(tmp_path: Path, catalogue: Catalogue, productids: range, batch: str) -> str:
    ingest_folder(synthetic_drop(tmp_path / batch, productids), catalogue)
    return build_and_publish(catalogue, tmp_path / "index", load_embedder(BUNDLE), SMALL).version


def classify(designation: str) -> classification_pb2.ClassifyRequest:
    return classification_pb2.ClassifyRequest(product=product_pb2.Product(designation=designation))


def test_serves_the_published_index_and_swaps_to_a_new_version(tmp_path: Path) -> None:
    catalogue = Catalogue(str(tmp_path / "db"))
    first = publish(tmp_path, catalogue, range(1, 41), "drop1")

    async def scenario() -> None:
        async with running_server(bundle=BUNDLE, index_root=str(tmp_path / "index"), poll_interval_s=0.1) as (
                _, channel):
            classify_stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            answer = await classify_stub.Classify(classify("jeu console manette"))
            assert answer.predictions[0].prdtypecode == 40 and answer.versions.index_version == first
            assert answer.neighbors and {n.prdtypecode for n in answer.neighbors} == {40}
            assert "console" in answer.neighbors[0].designation

            search_stub = search_pb2_grpc.SearchServiceStub(channel)
            similar = await search_stub.SearchSimilar(search_pb2.SearchSimilarRequest(productid=6, top_k=4))
            assert len(similar.results) == 4 and 6 not in [r.productid for r in similar.results]
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await search_stub.SearchSimilar(search_pb2.SearchSimilarRequest(productid=999_999))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            info = await info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest())
            assert info.index_size == 40 and info.index_type == info_pb2.INDEX_TYPE_FLAT

            versions, failures = await calls_across(
                classify_stub, lambda: publish(tmp_path, catalogue, range(41, 61), "drop2"))
            assert failures == 0
            assert versions[0] == first and versions[-1] != first
            info = await info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest())
            assert info.index_size == 60 and info.versions.index_version == versions[-1]

    asyncio.run(scenario())


async def calls_across(stub: classification_pb2_grpc.ClassificationServiceStub, publish_new: object
                       ) -> tuple[list[str], int]:
    """Index versions seen by 4 clients calling in a loop while `publish_new` runs, until the swap shows."""
    versions: list[str] = []
    failures = 0
    done = asyncio.Event()

    async def client() -> None:
        nonlocal failures
        while not done.is_set():
            try:
                versions.append((await stub.Classify(classify("livre roman auteur"))).versions.index_version)
            except grpc.aio.AioRpcError:
                failures += 1

    clients = [asyncio.ensure_future(client()) for _ in range(4)]
    await asyncio.sleep(0.1)
    new_version = await asyncio.to_thread(publish_new)  # type: ignore[arg-type]
    for _ in range(300):
        if versions and versions[-1] == new_version:
            break
        await asyncio.sleep(0.02)
    done.set()
    await asyncio.gather(*clients)
    return versions, failures


def test_the_read_side_does_not_load_the_builder() -> None:
    """The server imports indexer/published.py: the builder (catalogue, lancedb, the model) stays out."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, shopclip.indexer.published; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert "shopclip.indexer.build" not in loaded and "lancedb" not in loaded and "torch" not in loaded

"""The typed client end to end against the real server (create_server with a fake embedder, serving the real
published index of `published_index`): every method, the async client under concurrency (micro-batched server
side), bearer token and TLS."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from shopclip.client import AsyncShopclipClient, ProductInput, ShopclipClient, ShopclipRpcError
from shopclip.client.retry import NO_RETRY
from support.catalogue import catalogue_title, productid_of
from support.server import serving

TITLES = ["Lot de 2 coussins déco", "Figurine Star Wars collector", "Piscine tubulaire 3m", "Roman policier poche"]


@pytest.fixture(scope="module")
def target(published_index):
    with serving(abstain_threshold=0.0, index_root=published_index.index_root) as address:
        yield address


def test_every_method_round_trips(target):
    with ShopclipClient(target) as client:
        info = client.info()
        single = client.classify(ProductInput(designation=TITLES[0], description="Housse 40x40"), top_k=3)
        batch = client.classify_batch(TITLES, top_k=2)
        embedded = client.embed(TITLES[:2])
        by_text = client.search(catalogue_title(11, 2), top_k=3)
        by_id = client.search(productid=productid_of(7, 1), top_k=2, prdtypecode=7)
    assert info.embed_dim == 32 and len(info.prdtypecodes) == 27 and info.index_size > 0
    assert by_text.neighbors[0].productid == productid_of(11, 2) and len(by_text.neighbors) == 3
    assert by_text.neighbors[0].designation == catalogue_title(11, 2)
    assert by_text.neighbors[0].imageid == productid_of(11, 2) + 1
    assert len(by_id.neighbors) == 2 and {n.prdtypecode for n in by_id.neighbors} == {7}
    assert productid_of(7, 1) not in [n.productid for n in by_id.neighbors]
    assert by_text.versions.index_version == info.versions.index_version != ""
    assert single.versions.model_fingerprint == info.versions.model_fingerprint
    assert len(single.predictions) == 3 and single.code in info.prdtypecodes
    probabilities = [p.probability for p in single.predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1
    assert single.abstain is False  # threshold 0: the server never abstains
    assert [len(r.predictions) for r in batch] == [2] * len(TITLES)
    assert embedded.dim == 32 and len(embedded.vectors) == 2
    assert sum(v * v for v in embedded.vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_concurrent_async_calls_agree_with_sequential_ones(target):
    with ShopclipClient(target) as client:
        expected = [client.classify(title).code for title in TITLES]

    async def burst():
        async with AsyncShopclipClient(target) as client:
            return await asyncio.gather(*(client.classify(TITLES[i % len(TITLES)]) for i in range(64)))

    results = asyncio.run(burst())
    assert [r.code for r in results] == [expected[i % len(TITLES)] for i in range(64)]


def test_batches_over_the_server_limit_are_split_and_keep_their_order(target):
    titles = [f"{TITLES[i % len(TITLES)]} {i}" for i in range(300)]  # the server takes 256 per call
    with ShopclipClient(target) as client:
        one_by_one = [client.classify(title).code for title in titles[:: 50]]
        batched = client.classify_batch(titles)
        small_chunks = client.classify_batch(titles[:10], chunk_size=3)

    async def async_batch():
        async with AsyncShopclipClient(target) as client:
            return await client.classify_batch(titles)

    assert len(batched) == len(titles)
    assert [r.code for r in batched[:: 50]] == one_by_one
    assert [r.code for r in small_chunks] == [r.code for r in batched[:10]]
    assert [r.code for r in asyncio.run(async_batch())] == [r.code for r in batched]


def test_server_validation_reaches_the_caller_with_the_field(target):
    with ShopclipClient(target) as client:
        with pytest.raises(ShopclipRpcError) as empty:
            client.classify(ProductInput())
        with pytest.raises(ShopclipRpcError) as top_k:
            client.classify(TITLES[0], top_k=0)
    assert empty.value.code == top_k.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "designation" in empty.value.details
    assert "top_k" in top_k.value.details


def test_token_and_tls(tls_certificate):
    with serving(token="s3cret", tls_cert=str(tls_certificate.cert), tls_key=str(tls_certificate.key)) as address:
        with ShopclipClient(address, tls_ca=tls_certificate.cert, token="s3cret") as client:
            assert client.classify(TITLES[1]).predictions
        with ShopclipClient(address, tls_ca=tls_certificate.cert, token="wrong") as client, \
                pytest.raises(ShopclipRpcError) as refused:
            client.info()
        with ShopclipClient(address, tls_ca=tls_certificate.cert) as client, \
                pytest.raises(ShopclipRpcError) as tokenless:
            client.classify(TITLES[1])
        with ShopclipClient(address, token="s3cret", retry=NO_RETRY, timeout=2) as plaintext, \
                pytest.raises(ShopclipRpcError) as no_tls:
            plaintext.info()
    assert refused.value.code == tokenless.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert no_tls.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_to_a_plaintext_server_is_unavailable(target, tls_certificate):
    """The handshake cannot succeed: UNAVAILABLE within the deadline, not a hang or an UNKNOWN."""
    with ShopclipClient(target, tls_ca=tls_certificate.cert, retry=NO_RETRY, timeout=5) as client, \
            pytest.raises(ShopclipRpcError) as refused:
        client.info()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE

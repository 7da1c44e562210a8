"""The python client against an in-process fake server: typed results, what goes on the wire, errors,
deadlines, bounded retries, bearer token and TLS; and that it imports nothing heavy."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import pytest
from support.fakes import FakeEmbedding, UNKNOWN_PRODUCTID, fake_server

from shopclip.client import (AsyncShopclipClient, ClassifyResult, Neighbor, Prediction, ProductInput, RetryPolicy,
                             ShopclipClient, ShopclipRpcError)
from shopclip.client.retry import RetrySchedule

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture()
def server():
    with fake_server() as (target, recorder):
        yield target, recorder


def test_classify_sends_the_product_and_returns_typed_ranked_codes(server):
    target, recorder = server
    product = ProductInput(designation="Coussin déco", description="Housse 40x40", image=b"\xff\xd8jpeg")
    with ShopclipClient(target) as client:
        result = client.classify(product, top_k=3)
    sent = recorder.last("Classify")
    assert (sent.product.designation, sent.product.description, sent.product.image, sent.top_k) == \
        ("Coussin déco", "Housse 40x40", b"\xff\xd8jpeg", 3)
    assert isinstance(result, ClassifyResult)
    assert [p.code for p in result.predictions] == [len("Coussin déco"), 10, 40]
    assert result.code == len("Coussin déco")
    assert result.predictions[0] == Prediction(code=12, probability=0.5)
    assert result.neighbors == (Neighbor(101, 2280, pytest.approx(0.91), "Coussin bleu", 555),
                                Neighbor(102, None, 0.5, "Sans étiquette", None))
    assert result.abstain is True
    assert (result.versions.model_fingerprint, result.versions.index_version, result.versions.model_release) == (
        "fp-test", "v7", "rel-test")


def test_unset_optionals_stay_unset_on_the_wire(server):
    target, recorder = server
    with ShopclipClient(target) as client:
        client.classify("Lampe de chevet")
    sent = recorder.last("Classify")
    assert not sent.product.HasField("description")
    assert not sent.product.HasField("image")
    assert not sent.HasField("top_k")


def test_classify_batch_keeps_request_order(server):
    target, _ = server
    titles = ["a", "bbb", "cc"]
    with ShopclipClient(target) as client:
        results = client.classify_batch(titles, top_k=1)
    assert [r.code for r in results] == [1, 3, 2]


def test_search_by_productid_or_product_with_code_filter(server):
    target, recorder = server
    with ShopclipClient(target) as client:
        by_id = client.search(productid=77, top_k=3, prdtypecode=2705)
        assert recorder.last("SearchSimilar").WhichOneof("query") == "productid"
        by_text = client.search("Roman policier", top_k=2)
        assert recorder.last("SearchSimilar").product.designation == "Roman policier"
    assert [n.productid for n in by_id.neighbors] == [1000, 1001, 1002]
    assert {n.prdtypecode for n in by_id.neighbors} == {2705}
    assert len(by_text.neighbors) == 2


@pytest.mark.parametrize("query", [{}, {"product": "x", "productid": 1}])
def test_search_needs_exactly_one_query(server, query):
    with ShopclipClient(server[0]) as client, pytest.raises(ValueError, match="exactly one"):
        client.search(**query)


def test_embed_and_info(server):
    target, _ = server
    with ShopclipClient(target) as client:
        embedded = client.embed(["ab", ProductInput(designation="abcd")])
        info = client.info()
    assert embedded.dim == FakeEmbedding.DIM
    assert [v[0] for v in embedded.vectors] == [2.0, 4.0]
    assert (info.architecture, info.index_type, info.index_size, info.knn_k) == ("fake", "HNSW", 1234, 10)
    assert info.metrics == {"test_weighted_f1": pytest.approx(0.81)}
    assert 2280 in info.prdtypecodes


def test_errors_carry_status_code_and_the_field_in_details(server):
    target, _ = server
    with ShopclipClient(target, retry=FAST_RETRY) as client:
        with pytest.raises(ShopclipRpcError) as invalid:
            client.classify(ProductInput())
        with pytest.raises(ShopclipRpcError) as missing:
            client.search(productid=UNKNOWN_PRODUCTID)
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.details.startswith("product.designation:")
    assert invalid.value.attempts == 1  # an answer, not a transient failure: never retried
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert str(UNKNOWN_PRODUCTID) in str(missing.value)


def test_unavailable_is_retried_then_succeeds(server):
    target, recorder = server
    recorder.fail_with = [grpc.StatusCode.UNAVAILABLE] * 2
    with ShopclipClient(target, retry=FAST_RETRY) as client:
        assert client.classify("Tapis").code == len("Tapis")
    assert len(recorder.requests) == 3


def test_retries_are_bounded(server):
    target, recorder = server
    recorder.fail_with = [grpc.StatusCode.UNAVAILABLE] * 10
    with ShopclipClient(target, retry=FAST_RETRY) as client, pytest.raises(ShopclipRpcError) as error:
        client.info()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert error.value.attempts == len(recorder.requests) == FAST_RETRY.max_attempts


def test_other_codes_are_not_retried(server):
    target, recorder = server
    recorder.fail_with = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE]
    with ShopclipClient(target, retry=FAST_RETRY) as client, pytest.raises(ShopclipRpcError) as error:
        client.info()
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(recorder.requests) == 1


def test_deadline_is_enforced(server):
    target, recorder = server
    recorder.delay_s = 1.0
    started = time.monotonic()
    with ShopclipClient(target) as client, pytest.raises(ShopclipRpcError) as error:
        client.classify("Lent", timeout=0.2)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


def test_retries_never_outlive_the_deadline():
    """Against a dead address every attempt fails fast; backoffs that would pass the deadline are skipped."""
    slow_retry = RetryPolicy(max_attempts=10, initial_backoff_s=0.3, max_backoff_s=0.3)
    started = time.monotonic()
    with ShopclipClient("127.0.0.1:1", retry=slow_retry) as client, pytest.raises(ShopclipRpcError) as error:
        client.info(timeout=0.5)
    assert error.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert 1 <= error.value.attempts < slow_retry.max_attempts
    assert time.monotonic() - started < 1.0


def test_backoff_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0)
    ceilings = [0.1, 0.2, 0.4, 0.5, 0.5]
    delays = list(policy.backoffs())
    assert len(delays) == policy.max_attempts - 1
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    schedule = RetrySchedule(policy, timeout_s=None)
    assert schedule.backoff_after(grpc.StatusCode.INVALID_ARGUMENT) is None


def test_bearer_token_is_sent_on_every_call(server):
    target, recorder = server
    with ShopclipClient(target, token="s3cret") as client:
        client.info()
        client.classify("x")
    assert [m.get("authorization") for m in recorder.metadata] == ["Bearer s3cret"] * 2


def test_tls_with_a_root_certificate(tls_certificate):
    credentials = grpc.ssl_server_credentials([(tls_certificate.key_pem, tls_certificate.cert_pem)])
    with fake_server(credentials) as (target, _):
        with ShopclipClient(target, tls_ca=tls_certificate.cert, token="t") as client:
            assert client.info().architecture == "fake"
        with ShopclipClient(target, retry=FAST_RETRY, timeout=2) as plaintext, \
                pytest.raises(ShopclipRpcError) as refused:
            plaintext.info()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE  # a handshake failure, never an answer


def test_env_provides_defaults_and_arguments_win(monkeypatch, server):
    target, recorder = server
    monkeypatch.setenv("SHOPCLIP_TARGET", target)
    monkeypatch.setenv("SHOPCLIP_TOKEN", "from-env")
    with ShopclipClient() as client:
        client.info()
    with ShopclipClient(token="from-arg") as client:
        client.info()
    assert [m["authorization"] for m in recorder.metadata] == ["Bearer from-env", "Bearer from-arg"]


def test_async_client_matches_the_sync_one(server):
    target, recorder = server
    recorder.fail_with = [grpc.StatusCode.UNAVAILABLE]

    async def scenario():
        async with AsyncShopclipClient(target, retry=FAST_RETRY, token="tok") as client:
            await client.wait_ready(5)
            results = await asyncio.gather(*(client.classify(f"t{'x' * i}", top_k=2) for i in range(8)))
            search = await client.search(productid=5, top_k=4)
            embedded = await client.embed(["abc"])
            info = await client.info()
            with pytest.raises(ShopclipRpcError) as error:
                await client.classify(ProductInput(), timeout=2)
            return results, search, embedded, info, error.value

    results, search, embedded, info, error = asyncio.run(scenario())
    assert sorted(r.code for r in results) == list(range(1, 9))
    assert all(len(r.predictions) == 2 for r in results)
    assert len(search.neighbors) == 4
    assert embedded.vectors[0][0] == 3.0
    assert info.embed_dim == FakeEmbedding.DIM
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {m["authorization"] for m in recorder.metadata} == {"Bearer tok"}


def test_async_deadline_and_bounded_retries(server):
    target, recorder = server

    async def scenario():
        async with AsyncShopclipClient(target, retry=FAST_RETRY) as client:
            recorder.fail_with = [grpc.StatusCode.UNAVAILABLE] * 10
            with pytest.raises(ShopclipRpcError) as unavailable:
                await client.info()
            recorder.fail_with, recorder.delay_s = [], 1.0
            with pytest.raises(ShopclipRpcError) as late:
                await client.info(timeout=0.2)
            return unavailable.value, late.value

    unavailable, late = asyncio.run(scenario())
    assert unavailable.attempts == FAST_RETRY.max_attempts
    assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED


BLOCKING_FINDER = """
import sys
class Block:
    HEAVY = {"torch", "numpy", "faiss", "lancedb", "pandas", "sklearn", "PIL", "open_clip", "timm", "pyarrow",
             "grpc_health", "grpc_reflection", "prometheus_client", "tqdm"}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.HEAVY:
            raise ImportError(f"client must not import {name}")
        return None
sys.meta_path.insert(0, Block())
"""


def test_client_imports_only_grpcio_protobuf_and_stdlib():
    code = BLOCKING_FINDER + """
import shopclip.client, shopclip.client.cli
from shopclip.client import ShopclipClient, AsyncShopclipClient
ShopclipClient("127.0.0.1:1").close()
import shopclip.cli
parser = shopclip.cli.build_parser()
parser.parse_args(["classify", "--title", "x"])
loaded = {name.split(".")[0] for name in sys.modules}
assert not loaded & Block.HEAVY, loaded & Block.HEAVY
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

"""Property-based fuzzing (hypothesis) of every RPC the server exposes, against real in-process servers: the fake
bundle over the real published flat index (`published_index`), and a small real bundle whose preprocessing
decodes images (`support.bundles`), so image bytes reach Pillow and the model inside shared micro-batches.

The property everywhere: the status is OK or the client error the input deserves, never UNKNOWN or INTERNAL, and
the server stays healthy afterwards (health SERVING, a normal Classify answers). Where the answer is predictable
the oracle is exact: on the fake bundle (which never decodes) Classify, ClassifyBatch, Embed and SearchSimilar
succeed exactly when `shopclip.input_policy` and the request limits accept the request, and otherwise name the
refused field.

Fields are drawn from edge values (huge and negative top_k, empty, huge, unicode and NUL-laden strings, too many
products, unknown and extreme product ids) and images from crafted and mutated bytes (random, truncated,
corrupt, CMYK, 16-bit, animated GIF/PNG/WebP, huge declared dimensions, decompression bombs, zero-size). Requests
are also sent as raw wire bytes, which reaches what typed clients cannot send (invalid UTF-8, surrogates).

`SHOPCLIP_FUZZ_SCALE=10 pytest tests/test_fuzz.py` runs ten times as many examples (default: about a minute).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from shopclip.errors import InvalidInput
from shopclip.input_policy import DEFAULT_LIMITS, check_product
from shopclip.products import ProductInput
from shopclip.server.app import SERVICE_NAMES
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc, info_pb2,
                         info_pb2_grpc, product_pb2, search_pb2, search_pb2_grpc)
from support.bundles import TINY_BUNDLE_CODES, tiny_bundle
from support.catalogue import catalogue_rows, unlabelled_rows
from support.images import (animated_bytes, bomb_png, corrupted, gif_bytes, jpeg_bytes, jpeg_with_declared_size,
                            png_bytes, png_header, truncated, webp_bytes, zero_size_png)
from support.index import PublishedCatalogue, build_catalogue_index
from support.server import serving

Code = grpc.StatusCode
NEVER = frozenset({Code.UNKNOWN, Code.INTERNAL})
CLIENT_ERRORS = frozenset({Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.OUT_OF_RANGE,
                           Code.FAILED_PRECONDITION})
CLASSIFY_TOP_K, SEARCH_TOP_K, BATCH_LIMIT, FAKE_CODES = 50, 100, 256, 27  # ServerConfig defaults, fake bundle
TOKEN = "fuzz-secret"


def examples(count: int) -> int:
    """`count` scaled by SHOPCLIP_FUZZ_SCALE (read when a test is defined, i.e. at collection)."""
    return max(1, round(count * float(os.environ.get("SHOPCLIP_FUZZ_SCALE", "1"))))


FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""No per-example deadline (a decode can take a while on a loaded CI core) and no example database (nothing is
written into the working tree); a failure prints the blob that reproduces it."""


# ------------------------------------------------------------------ servers and calls


@dataclass(frozen=True)
class Endpoint:
    """A running server and sync stubs on one channel to it."""

    channel: grpc.Channel
    version: str
    """The index version it serves."""

    @property
    def classify(self) -> classification_pb2_grpc.ClassificationServiceStub:
        return classification_pb2_grpc.ClassificationServiceStub(self.channel)

    @property
    def search(self) -> search_pb2_grpc.SearchServiceStub:
        return search_pb2_grpc.SearchServiceStub(self.channel)

    @property
    def embed(self) -> embedding_pb2_grpc.EmbeddingServiceStub:
        return embedding_pb2_grpc.EmbeddingServiceStub(self.channel)

    @property
    def info(self) -> info_pb2_grpc.InfoServiceStub:
        return info_pb2_grpc.InfoServiceStub(self.channel)

    def raw(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        """`method` ("/shopclip.v1.X/Y") taking request bytes as they go on the wire."""
        return self.channel.unary_unary(method, request_serializer=lambda data: data,
                                        response_deserializer=lambda data: data)


@contextmanager
def endpoint(published: PublishedCatalogue, **overrides: object) -> Iterator[Endpoint]:
    """`support.server.serving` over `published`'s index root, with a sync channel to it."""
    with serving(index_root=published.index_root, **overrides) as target, grpc.insecure_channel(target) as channel:
        yield Endpoint(channel, published.version)


@pytest.fixture(scope="module")
def fake(published_index: PublishedCatalogue) -> Iterator[Endpoint]:
    """The fake bundle over the real published flat index."""
    with endpoint(published_index) as server:
        yield server


@pytest.fixture(scope="module")
def protected(published_index: PublishedCatalogue) -> Iterator[Endpoint]:
    """The same, requiring a bearer token."""
    with endpoint(published_index, token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """A small real bundle (it decodes images) over an index it built; max_wait_ms lets concurrent calls share
    micro-batches."""
    root = Path(tmp_path_factory.mktemp("fuzz-bundle"))
    spec = tiny_bundle(root)
    published = build_catalogue_index(root, catalogue_rows(TINY_BUNDLE_CODES[:4]), bundle=spec)
    with endpoint(published, bundle=spec, max_wait_ms=5) as server:
        yield server


@dataclass(frozen=True)
class Result:
    """A call's outcome as a value: its status code, details, and the response when OK."""

    code: grpc.StatusCode
    details: str
    response: object = None


def call(method: Callable[..., object], request: object, **options: object) -> Result:
    """The outcome of one call as a value (options: timeout, metadata)."""
    options.setdefault("timeout", 30)
    try:
        return Result(Code.OK, "", method(request, **options))
    except grpc.RpcError as error:
        return Result(error.code(), error.details() or "")


def expect(result: Result, allowed: frozenset[grpc.StatusCode] | set[grpc.StatusCode]) -> None:
    """`result`'s code is allowed (and never UNKNOWN or INTERNAL); inside a property it is also counted, so
    `pytest --hypothesis-show-statistics` shows how often each code was reached."""
    if currently_in_test_context():
        event(result.code.name)
    assert result.code not in NEVER, f"{result.code.name}: {result.details}"
    assert result.code in allowed, f"{result.code.name}: {result.details} (expected {sorted(c.name for c in allowed)})"


def assert_healthy(server: Endpoint) -> None:
    """Health SERVING and an ordinary Classify still answered: what every example must leave behind."""
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    answer = server.classify.Classify(classification_pb2.ClassifyRequest(
        product=product_pb2.Product(designation="tasse en porcelaine")), timeout=30)
    assert answer.predictions


# ------------------------------------------------------------------ oracles


def as_input(message: product_pb2.Product) -> ProductInput:
    """What the servicer makes of a Product: unset optionals are empty text and no image."""
    return ProductInput(message.designation, message.description if message.HasField("description") else "",
                        message.image if message.HasField("image") else None)


def policy_refusal(message: product_pb2.Product, field: str) -> str | None:
    """The field the input policy refuses in `message` (called `field` in the request), None when accepted."""
    try:
        check_product(as_input(message), DEFAULT_LIMITS, field)
    except InvalidInput as refused:
        return refused.field
    return None


def top_k_refusal(top_k: int | None, limit: int) -> str | None:
    return "top_k" if top_k is not None and not 1 <= top_k <= limit else None


def batch_refusals(products: list[product_pb2.Product]) -> list[str]:
    """Fields a ClassifyBatch or Embed request is refused for (any of them may be the one named)."""
    if not products or len(products) > BATCH_LIMIT:
        return ["products"]
    return [refusal for i, product in enumerate(products) if (refusal := policy_refusal(product, f"products[{i}]"))]


def expect_refusal_or_answer(result: Result, refusals: list[str]) -> None:
    """OK when nothing is refused; otherwise INVALID_ARGUMENT whose details name one of the refused fields."""
    if not refusals:
        expect(result, {Code.OK})
        return
    expect(result, {Code.INVALID_ARGUMENT})
    assert any(result.details.startswith(f"{name}:") for name in refusals), (result.details, refusals)


# ------------------------------------------------------------------ strategies

EDGE_TEXTS = ["", " ", "\t\n\r", "\x00", "a\x00b", "\x00" * 64, "x" * 1000, "x" * 1001, "é" * 1000, "é" * 1001,
              "\U0010ffff" * 50, "\ud7ff\ue000\ufffd\ufeff", "\u202e\u202dtexte inversé", "\u0301" * 999,
              "famille3 sorte3", "<b>gras</b><script>alert(1)</script>", "'; DROP TABLE products; --",
              "%s%n%x{0}", "../../etc/passwd", "𝕮𝖍𝖆𝖎𝖘𝖊 🪑 de jardin", "\x1b[31mrouge", "Ⅻ ǅ ß ﬃ"]
texts = st.one_of(st.text(max_size=60), st.sampled_from(EDGE_TEXTS), st.integers(990, 1010).map(lambda n: "d" * n))
descriptions = st.one_of(st.none(), st.text(max_size=200), st.sampled_from(EDGE_TEXTS),
                         st.integers(19_990, 20_010).map(lambda n: "<p>" + "d" * (n - 3)))
INT32 = st.integers(-2**31, 2**31 - 1)
INT64 = st.integers(-2**63, 2**63 - 1)
top_ks = st.one_of(st.none(), st.integers(1, 50), st.integers(-3, 110),
                   st.sampled_from([-2**31, 2**31 - 1, 0, 1, 50, 51, 100, 101]), INT32)

SEED_IMAGES = {
    "jpeg": jpeg_bytes((48, 32)), "cmyk-jpeg": jpeg_bytes((48, 32), mode="CMYK"), "png": png_bytes((24, 16)),
    "png-16bit": png_bytes((24, 16), mode="I;16"), "png-rgba": png_bytes((24, 16), mode="RGBA"),
    "png-palette": png_bytes((24, 16), mode="P"), "png-bilevel": png_bytes((24, 16), mode="1"),
    "webp": webp_bytes((24, 16)), "apng": animated_bytes("PNG"), "animated-webp": animated_bytes("WEBP"),
    "animated-gif": animated_bytes("GIF"), "gif": gif_bytes(),
}
CRAFTED_IMAGES = {
    "empty": b"", "png-header-20000x20000": png_header(20_000, 20_000), "png-header-64x64": png_header(64, 64),
    "png-bomb-7000x7000": bomb_png(7000, 7000), "jpeg-declaring-60000x60000": jpeg_with_declared_size(60_000, 60_000),
    "png-0x10": zero_size_png(0, 10), "png-10x0": zero_size_png(10, 0), "png-2^31x1": png_header(2**31 - 1, 1),
    "jpeg-soi-only": b"\xff\xd8", "png-signature-only": b"\x89PNG\r\n\x1a\n", "webp-riff-only": b"RIFF\0\0\0\0WEBP",
    "gif-signature-only": b"GIF89a", "truncated-jpeg": truncated(jpeg_bytes((64, 64)), 200),
    "truncated-png": truncated(png_bytes((64, 64)), 60), "truncated-apng": truncated(animated_bytes("PNG"), 150),
    "truncated-webp": truncated(webp_bytes((64, 64)), 30), "corrupt-jpeg": corrupted(jpeg_bytes((64, 64)), 300),
    "corrupt-png": corrupted(png_bytes((64, 64)), 50),
}


def mutate(seed: bytes, flips: list[tuple[int, int]], keep: int | None) -> bytes:
    """`seed` with bytes overwritten at (offset mod length, value), then cut to `keep` bytes."""
    data = bytearray(seed)
    for offset, value in flips:
        data[offset % len(data)] = value
    return bytes(data if keep is None else data[:keep])


mutated_images = st.builds(mutate, st.sampled_from(sorted(SEED_IMAGES.values())),
                           st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
                           st.one_of(st.none(), st.integers(0, 600)))
image_bytes = st.one_of(st.sampled_from(sorted(SEED_IMAGES.values())), st.sampled_from(sorted(CRAFTED_IMAGES.values())),
                        mutated_images, st.binary(max_size=256))
images = st.one_of(st.none(), image_bytes)


@st.composite
def edge_products(draw: st.DrawFn) -> product_pb2.Product:
    """A Product of edge values; its unset optionals stay unset (HasField false), as a client leaves them."""
    fields: dict[str, object] = {"designation": draw(texts)}
    if (description := draw(descriptions)) is not None:
        fields["description"] = description
    if (data := draw(images)) is not None:
        fields["image"] = data
    return product_pb2.Product(**fields)


VALID_SEEDS = sorted(data for name, data in SEED_IMAGES.items() if "gif" not in name)
plausible_products = st.builds(
    lambda designation, description, image: product_pb2.Product(
        designation=designation, **({"description": description} if description is not None else {}),
        **({"image": image} if image is not None else {})),
    st.text(min_size=1, max_size=60).filter(str.strip), st.one_of(st.none(), st.text(max_size=200)),
    st.one_of(st.none(), st.sampled_from(VALID_SEEDS)))
"""Products the policy accepts by construction (the oracle still judges them). Hypothesis draws distinct
examples, so edge strategies with few values (None, the empty string) would otherwise be drawn once and refused
inputs would dominate: mixing these in keeps answers checked about as often as refusals."""
any_products = st.one_of(plausible_products, edge_products())


def insert(items: list[product_pb2.Product], extra: product_pb2.Product | None, at: int) -> list[product_pb2.Product]:
    return items if extra is None else items[:at] + [extra] + items[at:]


def mixed_lists(max_size: int) -> st.SearchStrategy[list[product_pb2.Product]]:
    """Plausible products with at most one edge product among them, anywhere: the batch that matters is one bad
    product among good ones."""
    return st.builds(insert, st.lists(plausible_products, max_size=max_size), st.one_of(st.none(), edge_products()),
                     st.integers(0, max_size))


def product_lists() -> st.SearchStrategy[list[product_pb2.Product]]:
    """`mixed_lists`, or one product repeated around the 256-per-call limit."""
    around_limit = st.tuples(any_products, st.integers(BATCH_LIMIT - 2, BATCH_LIMIT + 40)).map(
        lambda pair: [pair[0]] * pair[1])
    return st.one_of(mixed_lists(6), around_limit)


KNOWN_PRODUCTIDS = [row.productid for row in catalogue_rows() + unlabelled_rows()]
productids = st.one_of(st.sampled_from(KNOWN_PRODUCTIDS), INT64, st.sampled_from([0, -1, 2**63 - 1, -2**63]))
prdtypecodes = st.one_of(st.none(), st.sampled_from([3, 7, 11, 19, 4, -1, 0]), INT32)



def varint(value: int) -> bytes:
    """Protobuf base-128 varint of `value` taken modulo 2**64 (negative numbers as ten bytes, as int64 are sent)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def wire_field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One encoded field: tag, then the payload (length-prefixed for wire type 2)."""
    prefix = varint(len(payload)) if wire_type == 2 else b""
    return varint(number << 3 | wire_type) + prefix + payload


FIELD_NUMBERS = st.one_of(st.integers(1, 6), st.integers(1, 2**29 - 1))
wire_fields = st.one_of(
    st.builds(lambda n, v: wire_field(n, 0, varint(v)), FIELD_NUMBERS, st.integers(-2**63, 2**64 - 1)),
    st.builds(lambda n, data: wire_field(n, 2, data), FIELD_NUMBERS, st.binary(max_size=40)),
    st.builds(lambda n, p: wire_field(n, 2, p.SerializeToString()), st.integers(1, 4), any_products),
    st.builds(lambda n, data: wire_field(n, 5, data), FIELD_NUMBERS, st.binary(min_size=4, max_size=4)),
    st.builds(lambda n, data: wire_field(n, 1, data), FIELD_NUMBERS, st.binary(min_size=8, max_size=8)),
    st.binary(max_size=8))
wire_messages = st.lists(wire_fields, max_size=6).map(b"".join)
"""Fields of any number and wire type, real Products in any field, random payloads and raw garbage."""

CLASSIFY = "/shopclip.v1.ClassificationService/Classify"
CLASSIFY_BATCH = "/shopclip.v1.ClassificationService/ClassifyBatch"
SEARCH = "/shopclip.v1.SearchService/SearchSimilar"
EMBED = "/shopclip.v1.EmbeddingService/Embed"
GET_INFO = "/shopclip.v1.InfoService/GetInfo"
REQUEST_TYPES: dict[str, type[Message]] = {
    CLASSIFY: classification_pb2.ClassifyRequest, CLASSIFY_BATCH: classification_pb2.ClassifyBatchRequest,
    SEARCH: search_pb2.SearchSimilarRequest, EMBED: embedding_pb2.EmbedRequest, GET_INFO: info_pb2.GetInfoRequest}


def parses(method: str, payload: bytes) -> bool:
    """Whether the server's protobuf runtime can read `payload` as `method`'s request (the same library here)."""
    try:
        REQUEST_TYPES[method].FromString(payload)
    except DecodeError:
        return False
    return True


# ------------------------------------------------------------------ Classify and ClassifyBatch


def check_classification(response: classification_pb2.ClassifyResponse, top_k: int | None, version: str) -> None:
    """A well-formed answer: min(top_k, classes) distinct codes, probabilities in [0, 1] best first, labelled
    voters best first, the served index version."""
    probabilities = [p.probability for p in response.predictions]
    assert len(probabilities) == min(top_k or 5, FAKE_CODES)
    assert len({p.prdtypecode for p in response.predictions}) == len(probabilities)
    assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)
    similarities = [n.similarity for n in response.neighbors]
    assert similarities == sorted(similarities, reverse=True)
    assert all(n.HasField("prdtypecode") for n in response.neighbors)  # unlabelled products never vote
    assert response.versions.index_version == version


@settings(FUZZ, max_examples=examples(500))
@given(product=any_products, top_k=top_ks)
def test_classify_answers_exactly_what_the_policy_accepts(fake: Endpoint, product: product_pb2.Product,
                                                          top_k: int | None) -> None:
    result = call(fake.classify.Classify, classification_pb2.ClassifyRequest(product=product, top_k=top_k))
    refusals = [r for r in (top_k_refusal(top_k, CLASSIFY_TOP_K), policy_refusal(product, "product")) if r]
    expect_refusal_or_answer(result, refusals)
    if result.code == Code.OK:
        check_classification(result.response, top_k, fake.version)
    assert_healthy(fake)


@settings(FUZZ, max_examples=examples(120))
@given(items=product_lists(), top_k=top_ks)
def test_classify_batch_answers_exactly_what_the_policy_accepts(fake: Endpoint, items: list[product_pb2.Product],
                                                                top_k: int | None) -> None:
    request = classification_pb2.ClassifyBatchRequest(products=items, top_k=top_k)
    result = call(fake.classify.ClassifyBatch, request)
    refusals = [r for r in [top_k_refusal(top_k, CLASSIFY_TOP_K)] if r] + batch_refusals(items)
    expect_refusal_or_answer(result, refusals)
    if result.code == Code.OK:
        assert len(result.response.results) == len(items)
        for answer in result.response.results:
            check_classification(answer, top_k, fake.version)
    assert_healthy(fake)


# ------------------------------------------------------------------ SearchSimilar

CATALOGUE = {row.productid: row.prdtypecode for row in catalogue_rows() + unlabelled_rows()}
queries = st.one_of(st.none(), st.tuples(st.just("productid"), productids), st.tuples(st.just("product"), any_products))


def search_refusals(query: tuple[str, object] | None, top_k: int | None) -> list[str]:
    refusals = [r for r in [top_k_refusal(top_k, SEARCH_TOP_K)] if r]
    if query is None:
        refusals.append("query")
    elif query[0] == "product" and (refusal := policy_refusal(query[1], "product")):  # type: ignore[arg-type]
        refusals.append(refusal)
    return refusals


def expected_hits(query: tuple[str, object], top_k: int | None, code: int | None) -> int:
    """How many results exact search over the catalogue has: those of `code` (any when None; codes.npy's -1
    marks unlabelled products, which a code filter never returns), without the query product itself."""
    if code == -1:
        return 0
    pool = [pid for pid, pid_code in CATALOGUE.items() if code is None or pid_code == code]
    if query[0] == "productid":
        pool = [pid for pid in pool if pid != query[1]]
    return min(top_k or 10, len(pool))


@settings(FUZZ, max_examples=examples(500))
@given(query=queries, top_k=top_ks, code=prdtypecodes)
def test_search_similar_answers_exactly_what_it_should(fake: Endpoint, query: tuple[str, object] | None,
                                                       top_k: int | None, code: int | None) -> None:
    request = search_pb2.SearchSimilarRequest(top_k=top_k, prdtypecode=code, **({query[0]: query[1]} if query else {}))
    result = call(fake.search.SearchSimilar, request)
    refusals = search_refusals(query, top_k)
    if refusals or query is None or query[0] == "product" or query[1] in CATALOGUE:
        expect_refusal_or_answer(result, refusals)
    else:
        expect(result, {Code.NOT_FOUND})
        assert str(query[1]) in result.details
    if result.code == Code.OK:
        assert query is not None
        hits = result.response.results
        assert len(hits) == expected_hits(query, top_k, code)
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
        assert code is None or all(h.prdtypecode == code and h.HasField("prdtypecode") for h in hits)
        assert query[0] != "productid" or query[1] not in [h.productid for h in hits]
        assert result.response.versions.index_version == fake.version
    assert_healthy(fake)


# ------------------------------------------------------------------ Embed and GetInfo


@settings(FUZZ, max_examples=examples(120))
@given(items=product_lists())
def test_embed_answers_exactly_what_the_policy_accepts(fake: Endpoint, items: list[product_pb2.Product]) -> None:
    result = call(fake.embed.Embed, embedding_pb2.EmbedRequest(products=items))
    expect_refusal_or_answer(result, batch_refusals(items))
    if result.code == Code.OK:
        assert result.response.dim == 32 and len(result.response.embeddings) == len(items)
        for embedding in result.response.embeddings:
            norm = sum(v * v for v in embedding.values) ** 0.5
            assert len(embedding.values) == 32 and norm <= 1 + 1e-5
    assert_healthy(fake)


@settings(FUZZ, max_examples=examples(800))
@given(method=st.sampled_from(sorted(REQUEST_TYPES)), payload=wire_messages)
def test_any_wire_message_gets_an_answer_or_a_client_error(fake: Endpoint, method: str, payload: bytes) -> None:
    """Requests as raw bytes: unknown fields, wrong wire types, out-of-range varints, nested garbage. A message
    the protobuf runtime can read gets OK or a client error (GetInfo, which has no fields, always answers); one
    it cannot read must at least leave the server serving (its status: test_an_undecodable_request_...)."""
    result = call(fake.raw(method), payload)
    if parses(method, payload):
        expect(result, {Code.OK} if method == GET_INFO else CLIENT_ERRORS | {Code.OK})
    else:
        assert result.code != Code.OK
    assert_healthy(fake)


# ------------------------------------------------------------------ image bytes


@settings(FUZZ, max_examples=examples(500))
@given(data=image_bytes, designation=st.sampled_from(["", "chaise de jardin"]))
def test_image_bytes_on_the_fake_bundle_are_judged_by_the_policy(fake: Endpoint, data: bytes,
                                                                  designation: str) -> None:
    """The fake never decodes, so the header checks of the input policy are the whole verdict."""
    product = product_pb2.Product(designation=designation, image=data)
    result = call(fake.classify.Classify, classification_pb2.ClassifyRequest(product=product))
    expect_refusal_or_answer(result, [r for r in [policy_refusal(product, "product")] if r])
    assert_healthy(fake)


def expect_decoded_or_refused(result: Result, product: product_pb2.Product) -> None:
    """Under a bundle that decodes: what the policy refuses is refused naming its field; what it accepts is
    answered, or refused as an image the decoder could not read (never another field, never a server error)."""
    refusal = policy_refusal(product, "product")
    if refusal is not None:
        expect_refusal_or_answer(result, [refusal])
        return
    expect(result, {Code.OK, Code.INVALID_ARGUMENT})
    if result.code == Code.INVALID_ARGUMENT:
        assert product.HasField("image") and result.details.startswith("product.image:"), result.details


@settings(FUZZ, max_examples=examples(300))
@given(data=image_bytes, designation=st.sampled_from(["", "chaise de jardin"]))
def test_image_bytes_decoded_by_a_real_bundle(bundle: Endpoint, data: bytes, designation: str) -> None:
    product = product_pb2.Product(designation=designation, image=data)
    expect_decoded_or_refused(call(bundle.classify.Classify, classification_pb2.ClassifyRequest(product=product)),
                              product)
    assert_healthy(bundle)


@settings(FUZZ, max_examples=examples(60))
@given(items=mixed_lists(5))
def test_classify_batch_decoded_by_a_real_bundle_names_the_product(bundle: Endpoint,
                                                                   items: list[product_pb2.Product]) -> None:
    """The model refuses an image inside a shared batch knowing only its batch position: the caller still hears
    which of its products it was (`products[i].image`), and only products with an image can be the one."""
    result = call(bundle.classify.ClassifyBatch, classification_pb2.ClassifyBatchRequest(products=items))
    refusals = batch_refusals(items)
    if refusals:
        expect_refusal_or_answer(result, refusals)
    else:
        expect(result, {Code.OK, Code.INVALID_ARGUMENT})
        with_images = [f"products[{i}].image:" for i, p in enumerate(items) if p.HasField("image")]
        assert result.code == Code.OK or any(result.details.startswith(name) for name in with_images), result.details
    if result.code == Code.OK:
        assert len(result.response.results) == len(items)
    assert_healthy(bundle)


def settle(future: grpc.Future) -> Result:
    try:
        return Result(Code.OK, "", future.result())
    except grpc.RpcError as error:
        return Result(error.code(), error.details() or "")


@settings(FUZZ, max_examples=examples(60))
@given(batch=st.lists(any_products, min_size=2, max_size=10))
def test_concurrent_calls_sharing_micro_batches_are_judged_each_on_its_own(bundle: Endpoint,
                                                                           batch: list[product_pb2.Product]) -> None:
    """A product the decoder refuses fails its own call only: a text-only product beside it is answered."""
    futures = [bundle.classify.Classify.future(classification_pb2.ClassifyRequest(product=p), timeout=60)
               for p in batch]
    for product, future in zip(batch, futures):
        result = settle(future)
        expect_decoded_or_refused(result, product)
        if not product.HasField("image") and policy_refusal(product, "product") is None:
            assert result.code == Code.OK, result.details
    assert_healthy(bundle)


NOT_DECODABLE, CORRUPT, BOMB = "not a decodable image", "corrupt image", "decompression bomb"
DECODED_BY_A_BUNDLE: dict[str, str | None] = {
    # seed images: every mode and container the policy accepts decodes; GIF is not an accepted format
    "jpeg": None, "cmyk-jpeg": None, "png": None, "png-16bit": None, "png-rgba": None, "png-palette": None,
    "png-bilevel": None, "webp": None, "apng": None, "animated-webp": None,
    "animated-gif": NOT_DECODABLE, "gif": NOT_DECODABLE,
    # crafted: None = answered (OK), else the start of the INVALID_ARGUMENT reason after "product.image: "
    "empty": "empty image", "png-header-20000x20000": BOMB, "png-header-64x64": CORRUPT, "png-bomb-7000x7000": BOMB,
    "jpeg-declaring-60000x60000": BOMB, "png-0x10": NOT_DECODABLE, "png-10x0": NOT_DECODABLE, "png-2^31x1": BOMB,
    "jpeg-soi-only": NOT_DECODABLE, "png-signature-only": NOT_DECODABLE, "webp-riff-only": NOT_DECODABLE,
    "gif-signature-only": NOT_DECODABLE, "truncated-jpeg": CORRUPT, "truncated-png": CORRUPT,
    "truncated-apng": None, "truncated-webp": CORRUPT, "corrupt-jpeg": None, "corrupt-png": CORRUPT,
}
"""What a bundle that decodes makes of each named image (an animation is read as its first frame; libjpeg
conceals damage in the entropy-coded data, so a corrupt-but-complete JPEG is answered)."""


@pytest.mark.parametrize("name", sorted(DECODED_BY_A_BUNDLE))
def test_each_crafted_image_decoded_by_a_real_bundle(bundle: Endpoint, name: str) -> None:
    data = {**SEED_IMAGES, **CRAFTED_IMAGES}[name]
    result = call(bundle.classify.Classify, classification_pb2.ClassifyRequest(
        product=product_pb2.Product(designation="chaise", image=data)))
    reason = DECODED_BY_A_BUNDLE[name]
    if reason is None:
        expect(result, {Code.OK})
    else:
        expect(result, {Code.INVALID_ARGUMENT})
        assert result.details.startswith(f"product.image: {reason}"), result.details
    assert_healthy(bundle)


def test_a_bomb_just_under_the_pixel_limit_is_decoded(bundle: Endpoint) -> None:
    """6000x6000 bilevel pixels (36 MP, 5 KB of PNG) is within the 40 MP policy: decoded and answered."""
    product = product_pb2.Product(designation="chaise", image=bomb_png(6000, 6000))
    expect(call(bundle.classify.Classify, classification_pb2.ClassifyRequest(product=product), timeout=120),
           {Code.OK})
    assert_healthy(bundle)


# ------------------------------------------------------------------ deadlines, health, reflection, auth


@settings(FUZZ, max_examples=examples(30))
@given(timeout=st.floats(min_value=1e-4, max_value=0.05), method=st.sampled_from(["Classify", "Embed"]))
def test_short_deadlines_expire_cleanly(fake: Endpoint, timeout: float, method: str) -> None:
    product = product_pb2.Product(designation="tasse en porcelaine")
    if method == "Classify":
        result = call(fake.classify.Classify, classification_pb2.ClassifyRequest(product=product), timeout=timeout)
    else:
        result = call(fake.embed.Embed, embedding_pb2.EmbedRequest(products=[product] * 8), timeout=timeout)
    expect(result, {Code.OK, Code.DEADLINE_EXCEEDED})
    assert_healthy(fake)


HEALTH_NAMES = ("",) + SERVICE_NAMES + ("shopclip.index",)


@settings(FUZZ, max_examples=examples(100))
@given(service=st.one_of(st.sampled_from(HEALTH_NAMES), st.text(max_size=80), st.sampled_from(EDGE_TEXTS)))
def test_health_check_of_any_service_name(fake: Endpoint, service: str) -> None:
    result = call(health_pb2_grpc.HealthStub(fake.channel).Check, health_pb2.HealthCheckRequest(service=service))
    if service in HEALTH_NAMES:
        expect(result, {Code.OK})
        assert result.response.status == health_pb2.HealthCheckResponse.SERVING
    else:
        expect(result, {Code.NOT_FOUND})


@settings(FUZZ, max_examples=examples(60))
@given(symbol=st.one_of(st.text(max_size=80), st.sampled_from(EDGE_TEXTS), st.sampled_from(SERVICE_NAMES)),
       kind=st.sampled_from(["file_containing_symbol", "file_by_filename", "list_services"]))
def test_reflection_answers_any_symbol(fake: Endpoint, symbol: str, kind: str) -> None:
    """Reflection answers each request in its stream: a descriptor, a service list or an error response."""
    stub = reflection_pb2_grpc.ServerReflectionStub(fake.channel)
    request = reflection_pb2.ServerReflectionRequest(**{kind: symbol})
    try:
        answers = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    except grpc.RpcError as error:
        raise AssertionError(f"reflection failed the stream: {error.code().name}: {error.details()}") from None
    assert len(answers) == 1
    assert answers[0].WhichOneof("message_response") in {"file_descriptor_response", "error_response",
                                                         "list_services_response"}
    assert_healthy(fake)


header_values = st.one_of(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
                          st.sampled_from([f"Bearer {TOKEN}x", f"bearer {TOKEN}", f"Bearer  {TOKEN}", TOKEN,
                                           f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", "Bearer", ""]))


@settings(FUZZ, max_examples=examples(100))
@given(value=header_values, method=st.sampled_from(["GetInfo", "Classify"]))
def test_any_wrong_authorization_is_unauthenticated(protected: Endpoint, value: str, method: str) -> None:
    metadata = (("authorization", value),)
    if method == "GetInfo":
        result = call(protected.info.GetInfo, info_pb2.GetInfoRequest(), metadata=metadata)
    else:
        result = call(protected.classify.Classify, classification_pb2.ClassifyRequest(
            product=product_pb2.Product(designation="tasse")), metadata=metadata)
    expect(result, {Code.OK} if value.strip() == f"Bearer {TOKEN}" else {Code.UNAUTHENTICATED})


def test_every_rpc_before_the_first_index_is_unavailable_or_refused(tmp_path: Path) -> None:
    """A server whose index root has nothing published yet (health NOT_SERVING): valid calls are UNAVAILABLE
    (GetInfo answers, saying there is no index), invalid ones are refused as such; nothing is a server error."""
    with serving(index_root=str(tmp_path / "nothing-yet")) as target, grpc.insecure_channel(target) as channel:
        server = Endpoint(channel, "")
        product = product_pb2.Product(designation="tasse")
        outcomes = {
            "Classify": call(server.classify.Classify, classification_pb2.ClassifyRequest(product=product)),
            "ClassifyBatch": call(server.classify.ClassifyBatch,
                                  classification_pb2.ClassifyBatchRequest(products=[product])),
            "SearchSimilar by productid": call(server.search.SearchSimilar,
                                               search_pb2.SearchSimilarRequest(productid=3001)),
            "SearchSimilar by product": call(server.search.SearchSimilar,
                                             search_pb2.SearchSimilarRequest(product=product)),
            "Embed": call(server.embed.Embed, embedding_pb2.EmbedRequest(products=[product])),
            "invalid Classify": call(server.classify.Classify, classification_pb2.ClassifyRequest()),
        }
        info = call(server.info.GetInfo, info_pb2.GetInfoRequest())
    invalid = outcomes.pop("invalid Classify")
    assert {name: result.code for name, result in outcomes.items()} == {name: Code.UNAVAILABLE for name in outcomes}
    assert invalid.code == Code.INVALID_ARGUMENT  # the request is judged before readiness: the caller's fault first
    expect(info, {Code.OK})
    assert info.response.index_size == 0 and info.response.versions.index_version == ""


# ------------------------------------------------------------------ regressions: what the fuzzer found


def nested(outer_field: int, inner: bytes) -> bytes:
    return wire_field(outer_field, 2, inner)


UNDECODABLE: dict[str, tuple[str, bytes]] = {
    "invalid UTF-8 designation": (CLASSIFY, nested(1, wire_field(1, 2, b"\xff\xfe\xfd"))),
    "UTF-8-encoded surrogate U+D800": (CLASSIFY, nested(1, wire_field(1, 2, b"caf\xed\xa0\x80"))),
    "truncated length-delimited field": (CLASSIFY, b"\x0a\x10abc"),
    "garbage": (CLASSIFY, b"\xff\xff\xff\xff"),
    "invalid UTF-8 description in a batch": (CLASSIFY_BATCH, nested(1, wire_field(2, 2, b"\xe2\x28\xa1"))),
    "invalid UTF-8 search product": (SEARCH, nested(2, wire_field(1, 2, b"\xc3\x28"))),
    "invalid UTF-8 embed product": (EMBED, nested(1, wire_field(1, 2, b"\x80"))),
    "garbage info request": (GET_INFO, b"\xff\xff\xff\xff"),
}
"""Request bytes the protobuf runtime cannot read. A Python client cannot send these (it refuses surrogates),
but any other client can, e.g. a Go, Java or C++ one relaying unvalidated text."""
@pytest.mark.parametrize("case", sorted(UNDECODABLE))
def test_an_undecodable_request_is_invalid_argument(fake: Endpoint, case: str) -> None:
    method, payload = UNDECODABLE[case]
    assert not parses(method, payload)
    expect(call(fake.raw(method), payload), {Code.INVALID_ARGUMENT})


@pytest.mark.parametrize("case", sorted(UNDECODABLE))
def test_an_undecodable_request_leaves_the_server_serving(fake: Endpoint, case: str) -> None:
    method, payload = UNDECODABLE[case]
    assert call(fake.raw(method), payload).code != Code.OK
    assert_healthy(fake)


# ------------------------------------------------------------------ message size


def test_a_message_over_the_size_limit_is_resource_exhausted(published_index: PublishedCatalogue) -> None:
    """gRPC's own limit (max_message_bytes) answers RESOURCE_EXHAUSTED; below it the policy names the image."""
    with endpoint(published_index, max_message_bytes=256 * 1024) as small:
        too_big = product_pb2.Product(designation="chaise", image=b"\xff\xd8" + bytes(300 * 1024))
        expect(call(small.classify.Classify, classification_pb2.ClassifyRequest(product=too_big)),
               {Code.RESOURCE_EXHAUSTED})
        assert_healthy(small)


def test_an_image_over_the_policy_limit_is_invalid_argument_naming_it(fake: Endpoint) -> None:
    image = jpeg_bytes((8, 8)) + bytes(DEFAULT_LIMITS.max_image_bytes)  # a valid JPEG with 10 MiB of trailing junk
    result = call(fake.classify.Classify, classification_pb2.ClassifyRequest(
        product=product_pb2.Product(designation="chaise", image=image)))
    expect(result, {Code.INVALID_ARGUMENT})
    assert result.details.startswith("product.image:") and str(DEFAULT_LIMITS.max_image_bytes) in result.details
    assert_healthy(fake)

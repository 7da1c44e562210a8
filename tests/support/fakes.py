"""Fake shopclip servicers for client tests: a tiny in-process server on the generated base classes, with
answers derived from each request (so a test can tell that its fields arrived), a record of what was received,
and scripted failures. No model, no index: it tests the client, not the server (`support.server` runs the real
one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from shopclip.v1 import (classification_pb2, classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc, info_pb2,
                         info_pb2_grpc, product_pb2, search_pb2, search_pb2_grpc)

UNKNOWN_PRODUCTID = 404
VERSIONS = product_pb2.Versions(model_fingerprint="fp-test", index_version="v7", model_release="rel-test")
CODES = (10, 40, 50, 60, 1140, 1160, 1180, 1280, 2280, 2705)


@dataclass
class Recorder:
    """What the fake received, and the status codes it must fail the next calls with."""

    requests: list[tuple[str, object]] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    fail_with: list[grpc.StatusCode] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.requests.append((method, request))
            self.metadata.append(dict(context.invocation_metadata()))
            failure = self.fail_with.pop(0) if self.fail_with else None
        if failure is not None:
            context.abort(failure, f"scripted {failure.name}")
        time.sleep(self.delay_s)

    def last(self, method: str) -> object:
        return [request for name, request in self.requests if name == method][-1]


def _classify(product: product_pb2.Product, top_k: int, context: grpc.ServicerContext,
              field_prefix: str = "product.") -> classification_pb2.ClassifyResponse:
    if not (product.designation or product.HasField("description") or product.HasField("image")):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field_prefix}designation: a product needs a designation, "
                                                        "a description or an image")
    # The first code encodes the designation length, so a test can check the product arrived intact.
    codes = (len(product.designation), *CODES)[:top_k]
    probabilities = [0.5 ** (rank + 1) for rank in range(len(codes))]
    return classification_pb2.ClassifyResponse(
        predictions=[classification_pb2.CodeScore(prdtypecode=c, probability=p) for c, p in zip(codes, probabilities)],
        neighbors=[product_pb2.Neighbor(productid=101, prdtypecode=2280, similarity=0.91, designation="Coussin bleu",
                                        imageid=555),
                   product_pb2.Neighbor(productid=102, similarity=0.5, designation="Sans étiquette")],
        abstain=probabilities[0] < 0.6, versions=VERSIONS)


class FakeClassification(classification_pb2_grpc.ClassificationServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def Classify(self, request, context):
        self.recorder.receive("Classify", request, context)
        return _classify(request.product, request.top_k if request.HasField("top_k") else 5, context)

    def ClassifyBatch(self, request, context):
        self.recorder.receive("ClassifyBatch", request, context)
        top_k = request.top_k if request.HasField("top_k") else 5
        return classification_pb2.ClassifyBatchResponse(
            results=[_classify(p, top_k, context, f"products[{i}].") for i, p in enumerate(request.products)])


class FakeSearch(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def SearchSimilar(self, request, context):
        self.recorder.receive("SearchSimilar", request, context)
        if request.WhichOneof("query") == "productid" and request.productid == UNKNOWN_PRODUCTID:
            context.abort(grpc.StatusCode.NOT_FOUND, f"productid: {request.productid} is not in the catalogue")
        code = request.prdtypecode if request.HasField("prdtypecode") else 1160
        count = request.top_k if request.HasField("top_k") else 10
        return search_pb2.SearchSimilarResponse(
            results=[product_pb2.Neighbor(productid=1000 + i, prdtypecode=code, similarity=1.0 - i / 10,
                                          designation=f"Produit {i}") for i in range(count)],
            versions=VERSIONS)


class FakeEmbedding(embedding_pb2_grpc.EmbeddingServiceServicer):
    DIM = 4

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def Embed(self, request, context):
        self.recorder.receive("Embed", request, context)
        return embedding_pb2.EmbedResponse(
            embeddings=[embedding_pb2.Embedding(values=[float(len(p.designation))] + [0.0] * (self.DIM - 1))
                        for p in request.products],
            dim=self.DIM, versions=VERSIONS)


class FakeInfo(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def GetInfo(self, request, context):
        self.recorder.receive("GetInfo", request, context)
        return info_pb2.GetInfoResponse(versions=VERSIONS, architecture="fake", embed_dim=FakeEmbedding.DIM,
                                        prdtypecodes=list(CODES), index_size=1234, index_type=info_pb2.INDEX_TYPE_HNSW,
                                        metrics={"test_weighted_f1": 0.81}, abstain_threshold=0.35, knn_k=10)


@contextmanager
def fake_server(credentials: grpc.ServerCredentials | None = None) -> Iterator[tuple[str, Recorder]]:
    """Yields (target, recorder) for a fake shopclip server on a free port of 127.0.0.1."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    classification_pb2_grpc.add_ClassificationServiceServicer_to_server(FakeClassification(recorder), server)
    search_pb2_grpc.add_SearchServiceServicer_to_server(FakeSearch(recorder), server)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(FakeEmbedding(recorder), server)
    info_pb2_grpc.add_InfoServiceServicer_to_server(FakeInfo(recorder), server)
    address = "127.0.0.1:0"  # the test certificate names this IP
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        server.stop(grace=None)



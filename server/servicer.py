"""The gRPC servicers: the only code that touches protobuf.

Each method converts the request to domain types, checks limits (naming the field as the caller spelled
it), hands the work to the micro-batcher or to a worker thread, and converts the answer back. Errors are
raised as `shopclip.errors` types; `server/errors.py` turns them into status codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc.aio

from shopclip.errors import InvalidInput, NotConfigured
from shopclip.input_policy import ProductLimits, check_product
from shopclip.predictions import Feedback, FeedbackReceipt, PredictionLog
from shopclip.products import ProductInput
from shopclip.server.batching import MicroBatcher
from shopclip.server.engine import Classification, Engine, Job, NeighborInfo, Outcome, Versions
from shopclip.server.image_words import ImageWordsReader
from shopclip.server.metrics import ServerMetrics
from shopclip.server.recording import PredictionRecorder
from shopclip.server.validation import check_actor, check_count, check_productid, check_request_id, check_top_k
from shopclip.v1 import (classification_pb2, classification_pb2_grpc, embedding_pb2, embedding_pb2_grpc,
                         feedback_pb2, feedback_pb2_grpc, info_pb2, info_pb2_grpc, product_pb2, search_pb2,
                         search_pb2_grpc)

DEFAULT_CLASSIFY_TOP_K = 5
DEFAULT_SEARCH_TOP_K = 10

MODEL_SWAP_PASSES = 3
INDEX_TYPES = {"flat": info_pb2.INDEX_TYPE_FLAT, "ivf": info_pb2.INDEX_TYPE_IVF, "hnsw": info_pb2.INDEX_TYPE_HNSW}


@dataclass(frozen=True)
class RequestLimits:
    product: ProductLimits
    max_classify_top_k: int
    max_search_top_k: int
    batch_limit: int


class _Base:
    def __init__(self, engine: Engine, batcher: MicroBatcher[Job, Outcome], limits: RequestLimits) -> None:
        self._engine = engine
        self._batcher = batcher
        self._limits = limits

    def _product(self, message: product_pb2.Product, field: str) -> ProductInput:
        product = ProductInput(designation=message.designation,
                               description=message.description if message.HasField("description") else "",
                               image=message.image if message.HasField("image") else None)
        check_product(product, self._limits.product, field)
        return product

    async def _run(self, jobs: Sequence[Job], fields: Sequence[str],
                   context: grpc.aio.ServicerContext) -> list[Outcome]:
        """Outcomes of `jobs`, whose products the request calls `fields`; a product the model rejects is
        named as the caller spelled it (the model only knows its position in a shared batch).

        A request split over batches on either side of a model swap is run again, so one answer never holds
        vectors of two models (they are not comparable); swaps are minutes apart, so a second pass suffices."""
        self._engine.require_ready()
        for _ in range(MODEL_SWAP_PASSES):
            outcomes = await self._batcher.submit_many(jobs, context.time_remaining(), return_exceptions=True)
            models = {o.served.embedder.release for o in outcomes if isinstance(o, Outcome)}
            if len(models) <= 1:
                break
        for field, outcome in zip(fields, outcomes):
            if isinstance(outcome, InvalidInput):
                raise InvalidInput(f"{field}.{outcome.field.rsplit('.', 1)[-1]}", outcome.message) from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes


class ClassificationServicer(_Base, classification_pb2_grpc.ClassificationServiceServicer):
    def __init__(self, engine: Engine, batcher: MicroBatcher[Job, Outcome], limits: RequestLimits,
                 recorder: PredictionRecorder, image_words: ImageWordsReader) -> None:
        super().__init__(engine, batcher, limits)
        self._recorder = recorder
        self._image_words = image_words

    async def Classify(self, request: classification_pb2.ClassifyRequest,
                       context: grpc.aio.ServicerContext) -> classification_pb2.ClassifyResponse:
        started = time.perf_counter()
        top_k = self._top_k(request)
        product = self._product(request.product, "product")
        productid = _productid(request.product, "product.productid")
        jobs = await self._image_words.read_ahead([Job(product, top_k)], ["product"])
        (outcome,) = await self._run(jobs, ["product"], context)
        (request_id,) = self._recorder.answered([product], [productid], [outcome], started)
        return _classify_response(outcome, request_id)

    async def ClassifyBatch(self, request: classification_pb2.ClassifyBatchRequest,
                            context: grpc.aio.ServicerContext) -> classification_pb2.ClassifyBatchResponse:
        started = time.perf_counter()
        top_k = self._top_k(request)
        check_count(len(request.products), self._limits.batch_limit)
        fields = [f"products[{i}]" for i in range(len(request.products))]
        products = [self._product(p, field) for p, field in zip(request.products, fields)]
        productids = [_productid(p, f"{field}.productid") for p, field in zip(request.products, fields)]
        jobs = await self._image_words.read_ahead([Job(p, top_k) for p in products], fields)
        outcomes = await self._run(jobs, fields, context)
        request_ids = self._recorder.answered(products, productids, outcomes, started)
        return classification_pb2.ClassifyBatchResponse(
            results=[_classify_response(o, r) for o, r in zip(outcomes, request_ids)])

    def _top_k(self, request: classification_pb2.ClassifyRequest | classification_pb2.ClassifyBatchRequest) -> int:
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_CLASSIFY_TOP_K
        check_top_k(top_k, self._limits.max_classify_top_k)
        return top_k


class SearchServicer(_Base, search_pb2_grpc.SearchServiceServicer):
    async def SearchSimilar(self, request: search_pb2.SearchSimilarRequest,
                            context: grpc.aio.ServicerContext) -> search_pb2.SearchSimilarResponse:
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_SEARCH_TOP_K
        check_top_k(top_k, self._limits.max_search_top_k)
        code = request.prdtypecode if request.HasField("prdtypecode") else None
        query = request.WhichOneof("query")
        if query == "productid":
            found = await asyncio.to_thread(self._engine.search_product, request.productid, top_k, code)
        elif query == "product":
            product = self._product(request.product, "product")
            (outcome,) = await self._run([Job(product)], ["product"], context)
            found = await asyncio.to_thread(self._engine.search_vector, outcome, top_k, code)
        else:
            raise InvalidInput("query", "set either productid or product")
        neighbors, versions = found
        return search_pb2.SearchSimilarResponse(results=[_neighbor(n) for n in neighbors],
                                                versions=_versions(versions))


class EmbeddingServicer(_Base, embedding_pb2_grpc.EmbeddingServiceServicer):
    async def Embed(self, request: embedding_pb2.EmbedRequest,
                    context: grpc.aio.ServicerContext) -> embedding_pb2.EmbedResponse:
        check_count(len(request.products), self._limits.batch_limit)
        fields = [f"products[{i}]" for i in range(len(request.products))]
        jobs = [Job(self._product(p, field)) for p, field in zip(request.products, fields)]
        outcomes = await self._run(jobs, fields, context)
        return embedding_pb2.EmbedResponse(
            embeddings=[embedding_pb2.Embedding(values=o.vector.tolist()) for o in outcomes],
            dim=outcomes[0].served.embedder.dim, versions=_versions(outcomes[0].versions))


class InfoServicer(_Base, info_pb2_grpc.InfoServiceServicer):
    async def GetInfo(self, request: info_pb2.GetInfoRequest,
                      context: grpc.aio.ServicerContext) -> info_pb2.GetInfoResponse:
        info = self._engine.info()
        return info_pb2.GetInfoResponse(
            versions=_versions(info.versions), architecture=info.architecture, embed_dim=info.embed_dim,
            prdtypecodes=info.prdtypecodes, index_size=info.index_size,
            index_type=INDEX_TYPES.get(info.index_type.lower(), info_pb2.INDEX_TYPE_UNSPECIFIED),
            metrics=info.metrics, abstain_threshold=info.abstain_threshold, knn_k=info.knn_k)


class FeedbackServicer(_Base, feedback_pb2_grpc.FeedbackServiceServicer):
    """Confirmations and corrections, stored by the prediction log (which also says what had been predicted)."""

    def __init__(self, engine: Engine, batcher: MicroBatcher[Job, Outcome], limits: RequestLimits,
                 prediction_log: PredictionLog | None, metrics: ServerMetrics) -> None:
        super().__init__(engine, batcher, limits)
        self._log = prediction_log
        self._metrics = metrics

    async def SubmitFeedback(self, request: feedback_pb2.SubmitFeedbackRequest,
                             context: grpc.aio.ServicerContext) -> feedback_pb2.SubmitFeedbackResponse:
        feedback = self._feedback(request)
        if self._log is None:
            raise NotConfigured("feedback is stored in the prediction log: this server runs without one "
                                "(serve with --prediction-log URL)")
        receipt = await asyncio.to_thread(self._log.add_feedback, feedback)
        kind = "unmatched" if receipt.was_correct is None else "confirm" if receipt.was_correct else "correct"
        self._metrics.feedback.labels(kind=kind).inc()
        return _feedback_response(receipt)

    def _feedback(self, request: feedback_pb2.SubmitFeedbackRequest) -> Feedback:
        productid = _productid(request, "productid")
        request_id = request.request_id if request.HasField("request_id") else None
        if productid is None and request_id is None:
            raise InvalidInput("productid", "set productid and/or request_id to say which product this is about")
        if request_id is not None:
            check_request_id(request_id)
        known = self._engine.info().prdtypecodes
        if request.prdtypecode not in known:
            raise InvalidInput("prdtypecode", f"{request.prdtypecode} is not one of the served model's "
                                              f"{len(known)} codes")
        check_actor(request.actor)
        product = self._product(request.product, "product") if request.HasField("product") else None
        ids = {}
        if request.HasField("feedback_id"):
            check_request_id(request.feedback_id, "feedback_id")
            ids["feedback_id"] = request.feedback_id
        return Feedback(prdtypecode=request.prdtypecode, productid=productid, request_id=request_id,
                        product=product, actor=request.actor, **ids)


def _productid(message: product_pb2.Product | feedback_pb2.SubmitFeedbackRequest, field: str) -> int | None:
    if not message.HasField("productid"):
        return None
    check_productid(message.productid, field)
    return message.productid


def _feedback_response(receipt: FeedbackReceipt) -> feedback_pb2.SubmitFeedbackResponse:
    response = feedback_pb2.SubmitFeedbackResponse(feedback_id=receipt.feedback_id)
    if receipt.productid is not None:
        response.productid = receipt.productid
    if receipt.predicted_code is not None:
        response.predicted_code = receipt.predicted_code
        response.was_correct = receipt.predicted_code == receipt.prdtypecode
    return response


def _versions(versions: Versions) -> product_pb2.Versions:
    return product_pb2.Versions(model_fingerprint=versions.model_fingerprint, index_version=versions.index_version,
                                model_release=versions.model_release)


def _neighbor(n: NeighborInfo) -> product_pb2.Neighbor:
    return product_pb2.Neighbor(productid=n.productid, prdtypecode=n.prdtypecode, similarity=n.similarity,
                                designation=n.designation, imageid=n.imageid)


def _classify_response(outcome: Outcome, request_id: str) -> classification_pb2.ClassifyResponse:
    result: Classification | None = outcome.classification
    assert result is not None, "a classify job always yields a classification"
    return classification_pb2.ClassifyResponse(
        predictions=[classification_pb2.CodeScore(prdtypecode=code, probability=p) for code, p in result.predictions],
        neighbors=[_neighbor(n) for n in result.neighbors], abstain=result.abstain,
        versions=_versions(outcome.versions), request_id=request_id)

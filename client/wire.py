"""Conversion between the client's typed values and the shopclip.v1 protobuf messages.

The only client module that knows message field names, so both clients build identical requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Generic, TypeVar

from google.protobuf.message import Message

from shopclip.client.results import (ClassifyResult, EmbedResult, FeedbackResult, Info, Neighbor, Prediction,
                                     SearchResult, Versions)
from shopclip.products import ProductInput
from shopclip.v1 import (classification_pb2, embedding_pb2, feedback_pb2, info_pb2, product_pb2, search_pb2)

ProductLike = ProductInput | str
"""A product, or just its designation (title)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary RPC ready to send: full method path, request, and how to read the answer."""

    method: str
    request: Message
    response_type: type[Message]
    convert: Callable[[Message], T]


def method_path(stubs: ModuleType, service: str, method: str) -> str:
    """`/package.Service/Method`, read from the generated descriptors so the .proto stays the one source."""
    descriptor = stubs.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[method].name}"


CLASSIFY = method_path(classification_pb2, "ClassificationService", "Classify")
CLASSIFY_BATCH = method_path(classification_pb2, "ClassificationService", "ClassifyBatch")
SEARCH_SIMILAR = method_path(search_pb2, "SearchService", "SearchSimilar")
EMBED = method_path(embedding_pb2, "EmbeddingService", "Embed")
GET_INFO = method_path(info_pb2, "InfoService", "GetInfo")
SUBMIT_FEEDBACK = method_path(feedback_pb2, "FeedbackService", "SubmitFeedback")


def classify_call(product: ProductLike, top_k: int | None, productid: int | None = None) -> Call[ClassifyResult]:
    return Call(CLASSIFY, classify_request(product, top_k, productid), classification_pb2.ClassifyResponse,
                classify_result)


BATCH_LIMIT = 256
"""The server's default ClassifyBatch limit (`serve --batch-limit`)."""


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    return [items[start:start + size] for start in range(0, len(items), size)]


def classify_batch_call(products: Sequence[ProductLike], top_k: int | None,
                        productids: Sequence[int | None] | None = None) -> Call[list[ClassifyResult]]:
    return Call(CLASSIFY_BATCH, classify_batch_request(products, top_k, productids),
                classification_pb2.ClassifyBatchResponse, classify_batch_results)


def search_call(product: ProductLike | None, productid: int | None, top_k: int | None,
                prdtypecode: int | None) -> Call[SearchResult]:
    return Call(SEARCH_SIMILAR, search_request(product, productid, top_k, prdtypecode),
                search_pb2.SearchSimilarResponse, search_result)


def embed_call(products: Sequence[ProductLike]) -> Call[EmbedResult]:
    return Call(EMBED, embed_request(products), embedding_pb2.EmbedResponse, embed_result)


def info_call() -> Call[Info]:
    return Call(GET_INFO, info_pb2.GetInfoRequest(), info_pb2.GetInfoResponse, info)


def feedback_call(prdtypecode: int, productid: int | None, request_id: str | None, product: ProductLike | None,
                  actor: str, feedback_id: str) -> Call[FeedbackResult]:
    return Call(SUBMIT_FEEDBACK, feedback_request(prdtypecode, productid, request_id, product, actor, feedback_id),
                feedback_pb2.SubmitFeedbackResponse, feedback_result)


def as_product(product: ProductLike) -> ProductInput:
    return ProductInput(designation=product) if isinstance(product, str) else product


def product_message(product: ProductLike, productid: int | None = None) -> product_pb2.Product:
    """Unset optional fields stay unset on the wire (an empty description is not sent)."""
    product = as_product(product)
    message = product_pb2.Product(designation=product.designation)
    if product.description:
        message.description = product.description
    if product.image is not None:
        message.image = product.image
    if productid is not None:
        message.productid = productid
    return message


def classify_request(product: ProductLike, top_k: int | None,
                     productid: int | None = None) -> classification_pb2.ClassifyRequest:
    request = classification_pb2.ClassifyRequest(product=product_message(product, productid))
    if top_k is not None:
        request.top_k = top_k
    return request


def classify_batch_request(products: Sequence[ProductLike], top_k: int | None,
                           productids: Sequence[int | None] | None = None) -> classification_pb2.ClassifyBatchRequest:
    if productids is not None and len(productids) != len(products):
        raise ValueError(f"{len(productids)} productids for {len(products)} products")
    ids = productids if productids is not None else [None] * len(products)
    request = classification_pb2.ClassifyBatchRequest(products=[product_message(p, i) for p, i in zip(products, ids)])
    if top_k is not None:
        request.top_k = top_k
    return request


def feedback_request(prdtypecode: int, productid: int | None, request_id: str | None, product: ProductLike | None,
                     actor: str, feedback_id: str) -> feedback_pb2.SubmitFeedbackRequest:
    if productid is None and not request_id:
        raise ValueError("feedback needs the product's productid, the request_id of its answer, or both")
    request = feedback_pb2.SubmitFeedbackRequest(prdtypecode=prdtypecode, actor=actor, feedback_id=feedback_id)
    if productid is not None:
        request.productid = productid
    if request_id:
        request.request_id = request_id
    if product is not None:
        request.product.CopyFrom(product_message(product))
    return request


def search_request(product: ProductLike | None, productid: int | None, top_k: int | None,
                   prdtypecode: int | None) -> search_pb2.SearchSimilarRequest:
    """Exactly one of `product` or `productid` is the query."""
    if (product is None) == (productid is None):
        raise ValueError("search needs exactly one query: a product or a productid")
    request = search_pb2.SearchSimilarRequest()
    if productid is not None:
        request.productid = productid
    else:
        request.product.CopyFrom(product_message(product))  # type: ignore[arg-type]
    if top_k is not None:
        request.top_k = top_k
    if prdtypecode is not None:
        request.prdtypecode = prdtypecode
    return request


def embed_request(products: Sequence[ProductLike]) -> embedding_pb2.EmbedRequest:
    return embedding_pb2.EmbedRequest(products=[product_message(p) for p in products])


def versions(message: product_pb2.Versions) -> Versions:
    return Versions(model_fingerprint=message.model_fingerprint, index_version=message.index_version,
                    model_release=message.model_release)


def neighbor(message: product_pb2.Neighbor) -> Neighbor:
    return Neighbor(productid=message.productid,
                    prdtypecode=message.prdtypecode if message.HasField("prdtypecode") else None,
                    similarity=message.similarity, designation=message.designation,
                    imageid=message.imageid if message.HasField("imageid") else None)


def classify_result(message: classification_pb2.ClassifyResponse) -> ClassifyResult:
    return ClassifyResult(predictions=tuple(Prediction(p.prdtypecode, p.probability) for p in message.predictions),
                          neighbors=tuple(neighbor(n) for n in message.neighbors),
                          abstain=message.abstain, versions=versions(message.versions),
                          request_id=message.request_id)


def classify_batch_results(message: classification_pb2.ClassifyBatchResponse) -> list[ClassifyResult]:
    return [classify_result(result) for result in message.results]


def feedback_result(message: feedback_pb2.SubmitFeedbackResponse) -> FeedbackResult:
    return FeedbackResult(
        feedback_id=message.feedback_id,
        productid=message.productid if message.HasField("productid") else None,
        predicted_code=message.predicted_code if message.HasField("predicted_code") else None,
        was_correct=message.was_correct if message.HasField("was_correct") else None)


def search_result(message: search_pb2.SearchSimilarResponse) -> SearchResult:
    return SearchResult(neighbors=tuple(neighbor(n) for n in message.results), versions=versions(message.versions))


def embed_result(message: embedding_pb2.EmbedResponse) -> EmbedResult:
    return EmbedResult(vectors=tuple(tuple(e.values) for e in message.embeddings), dim=message.dim,
                       versions=versions(message.versions))


def info(message: info_pb2.GetInfoResponse) -> Info:
    known = message.index_type in info_pb2.IndexType.values()  # a newer server may know more types
    index_type = info_pb2.IndexType.Name(message.index_type).removeprefix("INDEX_TYPE_") if known \
        else str(message.index_type)
    return Info(versions=versions(message.versions), architecture=message.architecture,
                embed_dim=message.embed_dim, prdtypecodes=tuple(message.prdtypecodes),
                index_size=message.index_size, index_type=index_type,
                abstain_threshold=message.abstain_threshold, knn_k=message.knn_k, metrics=dict(message.metrics))

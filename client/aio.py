"""asyncio client (grpc.aio): the same calls, results and retry rules as `ShopclipClient`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio

from shopclip.client import wire
from shopclip.client.config import ClientConfig, client_config
from shopclip.client.errors import ShopclipRpcError, status_code
from shopclip.client.results import ClassifyResult, EmbedResult, FeedbackResult, Info, SearchResult
from shopclip.client.retry import RetryPolicy, RetrySchedule
from shopclip.client.wire import ProductLike

T = TypeVar("T")


class AsyncShopclipClient:
    """Calls a shopclip server from asyncio code. Create it inside the event loop that uses it.

    >>> async with AsyncShopclipClient("localhost:50051") as client:
    ...     (await client.classify("Lot de 3 coussins déco")).code
    """

    def __init__(self, target: str | None = None, *, timeout: float | None = None, token: str | None = None,
                 tls_ca: str | Path | None = None, tls: bool = False, tls_server_name: str | None = None,
                 retry: RetryPolicy | None = None, config: ClientConfig | None = None) -> None:
        """`target` host:port; `timeout` each call's deadline in seconds, retries included (default 10; a
        call's own `timeout=` wins); `token` bearer token; `tls_ca` PEM roots to trust (TLS), `tls` TLS with
        the system roots; `retry` backoff on UNAVAILABLE. Unset ones come from SHOPCLIP_TARGET,
        SHOPCLIP_TOKEN, SHOPCLIP_TLS_CA. `config` replaces them all."""
        self.config = config or client_config(target, timeout, token, tls_ca, tls, tls_server_name, retry)
        options = self.config.channel_options()
        self._channel = (grpc.aio.secure_channel(self.config.target, self.config.channel_credentials(), options)
                         if self.config.uses_tls else grpc.aio.insecure_channel(self.config.target, options))
        self._methods: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def classify(self, product: ProductLike, *, top_k: int | None = None, productid: int | None = None,
                       timeout: float | None = None) -> ClassifyResult:
        """Ranked prdtypecodes, the neighbours that voted and the abstain flag for one product. `productid`, the
        shop's id of the listing, is recorded with the answer (feedback and monitoring can then refer to it)."""
        return await self._run(wire.classify_call(product, top_k, productid), timeout)

    async def classify_batch(self, products: Sequence[ProductLike], *, top_k: int | None = None,
                             productids: Sequence[int | None] | None = None, timeout: float | None = None,
                             chunk_size: int = wire.BATCH_LIMIT) -> list[ClassifyResult]:
        """One result per product, in order. Any number of products: sent `chunk_size` per call (the server's
        ClassifyBatch limit, 256 by default), one after the other; `timeout` applies to each call. `productids`,
        when given, has one entry (or None) per product."""
        if productids is not None and len(productids) != len(products):
            raise ValueError(f"{len(productids)} productids for {len(products)} products")
        product_chunks = wire.chunks(products, chunk_size)
        id_chunks = wire.chunks(productids, chunk_size) if productids is not None else [None] * len(product_chunks)
        results: list[ClassifyResult] = []
        for chunk, ids in zip(product_chunks, id_chunks):
            results += await self._run(wire.classify_batch_call(chunk, top_k, ids), timeout)
        return results

    async def search(self, product: ProductLike | None = None, *, productid: int | None = None,
                     top_k: int | None = None, prdtypecode: int | None = None,
                     timeout: float | None = None) -> SearchResult:
        """Similar catalogue products to a product (text, image or both) or to a catalogue productid."""
        return await self._run(wire.search_call(product, productid, top_k, prdtypecode), timeout)

    async def embed(self, products: Sequence[ProductLike], *, timeout: float | None = None) -> EmbedResult:
        return await self._run(wire.embed_call(products), timeout)

    async def info(self, *, timeout: float | None = None) -> Info:
        return await self._run(wire.info_call(), timeout)

    async def feedback(self, prdtypecode: int, *, productid: int | None = None, request_id: str | None = None,
                       product: ProductLike | None = None, actor: str = "",
                       timeout: float | None = None) -> FeedbackResult:
        """Confirm or correct a product's code: by `productid` and/or the `request_id` of its ClassifyResult.
        `product` (its content) lets a product the catalogue does not hold yet join it with this label; `actor`
        says who decided ("shop-backend", "admin:alice"). Needs a server with a prediction log. Safe to retry:
        the feedback id is chosen here, once, so the server stores it once."""
        call = wire.feedback_call(prdtypecode, productid, request_id, product, actor, uuid.uuid4().hex)
        return await self._run(call, timeout)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the channel connects; raises ShopclipRpcError(UNAVAILABLE) after `timeout`."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise ShopclipRpcError(grpc.StatusCode.UNAVAILABLE, f"no connection to {self.config.target} "
                                   f"within {timeout:g} s", "connect") from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncShopclipClient":
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def _run(self, call: wire.Call[T], timeout: float | None) -> T:
        schedule = RetrySchedule(self.config.retry, timeout if timeout is not None else self.config.timeout_s)
        method = self._method(call)
        while True:
            try:
                response = await method(call.request, timeout=schedule.attempt_timeout(),
                                        metadata=self.config.metadata())
                return call.convert(response)
            except grpc.RpcError as error:
                delay = schedule.backoff_after(status_code(error))
                if delay is None:
                    raise ShopclipRpcError.from_rpc_error(error, call.method, schedule.attempts) from None
                await asyncio.sleep(delay)

    def _method(self, call: wire.Call[T]) -> grpc.aio.UnaryUnaryMultiCallable:
        if call.method not in self._methods:
            self._methods[call.method] = self._channel.unary_unary(
                call.method, request_serializer=type(call.request).SerializeToString,
                response_deserializer=call.response_type.FromString)
        return self._methods[call.method]

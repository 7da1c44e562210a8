"""Words on the images of products without text are read ahead of the forward pass (server/image_words.py): the
forward receives them with the product, a text product batched or queued beside such a product does not wait for
the read, the reads are bounded like the batcher's queue, and `--image-words-workers 0` leaves them to the forward.
A real server on loopback; the model is the fake with a slow reader of its own."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Sequence

import grpc
import pytest
from PIL import Image

from shopclip.model import FakeEmbedder
from shopclip.products import ProductInput
from shopclip.v1 import classification_pb2, classification_pb2_grpc, product_pb2
from support.embedders import install_embedder
from support.server import running_server

def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


IMAGE = jpeg()


class ReadingEmbedder(FakeEmbedder):
    """The fake, with an OCR view: reading the words on an image-only product takes `read_s`; records what each
    forward was handed and which thread read."""

    def __init__(self, read_s: float) -> None:
        super().__init__(dim=32, codes=range(27))
        self.read_s = read_s
        self.given: list[list[str | None] | None] = []
        self.read_on: list[str] = []

    def read_words_on_image(self, product: ProductInput, field: str) -> str | None:
        if product.has_text or not product.has_image:
            return None
        self.read_on.append(threading.current_thread().name)
        time.sleep(self.read_s)
        return "mots lus"

    def encode(self, products: Sequence[ProductInput], image_words: Sequence[str | None] | None = None):  # noqa: ANN201
        """Reads, as a bundle does, the words not read ahead."""
        self.given.append(None if image_words is None else list(image_words))
        for i, product in enumerate(products):
            if image_words is None or image_words[i] is None:
                self.read_words_on_image(product, f"products[{i}].image")
        return super().encode(products, image_words)


def image_only() -> product_pb2.Product:
    return product_pb2.Product(designation="", image=IMAGE)


async def classify(stub: classification_pb2_grpc.ClassificationServiceStub, product: product_pb2.Product,
                   finished: list[str], name: str) -> None:
    await stub.Classify(classification_pb2.ClassifyRequest(product=product))
    finished.append(name)


def test_words_are_read_ahead_and_handed_to_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = install_embedder(monkeypatch, ReadingEmbedder(0.0))

    async def scenario() -> None:
        async with running_server() as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            await stub.ClassifyBatch(classification_pb2.ClassifyBatchRequest(
                products=[image_only(), product_pb2.Product(designation="Lot de 3 tasses", image=IMAGE)]))

    asyncio.run(scenario())
    assert embedder.given == [["mots lus", None]]  # the text product: the model decides in the forward
    assert all(name.startswith("shopclip-image-words") for name in embedder.read_on) and embedder.read_on


@pytest.mark.parametrize(("workers", "order"), [(2, ["text", "image only"]), (0, ["image only", "text"])])
def test_a_text_product_does_not_wait_for_the_words_of_an_image_only_one(
        monkeypatch: pytest.MonkeyPatch, workers: int, order: list[str]) -> None:
    """Read ahead, the text product is answered during the read; read in the forward (0 workers), after it."""
    embedder = install_embedder(monkeypatch, ReadingEmbedder(1.5))

    async def scenario() -> list[str]:
        finished: list[str] = []
        async with running_server(image_words_workers=workers) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            reading = asyncio.ensure_future(classify(stub, image_only(), finished, "image only"))
            for _ in range(500):  # until the read has started
                if embedder.read_on or reading.done():
                    break
                await asyncio.sleep(0.01)
            await classify(stub, product_pb2.Product(designation="Lot de 3 tasses"), finished, "text")
            await reading
        return finished

    assert asyncio.run(scenario()) == order
    assert len(embedder.read_on) == 1


def test_reads_beyond_the_queue_size_are_refused_as_overloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    install_embedder(monkeypatch, ReadingEmbedder(1.0))

    async def scenario() -> grpc.StatusCode:
        async with running_server(queue_size=3) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            batch = classification_pb2.ClassifyBatchRequest(products=[image_only(), image_only()])
            first = asyncio.ensure_future(stub.ClassifyBatch(batch))
            await asyncio.sleep(0.3)  # two reads under way
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ClassifyBatch(batch)
            await first  # the first request is answered
            return refused.value.code()

    assert asyncio.run(scenario()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_without_reader_threads_the_forward_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = install_embedder(monkeypatch, ReadingEmbedder(0.0))

    async def scenario() -> None:
        async with running_server(image_words_workers=0) as (_, channel):
            stub = classification_pb2_grpc.ClassificationServiceStub(channel)
            await stub.Classify(classification_pb2.ClassifyRequest(product=image_only()))

    asyncio.run(scenario())
    assert embedder.given == [[None]] and len(embedder.read_on) == 1
    assert embedder.read_on[0].startswith("shopclip-forward")

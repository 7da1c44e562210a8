"""Helpers for the server tests: an exact in-memory PublishedIndex over FakeEmbedder vectors, an index source
whose published version a test can flip, crafted images, a self-signed certificate and a running server."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import numpy as np

from shopclip.errors import NotFound
from shopclip.indexer.api import CatalogueProduct, Neighbor
from shopclip.model import FakeEmbedder, load_embedder
from shopclip.products import ProductInput
from shopclip.server.app import ShopclipServer, create_server
from shopclip.server.config import ServerConfig

FAKE_BUNDLE = "fake:dim=32,classes=27"
CODES_IN_INDEX = (3, 7, 11, 19)
PRODUCTS_PER_CODE = 5


def catalogue_title(code: int, j: int) -> str:
    """Titles of one code share two words, so the fake embedder puts them close together."""
    return f"famille{code} sorte{code} modele{j}"


@dataclass(frozen=True)
class CatalogueRow:
    productid: int
    prdtypecode: int | None
    designation: str


def catalogue_rows() -> list[CatalogueRow]:
    return [CatalogueRow(productid=1000 * code + j, prdtypecode=code, designation=catalogue_title(code, j))
            for code in CODES_IN_INDEX for j in range(PRODUCTS_PER_CODE)]


class MemoryIndex:
    """Exact inner-product search over the fake embedder's vectors (implements indexer.api.PublishedIndex)."""

    def __init__(self, version: str, rows: Sequence[CatalogueRow], embedder: FakeEmbedder | None = None) -> None:
        embedder = embedder or load_embedder(FAKE_BUNDLE)
        self.version = version
        self.manifest = {"version": version, "model": {"fingerprint": embedder.fingerprint, "dim": embedder.dim},
                         "index": {"kind": "flat"}}
        self._rows = list(rows)
        self._by_id = {row.productid: i for i, row in enumerate(self._rows)}
        self._vectors = embedder.embed([ProductInput(designation=row.designation) for row in self._rows])

    def __len__(self) -> int:
        return len(self._rows)

    def search(self, vectors: np.ndarray, k: int, code: int | None = None,
               exclude: Sequence[int] = ()) -> list[list[Neighbor]]:
        out = []
        for scores in np.atleast_2d(vectors) @ self._vectors.T:
            hits = [Neighbor(self._rows[i].productid, self._rows[i].prdtypecode, float(scores[i]))
                    for i in np.argsort(-scores, kind="stable")]
            out.append([h for h in hits if h.productid not in exclude and code in (None, h.prdtypecode)][:k])
        return out

    def product(self, productid: int) -> CatalogueProduct:
        row = self._rows[self._row(productid)]
        return CatalogueProduct(row.productid, row.designation, "", row.productid + 1, row.prdtypecode, None)

    def titles(self, productids: Sequence[int]) -> list[tuple[str, int | None]]:
        return [(self._rows[self._by_id[p]].designation, p + 1) if p in self._by_id else ("", None)
                for p in productids]

    def vector(self, productid: int) -> np.ndarray:
        return self._vectors[self._row(productid)]

    def _row(self, productid: int) -> int:
        if productid not in self._by_id:
            raise NotFound(f"productid {productid} is not in index {self.version}")
        return self._by_id[productid]


class MemorySource:
    """An index source whose current version a test publishes by hand; `open_delay_s` mimics a slow load."""

    def __init__(self, index: MemoryIndex | None = None, open_delay_s: float = 0.0) -> None:
        self.current = index
        self.open_delay_s = open_delay_s
        self.opened_on_threads: list[str] = []

    def current_version(self) -> str | None:
        return self.current.version if self.current is not None else None

    def open(self) -> MemoryIndex:
        self.opened_on_threads.append(threading.current_thread().name)
        time.sleep(self.open_delay_s)
        assert self.current is not None
        return self.current


class SlowEmbedder(FakeEmbedder):
    """FakeEmbedder whose forward takes `delay_s` and records every designation it saw."""

    def __init__(self, delay_s: float, fail_with: Exception | None = None) -> None:
        super().__init__(dim=32, codes=range(27))
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.seen: list[str] = []
        self.batch_sizes: list[int] = []

    def embed(self, products: Sequence[ProductInput]) -> np.ndarray:
        self.seen.extend(p.designation for p in products)
        self.batch_sizes.append(len(products))
        time.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return super().embed(products)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (what a decompression bomb looks like before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_config(**overrides: Any) -> ServerConfig:
    return ServerConfig(**{"bundle": FAKE_BUNDLE, "host": "127.0.0.1", "port": 0, **overrides})


@asynccontextmanager
async def running_server(index_source: MemorySource | None = None, **overrides: Any
                         ) -> AsyncIterator[tuple[ShopclipServer, grpc.aio.Channel]]:
    """A real server on a free port and an insecure channel to it; stopped at exit."""
    server, port = await create_server(make_config(**overrides), index_source)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)


async def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)

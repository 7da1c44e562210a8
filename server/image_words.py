"""Words on the images of products without text, read before their forward pass.

Reading them (Tesseract: about 140-270 ms a product on these CPUs) inside the forward held every product batched
with an image-only one, text products included. Read here, on threads of their own, they travel in the product's
`Job` and the forward only reads what was not read ahead: a product whose image does not decode (the forward decodes
it again and names the field) or a model swapped in meanwhile that reads words where the previous one did not.

What a model reads is the model's decision (`Embedder.read_words_on_image`); the server only asks ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from shopclip.errors import InvalidInput, Overloaded
from shopclip.server.engine import Engine, Job


class ImageWordsReader:
    def __init__(self, engine: Engine, workers: int, max_pending: int) -> None:
        """`workers` Tesseract reads at once (0: none ahead, the forward reads them); at most `max_pending` products
        waiting or being read, beyond which a request is refused as Overloaded (as the batcher's queue does)."""
        self._engine = engine
        self._max_pending = max_pending
        self._pending = 0
        self._executor = (ThreadPoolExecutor(workers, thread_name_prefix="shopclip-image-words") if workers > 0
                          else None)

    async def read_ahead(self, jobs: Sequence[Job], fields: Sequence[str]) -> list[Job]:
        """`jobs` with the words on their images where the served model reads some; `fields` name their products."""
        rows = [i for i, job in enumerate(jobs) if _may_read(job)]
        if self._executor is None or not rows:
            return list(jobs)
        if self._pending + len(rows) > self._max_pending:
            raise Overloaded(f"{self._pending} products are waiting for the words on their images to be read: "
                             "retry later")
        self._pending += len(rows)
        try:
            words = await asyncio.gather(*(self._read(jobs[i], fields[i]) for i in rows))
        finally:
            self._pending -= len(rows)
        read = list(jobs)
        for row, found in zip(rows, words):
            if found is not None:
                read[row] = replace(jobs[row], image_words=found)
        return read

    async def _read(self, job: Job, field: str) -> str | None:
        embedder = self._engine.embedder
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, embedder.read_words_on_image, job.product,
                                              f"{field}.image")
        except InvalidInput:
            return None  # the forward decodes the image again and refuses the product by its field

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _may_read(job: Job) -> bool:
    """Worth a thread hop: a product to classify with an image and no text (the model has the final say)."""
    product = job.product
    return job.top_k is not None and job.image_words is None and product.has_image and not product.has_text

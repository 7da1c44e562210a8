"""What the server remembers of each answer: a request id per classified product, the classified-products
counter, and, when a prediction log is plugged in, one `PredictionRecord` per product handed to it.

The log is anything that implements `shopclip.predictions.PredictionLog` (in production
`shopclip.predlog.PredictionLogWriter`, which the server never imports); its `record` only queues, so
recording costs the request a few microseconds per product and never fails it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from shopclip.predictions import PredictionLog, PredictionRecord, new_id, utc_now
from shopclip.products import ProductInput
from shopclip.server.engine import Outcome
from shopclip.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class PredictionRecorder:
    def __init__(self, metrics: ServerMetrics, prediction_log: PredictionLog | None = None,
                 keep_embeddings: bool = True) -> None:
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.keep_embeddings = keep_embeddings

    def answered(self, products: Sequence[ProductInput], productids: Sequence[int | None],
                 outcomes: Sequence[Outcome], started: float) -> list[str]:
        """Request ids of classified `outcomes` (in order), counted and logged; `started` is the request's
        `time.perf_counter()` at arrival."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        request_ids = [new_id() for _ in outcomes]
        for outcome in outcomes:
            assert outcome.classification is not None, "only classify outcomes are recorded"
            self.metrics.classified.labels(abstain=str(outcome.classification.abstain).lower()).inc()
        if self.prediction_log is not None:
            created_at = utc_now()
            records = [self._record(request_id, product, productid, outcome, latency_ms, created_at)
                       for request_id, product, productid, outcome in zip(request_ids, products, productids,
                                                                         outcomes)]
            self.prediction_log.record(records)
        return request_ids

    def _record(self, request_id: str, product: ProductInput, productid: int | None, outcome: Outcome,
                latency_ms: float, created_at) -> PredictionRecord:  # noqa: ANN001 - datetime
        result = outcome.classification
        assert result is not None
        versions = outcome.versions
        return PredictionRecord.of(
            product, productid, result.predictions, result.abstain, versions.model_fingerprint,
            versions.index_version, latency_ms,
            embedding=outcome.vector.tolist() if self.keep_embeddings else None,
            request_id=request_id, created_at=created_at, model_release=versions.model_release)

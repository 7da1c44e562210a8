"""An in-memory `PredictionLog` for server tests that are about what the server hands over (records, feedback),
not about the database (tests/test_predlog_*.py test the real one)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from shopclip.errors import NotFound, NotReady
from shopclip.predictions import Feedback, FeedbackReceipt, PredictionRecord


@dataclass
class MemoryPredictionLog:
    records: list[PredictionRecord] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    database_up: bool = True
    """False: add_feedback raises NotReady, as the real log does while its database is down."""
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, records: Sequence[PredictionRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def add_feedback(self, feedback: Feedback) -> FeedbackReceipt:
        if not self.database_up:
            raise NotReady("prediction log database unreachable")
        with self._lock:
            predicted = self._prediction_for(feedback)
            self.feedback.append(feedback)
        productid = feedback.productid if feedback.productid is not None else (predicted.productid if predicted
                                                                                 else None)
        return FeedbackReceipt(feedback.feedback_id, feedback.prdtypecode, productid,
                               predicted.top_code if predicted else None)

    def _prediction_for(self, feedback: Feedback) -> PredictionRecord | None:
        if feedback.request_id is not None:
            found = [r for r in self.records if r.request_id == feedback.request_id]
            if not found:
                raise NotFound(f"request_id {feedback.request_id}: no logged prediction")
            return found[0]
        same_product = [r for r in self.records if r.productid == feedback.productid]
        return same_product[-1] if same_product else None

    def collectors(self) -> Sequence[object]:
        return ()

    def close(self, timeout_s: float = 10.0) -> None:
        self.closed = True

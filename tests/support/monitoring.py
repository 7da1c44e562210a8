"""Prediction logs for the monitor's tests: a reference week of mixed products, then a week that looks the same
(unshifted) or one of image-only products of two codes (shifted), written through the real prediction store.

The shifted week moves text_length (all 0), has_description (none), has_image (all), top_code (two codes), the
confidence (lower), the abstain rate (+0.3) and the embedding centroid; its feedback gives a live accuracy of 0.6
on 60 rows (0.9 in the unshifted week). `shifted_gauges` is the monitor's gauge values of such a report (for
the Prometheus rule tests); `write_reference_folder` a labelled challenge-layout folder of mixed products.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from shopclip.predictions import Feedback, PredictionRecord

UNTIL = datetime(2024, 6, 15, tzinfo=timezone.utc)
"""End of the window the tests report on."""
WINDOW = timedelta(days=7)
CODES = (10, 40, 50, 1280, 1560, 2403, 2583, 2705)
SHIFTED_CODES = (1280, 2583)
DIM = 16
ROWS = 400
FEEDBACK_ROWS = 60
RELEASE = "release-b"
"""The release of the model that answered the image-only week (the mixed weeks were logged before releases)."""
FEEDBACK_RIGHT = {True: 36, False: 54}
"""Feedback rows that confirm the prediction, of the shifted and the unshifted week (0.6 and 0.9)."""


@dataclass(frozen=True)
class MonitoringLog:
    url: str
    start: datetime
    """Start of the reported window (its end is `UNTIL`); the reference week is the one before it."""
    end: datetime
    shifted: bool


def _direction(code: int) -> np.ndarray:
    return np.random.default_rng(code).normal(size=DIM)


def mixed_records(start: datetime, span: timedelta, count: int = ROWS, seed: int = 0,
                  prefix: str = "ref") -> list[PredictionRecord]:
    """Products like a catalogue's: text of varied length, most with a description, half with an image."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        code = int(rng.choice(CODES))
        has_image = bool(rng.random() < 0.5)
        has_description = bool(rng.random() < 0.7)
        text_length = int(rng.integers(15, 90)) + (int(rng.integers(50, 900)) if has_description else 0)
        records.append(_record(f"{prefix}{i:08d}", start + span * (i + 0.5) / count, code, text_length, has_description,
                               has_image, int(rng.integers(20_000, 90_000)) if has_image else 0,
                               float(rng.uniform(0.55, 0.99)), bool(rng.random() < 0.05), rng))
    return records


def image_only_records(start: datetime, span: timedelta, count: int = ROWS, seed: int = 1,
                       prefix: str = "img") -> list[PredictionRecord]:
    """Image-only products of two codes, answered with less confidence and more abstentions."""
    rng = np.random.default_rng(seed)
    return [_record(f"{prefix}{i:08d}", start + span * (i + 0.5) / count, int(rng.choice(SHIFTED_CODES)), 0, False,
                    True, int(rng.integers(30_000, 60_000)), float(rng.uniform(0.3, 0.7)), bool(rng.random() < 0.35),
                    rng, RELEASE)
            for i in range(count)]


def _record(request_id: str, created_at: datetime, code: int, text_length: int, has_description: bool,
            has_image: bool, image_bytes: int, probability: float, abstain: bool,
            rng: np.random.Generator, release: str = "") -> PredictionRecord:
    embedding = _direction(code) + rng.normal(scale=0.3, size=DIM)
    other = CODES[(CODES.index(code) + 1) % len(CODES)]
    return PredictionRecord(
        request_id=request_id, created_at=created_at, productid=int(request_id[-8:]),
        content_hash=request_id, text_length=text_length, has_description=has_description, has_image=has_image,
        image_bytes=image_bytes, predictions=((code, probability), (other, (1 - probability) / 2)), abstain=abstain,
        model_fingerprint="model-a", index_version="v1", latency_ms=12.0,
        embedding=tuple(float(x) for x in embedding), designation="", model_release=release)


def write_monitoring_log(url: str, shifted: bool = True, until: datetime = UNTIL) -> MonitoringLog:
    """A log at `url` with the reference week before [until - WINDOW, until) and the reported week in it."""
    from shopclip.predlog.store import PredictionStore

    start = until - WINDOW
    current = image_only_records(start, WINDOW) if shifted else mixed_records(start, WINDOW, seed=7, prefix="cur")
    store = PredictionStore.open(url)
    try:
        store.insert_predictions(mixed_records(start - WINDOW, WINDOW) + current)
        for i, record in enumerate(current[:FEEDBACK_ROWS]):
            right = i < FEEDBACK_RIGHT[shifted]
            store.add_feedback(Feedback(prdtypecode=record.top_code if right else 99999, request_id=record.request_id,
                                        actor="test", created_at=record.created_at + timedelta(minutes=5)))
    finally:
        store.dispose()
    return MonitoringLog(url, start, until, shifted)


def shifted_gauges(tmp_path: Path) -> dict[str, float]:
    """The monitor's gauge values (`name{label="..."}` -> value) of the report on a shifted week."""
    return report_gauges(tmp_path, shifted=True)


def report_gauges(tmp_path: Path, shifted: bool) -> dict[str, float]:
    """The monitor's gauge values of the report on a shifted or an unshifted week."""
    from shopclip.monitor.metrics import MonitorMetrics
    from shopclip.monitor.report import build_report
    from shopclip.predlog.db import open_database

    name = "shifted" if shifted else "unshifted"
    log = write_monitoring_log(f"sqlite:///{tmp_path / f'{name}.db'}", shifted=shifted)
    engine = open_database(log.url)
    try:
        report = build_report(engine, log.start, log.end, "previous")
    finally:
        engine.dispose()
    metrics = MonitorMetrics()
    metrics.update(report)
    return metrics.values()


def write_reference_folder(folder: Path, count: int = 120, seed: int = 3) -> Path:
    """A labelled challenge-layout folder (X_train.csv, Y_train.csv, images/) of mixed products like
    `mixed_records`: text of varied length, most with a description, some with an image, a few image-only."""
    from support.images import jpeg_bytes
    from support.index import X_HEADER, write_csv

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    x_rows, y_rows = [], []
    for index in range(count):
        productid, imageid = 700_000 + index, 900_000 + index
        image_only = index % 10 == 0
        designation = "" if image_only else "produit " + "x" * int(rng.integers(5, 80))
        description = "" if image_only or rng.random() < 0.3 else "d" * int(rng.integers(50, 900))
        if image_only or rng.random() < 0.5:
            side = int(rng.integers(16, 48))
            (folder / "images" / f"image_{imageid}_product_{productid}.jpg").write_bytes(
                jpeg_bytes((side, side), noise=True))
        x_rows.append([index, designation, description, productid, imageid])
        y_rows.append([index, int(rng.choice(CODES))])
    write_csv(folder / "X_train.csv", X_HEADER, x_rows)
    write_csv(folder / "Y_train.csv", ["", "prdtypecode"], y_rows)
    return folder

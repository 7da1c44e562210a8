"""The console's read queries over the prediction log (review queue, recent feedback), on SQLite and on a real
PostgreSQL: which answers need review, in which order, and which a person already settled."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from shopclip.errors import InvalidInput  # noqa: E402
from shopclip.predictions import Feedback, PredictionRecord  # noqa: E402
from shopclip.predlog.queries import recent_feedback, review_queue  # noqa: E402
from shopclip.predlog.store import PredictionStore  # noqa: E402
from shopclip.products import ProductInput  # noqa: E402

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def record(n: int, probability: float, abstain: bool = False, productid: int | None = None,
           at: datetime | None = None) -> PredictionRecord:
    """Prediction `n`, answered at T0 + n minutes, top code 10 with `probability`."""
    return PredictionRecord.of(ProductInput(designation=f"produit {n}"), productid=productid,
                               predictions=[(10, probability), (40, (1 - probability) / 2)], abstain=abstain,
                               model_fingerprint="fp-1", index_version="v1", latency_ms=2.0,
                               request_id=f"req{n:04d}", created_at=at or T0 + timedelta(minutes=n),
                               model_release="rel-1")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201 - PredictionStore
    url = f"sqlite:///{tmp_path / 'log.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = PredictionStore.open(url)
    yield opened
    opened.dispose()


def ids(items) -> list[str]:  # noqa: ANN001 - ReviewItem list
    return [item.request_id for item in items]


def test_the_queue_holds_abstained_and_low_confidence_answers_newest_first(store: PredictionStore) -> None:
    store.insert_predictions([record(1, 0.9), record(2, 0.3), record(3, 0.45, abstain=True), record(4, 0.6),
                              record(5, 0.49), record(6, 0.7, abstain=True), record(7, 0.5)])
    queue = review_queue(store.engine)
    assert ids(queue) == ["req0006", "req0005", "req0003", "req0002"]  # 0.5 is not below 0.5
    item = queue[-1]
    assert item.designation == "produit 2" and item.top_code == 10 and item.top_probability == pytest.approx(0.3)
    assert item.ranked == ((10, pytest.approx(0.3)), (40, pytest.approx(0.35)))
    assert item.created_at == T0 + timedelta(minutes=2) and not item.abstain
    assert (item.model_fingerprint, item.model_release) == ("fp-1", "rel-1")
    assert ids(review_queue(store.engine, order="least_confident")) == ["req0002", "req0003", "req0005", "req0006"]
    assert ids(review_queue(store.engine, max_probability=0.65)) == ["req0007", "req0006", "req0005", "req0004",
                                                                    "req0003", "req0002"]
    assert ids(review_queue(store.engine, max_probability=0.0)) == ["req0006", "req0003"]  # abstained always
    assert ids(review_queue(store.engine, limit=2)) == ["req0006", "req0005"]
    assert ids(review_queue(store.engine, order="least_confident", limit=1)) == ["req0002"]
    assert ids(review_queue(store.engine, since=T0 + timedelta(minutes=3))) == ["req0006", "req0005", "req0003"]


def test_least_confident_breaks_ties_newest_first(store: PredictionStore) -> None:
    store.insert_predictions([record(1, 0.2), record(2, 0.2), record(3, 0.1)])
    assert ids(review_queue(store.engine, order="least_confident")) == ["req0003", "req0002", "req0001"]


def test_reviewed_answers_leave_the_queue_by_request_id_or_by_a_later_product_feedback(
        store: PredictionStore) -> None:
    store.insert_predictions([record(1, 0.2), record(2, 0.2, productid=7), record(3, 0.2, productid=8),
                              record(4, 0.2, productid=9), record(5, 0.2, productid=9)])
    at = T0 + timedelta(minutes=4, seconds=30)  # after prediction 4, before prediction 5
    store.add_feedback(Feedback(prdtypecode=10, request_id="req0001", actor="console", created_at=at))
    store.add_feedback(Feedback(prdtypecode=40, productid=7, actor="shop", created_at=at))
    store.add_feedback(Feedback(prdtypecode=40, productid=8, actor="shop", created_at=T0))  # before prediction 3
    store.add_feedback(Feedback(prdtypecode=40, productid=9, actor="shop", created_at=at))
    # 1 by its request_id (it has no productid), 2 and 4 by a later feedback on their product; 3 was classified
    # after its product's feedback, 5 after the feedback on product 9: both still need a look.
    assert ids(review_queue(store.engine)) == ["req0005", "req0003"]
    assert ids(review_queue(store.engine, include_reviewed=True)) == ["req0005", "req0004", "req0003", "req0002",
                                                                      "req0001"]


def test_recent_feedback_is_newest_first_with_the_title_of_the_product(store: PredictionStore) -> None:
    store.insert_predictions([record(1, 0.2, productid=5), record(2, 0.9)])
    store.add_feedback(Feedback(prdtypecode=40, request_id="req0001", actor="console",
                                created_at=T0 + timedelta(hours=1)))
    store.add_feedback(Feedback(prdtypecode=10, request_id="req0002", actor="console",
                                created_at=T0 + timedelta(hours=2)))
    store.add_feedback(Feedback(prdtypecode=40, productid=77, actor="shop", created_at=T0 + timedelta(hours=3),
                                product=ProductInput(designation="tapis neuf")))
    store.add_feedback(Feedback(prdtypecode=40, productid=78, actor="shop", created_at=T0 + timedelta(hours=4)))
    latest = recent_feedback(store.engine)
    assert [(f.productid, f.designation, f.actor) for f in latest] == [
        (78, "", "shop"), (77, "tapis neuf", "shop"), (None, "produit 2", "console"), (5, "produit 1", "console")]
    assert [f.was_correct for f in latest] == [None, None, True, False]
    assert latest[0].created_at == T0 + timedelta(hours=4) and latest[0].applied_at is None
    assert len(recent_feedback(store.engine, limit=2)) == 2


@pytest.mark.parametrize(("arguments", "field"), [({"limit": 0}, "limit"), ({"order": "oldest"}, "order"),
                                                  ({"max_probability": 1.5}, "max_probability"),
                                                  ({"since": datetime(2025, 1, 1)}, "since")])
def test_bad_arguments_name_the_field(tmp_path: Path, arguments: dict, field: str) -> None:
    store = PredictionStore.open(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        with pytest.raises(InvalidInput) as error:
            review_queue(store.engine, **arguments)
        assert error.value.field == field
    finally:
        store.dispose()

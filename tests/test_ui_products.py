"""The console's product pages (Classify, Similar products, Review queue) run by Streamlit's AppTest against a
real server (fake bundle), a real published catalogue index and a real SQLite prediction log: what a catalogue
administrator sees, and the feedback rows the review actions leave in the log."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("sqlalchemy")

from sqlalchemy import select  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from shopclip.client import ShopclipClient  # noqa: E402
from shopclip.predlog.schema import feedback  # noqa: E402
from shopclip.predlog.store import PredictionStore  # noqa: E402
from support.catalogue import catalogue_title, productid_of  # noqa: E402
from support.images import jpeg_bytes  # noqa: E402
from support.index import PublishedCatalogue, build_catalogue_index  # noqa: E402
from support.server import serving  # noqa: E402

PAGES = Path(__file__).resolve().parents[1] / "ui" / "pages"
UNKNOWN_TITLES = ("chose inconnue", "objet bizarre", "truc sans nom", "machin étrange")
"""Titles sharing no word with the catalogue: the fake model abstains on them."""


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishedCatalogue:
    return build_catalogue_index(tmp_path_factory.mktemp("ui-catalogue"))


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


@pytest.fixture
def target(published: PublishedCatalogue, log_url: str, tmp_path: Path) -> Iterator[str]:
    with serving(index_root=published.index_root, prediction_log=log_url,
                 prediction_log_spill=str(tmp_path / "spill")) as address:
        yield address


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch, published: PublishedCatalogue, target: str, log_url: str) -> None:
    """The console configured as `shopclip ui` would hand it over: server, prediction log, catalogue."""
    for name in [name for name in os.environ if name.startswith("SHOPCLIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SHOPCLIP_TARGET", target)
    monkeypatch.setenv("SHOPCLIP_PREDICTION_LOG", log_url)
    monkeypatch.setenv("SHOPCLIP_CATALOGUE", str(published.root / "catalogue"))
    monkeypatch.setenv("SHOPCLIP_INDEX_ROOT", published.index_root)


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / name), default_timeout=30).run()


def texts(at: AppTest) -> list[str]:
    return [element.value for element in at.markdown] + [element.value for element in at.caption]


def titles_shown(at: AppTest) -> list[str]:
    """The titles of the product cards (bold markdown), in order."""
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**") and m.value.endswith("**")]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ------------------------------------------------------------------ Classify


def test_classify_shows_ranked_codes_and_the_voting_neighbours(console_env: None) -> None:
    at = page("classify.py")
    at.text_input(key="designation").input(catalogue_title(3, 9))
    at.button[0].click()
    at.run()
    no_exception(at)
    assert "prdtypecode **3" in at.success[0].value
    ranked = at.dataframe[0].value
    assert ranked["prdtypecode"].iloc[0] == 3 and list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    shown = titles_shown(at)
    assert shown[0].startswith("famille3 sorte3") and {catalogue_title(3, j) for j in range(5)} <= set(shown)


# ------------------------------------------------------------------ Similar products


def test_similar_by_productid_lists_catalogue_neighbours_and_honours_the_code_filter(console_env: None) -> None:
    at = page("similar.py")
    at.number_input(key="productid").set_value(productid_of(3, 2))
    at.slider(key="top_k").set_value(4)
    at.button(key="search").click()
    at.run()
    no_exception(at)
    assert f"Product {productid_of(3, 2)}: **{catalogue_title(3, 2)}** · 3" in texts(at)[0]  # what was searched
    shown = titles_shown(at)
    assert len(shown) == 4 and all(t.startswith("famille3 sorte3") for t in shown)
    assert catalogue_title(3, 2) not in shown
    at.selectbox(key="code").set_value(7)
    at.button(key="search").click()
    at.run()
    no_exception(at)
    shown = titles_shown(at)
    assert len(shown) == 4 and all(t.startswith("famille7 sorte7") for t in shown)
    assert any("of code 7" in text for text in texts(at))


def test_similar_by_words_and_an_unknown_productid(console_env: None) -> None:
    at = page("similar.py")
    at.radio(key="mode").set_value("Words")
    at.run()
    at.text_input(key="text").input("famille11 sorte11")
    at.button(key="search").click()
    at.run()
    no_exception(at)
    assert titles_shown(at)[0].startswith("famille11 sorte11")
    at.radio(key="mode").set_value("A catalogue product")
    at.run()
    at.number_input(key="productid").set_value(424242)
    at.button(key="search").click()
    at.run()
    no_exception(at)
    assert "Product 424242 is not in the published catalogue index" in at.warning[0].value
    assert titles_shown(at) == []


def test_similar_by_an_uploaded_image(console_env: None) -> None:
    at = page("similar.py")
    at.radio(key="mode").set_value("An image")
    at.run()
    at.button(key="search").click()
    at.run()
    assert "Give an image to search with." in at.error[0].value  # nothing uploaded yet
    at.file_uploader(key="image").upload("query.jpg", jpeg_bytes((64, 64)), "image/jpeg")
    at.slider(key="top_k").set_value(3)
    at.button(key="search").click()
    at.run()
    no_exception(at)
    assert len(titles_shown(at)) == 3 and any("closest to the query" in text for text in texts(at))


# ------------------------------------------------------------------ Review queue


def classify_through_the_client(target: str, log_url: str) -> dict[str, str]:
    """Classifies the unknown titles (abstained) and one catalogue title (confident); returns title -> request_id
    once the server's log has written every answer."""
    with ShopclipClient(target) as client:
        answers = {title: client.classify(title, productid=500 + n) for n, title in enumerate(UNKNOWN_TITLES)}
        confident = client.classify(catalogue_title(7, 9), productid=599)
    assert all(a.abstain for a in answers.values()) and not confident.abstain
    store = PredictionStore.open(log_url)
    try:
        deadline = time.monotonic() + 10
        while store.count_predictions() < len(answers) + 1:  # the writer stores answers in the background
            assert time.monotonic() < deadline, "the server did not log its answers"
            time.sleep(0.05)
    finally:
        store.dispose()
    return {title: answer.request_id for title, answer in answers.items()}


def feedback_rows(log_url: str) -> list[dict]:
    store = PredictionStore.open(log_url)
    try:
        with store.engine.connect() as connection:
            return [row._asdict() for row in connection.execute(select(feedback).order_by(feedback.c.created_at))]
    finally:
        store.dispose()


def queue_titles(at: AppTest) -> list[str]:
    """The titles in the queue's table (the one with a runner-up column), top first; [] without that table."""
    tables = [table.value for table in at.dataframe if "runner-up" in table.value]
    return list(tables[0]["title"]) if tables else []


def test_review_accepts_corrects_and_bulk_accepts_through_the_feedback_rpc(console_env: None, target: str,
                                                                          log_url: str) -> None:
    request_ids = classify_through_the_client(target, log_url)
    at = page("review.py")
    no_exception(at)
    assert queue_titles(at) == list(reversed(UNKNOWN_TITLES))  # abstained ones, newest first; not the confident one
    queue = at.dataframe[0].value
    assert set(queue["release"]) == set(queue["model"]) != {""}  # the fake's release is its fingerprint
    first = UNKNOWN_TITLES[-1]

    at.button(key="accept_one").click()  # the product picker starts on the top of the queue
    at.run()
    no_exception(at)
    assert at.success[0].value == "Stored 1 review (1 accepted, 0 corrected)."
    assert first not in queue_titles(at)

    second = UNKNOWN_TITLES[-2]
    assert queue_titles(at)[0] == second
    correction = at.selectbox(key=f"correct_code_{request_ids[second]}")
    predicted = [row for row in at.dataframe[0].value.to_dict("records") if row["title"] == second][0]["predicted"]
    code = next(c for c in correction.options if not predicted.startswith(f"{c} ") and c != predicted)
    correction.set_value(code)
    at.button(key="correct_one").click()
    at.run()
    no_exception(at)
    assert at.success[0].value == "Stored 1 review (0 accepted, 1 corrected)."
    assert queue_titles(at) == list(reversed(UNKNOWN_TITLES[:2]))

    rows = feedback_rows(log_url)
    assert [(r["request_id"], r["actor"]) for r in rows] == [(request_ids[first], "console"),
                                                            (request_ids[second], "console")]
    assert rows[0]["prdtypecode"] == rows[0]["predicted_code"]
    assert rows[1]["prdtypecode"] == int(code) != rows[1]["predicted_code"]
    assert rows[1]["productid"] == 500 + UNKNOWN_TITLES.index(second)

    at.session_state["queue_2"] = {"selection": {"rows": [0, 1], "columns": [], "cells": []}}
    at.run()
    at.button(key="accept_selected").click()
    at.run()
    no_exception(at)
    assert at.success[0].value == "Stored 2 reviews (2 accepted, 0 corrected)."
    assert queue_titles(at) == []
    assert any("Nothing to review" in info.value for info in at.info)
    assert [r["actor"] for r in feedback_rows(log_url)] == ["console"] * 4
    recent = next(table.value for table in at.dataframe if "code given" in table.value)  # "Recently reviewed"
    assert len(recent) == 4 and set(recent["by"]) == {"console"} and set(recent["title"]) == set(UNKNOWN_TITLES)


def test_bulk_set_to_one_code_and_the_least_confident_order(console_env: None, target: str, log_url: str) -> None:
    request_ids = classify_through_the_client(target, log_url)
    at = page("review.py")
    at.selectbox(key="order").set_value("least_confident")
    at.run()
    no_exception(at)
    probabilities = list(at.dataframe[0].value["probability"])
    assert probabilities == sorted(probabilities) and len(probabilities) == len(UNKNOWN_TITLES)
    at.session_state["queue_0"] = {"selection": {"rows": [0, 2], "columns": [], "cells": []}}
    at.run()
    chosen = [queue_titles(at)[0], queue_titles(at)[2]]
    at.selectbox(key="bulk_code_0").set_value(19)
    at.button(key="set_selected").click()
    at.run()
    no_exception(at)
    assert at.success[0].value.startswith("Stored 2 reviews")
    assert sorted(queue_titles(at)) == sorted(set(UNKNOWN_TITLES) - set(chosen))
    given = {r["request_id"]: r["prdtypecode"] for r in feedback_rows(log_url)}
    assert given == {request_ids[title]: 19 for title in chosen}


def test_review_without_a_prediction_log_says_what_to_configure(console_env: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOPCLIP_PREDICTION_LOG")
    at = page("review.py")
    no_exception(at)
    assert any("No prediction log is configured" in info.value and "--prediction-log" in info.value
               for info in at.info)
    assert not at.dataframe and not at.button

"""The console in a real browser: `shopclip ui` as a process (its production entry point), a real server with a
real SQLite prediction log and a published catalogue index, and Debian's chromium driven by Playwright. A
screenshot of every page is saved (SHOPCLIP_SCREENSHOTS, default runs/ui-screenshots) for a person to look at."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from shopclip.client import ShopclipClient
from shopclip.predlog.schema import feedback
from shopclip.ui.app import NAVIGATION
from support.catalogue import catalogue_title
from support.console import browser_page, chromium, running_console
from support.images import jpeg_bytes
from support.index import PublishedCatalogue, build_catalogue_index
from support.server import serving

SCREENSHOTS = Path(os.environ.get("SHOPCLIP_SCREENSHOTS", "runs/ui-screenshots"))
EXCEPTION = '[data-testid="stException"]'


@dataclass
class Stack:
    url: str
    target: str
    log_url: str
    published: PublishedCatalogue
    root: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    chromium()  # skip (fail in CI) before starting anything when there is no browser
    root = tmp_path_factory.mktemp("console")
    published = build_catalogue_index(root / "index-root")
    log_url = f"sqlite:///{root / 'predictions.db'}"
    with serving(prediction_log=log_url, prediction_log_spill=str(root / "spill"),
                 index_root=published.index_root) as target, \
            running_console(target=target, prediction_log=log_url, catalogue=published.catalogue.uri,
                            index_root=published.index_root) as url:
        yield Stack(url, target, log_url, published, root)


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator:
    with browser_page() as page:
        yield page


def open_page(page, stack: Stack, title: str) -> None:  # noqa: ANN001 - playwright Page
    page.goto(stack.url)
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", level=1).first.wait_for()


def test_classify_a_product_with_its_image(page, stack: Stack) -> None:  # noqa: ANN001
    image = stack.root / "product.jpg"
    image.write_bytes(jpeg_bytes((64, 64), (200, 30, 30)))
    page.goto(stack.url)
    page.get_by_label("Title (designation)").fill(catalogue_title(3, 1))
    page.locator('input[type="file"]').set_input_files(str(image))
    page.get_by_role("button", name="Classify").click()
    page.get_by_text("catalogue products that voted").wait_for()
    assert page.get_by_text("prdtypecode 3").first.is_visible()
    assert page.get_by_text(catalogue_title(3, 0)).first.is_visible()  # a voting neighbour's title
    assert page.locator(EXCEPTION).count() == 0


def test_correct_a_label_in_the_review_queue(page, stack: Stack) -> None:  # noqa: ANN001
    with ShopclipClient(stack.target) as client:  # answers the model is unsure of: the queue's content
        answers = client.classify_batch([f"objet inconnu {i}" for i in range(3)], productids=[701, 702, 703])
    assert any(answer.abstain for answer in answers)
    open_page(page, stack, "Review queue")
    page.get_by_role("button", name="Correct", exact=True).click()
    page.get_by_text("Stored 1 review").wait_for()
    engine = create_engine(stack.log_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(feedback.c.actor, feedback.c.request_id, feedback.c.prdtypecode,
                                             feedback.c.predicted_code)).all()
    finally:
        engine.dispose()
    assert len(rows) == 1 and rows[0].actor == "console"
    assert rows[0].request_id in {answer.request_id for answer in answers}
    assert rows[0].prdtypecode != rows[0].predicted_code  # a correction, not a confirmation


@pytest.mark.parametrize("title", [title for entries in NAVIGATION.values() for _, title, _ in entries])
def test_every_page_renders_without_an_exception(page, stack: Stack, title: str) -> None:  # noqa: ANN001
    open_page(page, stack, title)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # Streamlit finishes drawing after the socket goes quiet
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{title.lower().replace(' ', '-')}.png"), full_page=True)
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()


def test_a_server_with_a_token_asks_for_it(page, tmp_path: Path) -> None:  # noqa: ANN001
    # One Playwright per process: a fresh context of the module's browser (no cookies or state shared).
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    with serving(token="s3cret") as target, running_console(target=target) as url:
        page = context.new_page()
        page.goto(url)
        page.get_by_text("requires its access token").wait_for()
        assert page.get_by_role("link", name="Classify").count() == 0  # no page before signing in
        page.get_by_label("Token").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("That token was refused").wait_for()
        page.get_by_label("Token").fill("s3cret")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Classify").wait_for()
        assert page.get_by_label("Title (designation)").is_visible()
    context.close()

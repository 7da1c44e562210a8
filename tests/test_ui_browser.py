"""The console in a real browser: `shopclip ui` as a process (its production entry point), a real server with a
real SQLite prediction log and a published catalogue index, and Debian's chromium driven by Playwright. A
screenshot of every page is saved (SHOPCLIP_SCREENSHOTS, default runs/ui-screenshots) for a person to look at."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import create_engine, select

from shopclip.client import ShopclipClient
from shopclip.predlog.schema import feedback
from shopclip.ui.app import NAVIGATION
from support.catalogue import catalogue_title
from support.console import browser_page, chromium, full_page_screenshot, running_console, settle
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


def registry_with_a_champion(root: Path) -> str:
    """An MLflow registry (SQLite) whose champion is a bundle folder describing the fake embedder the index was
    built with (config.json and an empty weights file: the console reads json, it never loads a model)."""
    import json

    from shopclip.model.bundle import BUNDLE_FORMAT, CONFIG_FILE, MODEL_FILE
    from shopclip.registry.gate import promote
    from shopclip.registry.options import RegistryOptions
    from shopclip.registry.store import open_registry

    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    config = {"format": BUNDLE_FORMAT, "fingerprint": "fake-32-27", "label_map": {"index_to_code": [3, 7, 11, 19]},
              "training": {"data_fingerprint": "data-fake", "trained_on": {"products": 20}},
              "metrics": {"test_weighted_f1": {"classify": 0.71, "tfidf_svc": 0.5}}}
    (bundle / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    (bundle / MODEL_FILE).write_bytes(b"")
    uri = f"sqlite:///{root / 'registry.db'}"
    registry = open_registry(RegistryOptions(registry_uri=uri), create=True)
    registry.register(str(bundle), description="the browser test's model")
    promote(registry, "challenger", None, force=True, reason="first model")  # type: ignore[arg-type]
    return uri


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    chromium()  # skip (fail in CI) before starting anything when there is no browser
    root = tmp_path_factory.mktemp("console")
    published = build_catalogue_index(root / "index-root")
    log_url = f"sqlite:///{root / 'predictions.db'}"
    registry_uri = registry_with_a_champion(root / "registry")
    with serving(prediction_log=log_url, prediction_log_spill=str(root / "spill"),
                 index_root=published.index_root) as target, \
            running_console(target=target, prediction_log=log_url, catalogue=published.catalogue.uri,
                            index_root=published.index_root, registry_uri=registry_uri) as url:
        yield Stack(url, target, log_url, published, root)


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator:
    with browser_page() as page:
        yield page


PAGE_FILES = {title: name for entries in NAVIGATION.values() for name, title, _ in entries}
DEFAULT_PAGE = next(iter(NAVIGATION.values()))[0][1]


def open_page(page, stack: Stack, title: str) -> None:  # noqa: ANN001 - playwright Page
    """Through the sidebar, as a person would; returns once the page's own address and title are shown."""
    page.goto(stack.url)
    page.get_by_role("link", name=title).click()
    if title != DEFAULT_PAGE:  # Streamlit names a page's address after its file; the first page is "/"
        page.wait_for_url(re.compile(rf"/{re.escape(Path(PAGE_FILES[title]).stem)}/?$"))
    page.get_by_role("heading", level=1).first.wait_for()
    settle(page)


def test_classify_a_product_with_its_image(page, stack: Stack) -> None:  # noqa: ANN001
    image = stack.root / "product.jpg"
    image.write_bytes(jpeg_bytes((64, 64), (200, 30, 30)))
    page.goto(stack.url)
    page.get_by_label("Title (designation)").fill(catalogue_title(3, 1))
    page.locator('input[type="file"]').set_input_files(str(image))
    page.get_by_role("button", name="Classify").click()
    page.get_by_text("catalogue products that voted").wait_for()
    expect(page.get_by_text("prdtypecode 3 ").first).to_be_visible()  # the predicted code
    for j in (0, 2):  # voting neighbours' titles (cards are drawn after the caption: expect waits for them)
        expect(page.get_by_text(catalogue_title(3, j), exact=True).first).to_be_visible()
    full_page_screenshot(page, SCREENSHOTS / "classify-answer.png")
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
    full_page_screenshot(page, SCREENSHOTS / f"{title.lower().replace(' ', '-')}.png")
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()


def test_a_server_with_a_token_asks_for_it(page, tmp_path: Path) -> None:  # noqa: ANN001
    # One Playwright per process: a fresh context of the module's browser (no cookies or state shared).
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    with serving(token="s3cret") as target, running_console(target=target) as url:
        page = context.new_page()
        page.goto(url)
        page.get_by_text("requires its access token").wait_for()
        full_page_screenshot(page, SCREENSHOTS / "sign-in.png")
        assert page.get_by_role("link", name="Classify").count() == 0  # no page before signing in
        page.get_by_label("Token").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("That token was refused").wait_for()
        page.get_by_label("Token").fill("s3cret")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Classify").wait_for()
        expect(page.get_by_label("Title (designation)")).to_be_visible()
    context.close()

"""Fixtures shared across test modules; what they are built from lives in the `support` package."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.certs import Certificate, make_certificate, openssl_binary
from support.catalogue import catalogue_rows, unlabelled_rows


@pytest.fixture
def tls_certificate(tmp_path: Path) -> Certificate:
    """A self-signed certificate for localhost / 127.0.0.1; skips where there is no openssl binary."""
    if openssl_binary() is None:
        pytest.skip("openssl binary not found")
    return make_certificate(tmp_path / "tls")


@pytest.fixture(scope="session")
def published_index(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - support.index.PublishedCatalogue
    """The server tests' catalogue (labelled `catalogue_rows()` plus a few unlabelled products) ingested,
    embedded by the fake bundle and published once per session by the real indexer. Read-only: a test that
    publishes again builds its own with `support.index.build_catalogue_index`."""
    from support.index import build_catalogue_index

    return build_catalogue_index(tmp_path_factory.mktemp("published"), catalogue_rows() + unlabelled_rows())

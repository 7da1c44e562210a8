"""`shopclip model rollback --index-root`: the champion moves back and the newest kept index built by the restored
model becomes live, so servers that follow models serve the previous pair at their next poll; with no such index
nothing moves at all. Real MLflow store (SQLite), real tiny bundles, real published indexes."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopclip.cli import main
from shopclip.indexer import publish
from shopclip.indexer.build import BuildOptions, build_and_publish
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import ingest_folder
from shopclip.model import load_embedder
from shopclip.registry.options import RegistryOptions
from shopclip.registry.store import open_registry
from support.bundles import tiny_bundle
from support.index import synthetic_drop


@pytest.fixture
def two_champions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RegistryOptions, Path, list[str]]:
    """Versions 1 then 2 promoted (forced), an index published with each; returns (registry, index root, the
    index versions in publishing order)."""
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("SHOPCLIP_REGISTRY_URI", uri)
    bundles = [tiny_bundle(tmp_path / f"model-{i}", codes=range(100 + 10 * i, 104 + 10 * i)) for i in (1, 2)]
    catalogue = Catalogue(str(tmp_path / "catalogue"))
    ingest_folder(synthetic_drop(tmp_path / "drop", range(1, 13)), catalogue)
    root = tmp_path / "index"
    published = []
    for bundle in bundles:
        assert main(["model", "register", bundle]) == 0
        assert main(["model", "promote", "--force", "--reason", "test"]) == 0
        published.append(build_and_publish(catalogue, root, load_embedder(bundle), BuildOptions()).version)
    return RegistryOptions(registry_uri=uri), root, published


def test_rollback_makes_the_previous_champions_index_live(two_champions, capsys: pytest.CaptureFixture) -> None:
    options, root, (first, second) = two_champions
    assert publish.read_current(root) == second
    assert main(["model", "rollback", "--reason", "bad answers", "--index-root", str(root)]) == 0
    registry = open_registry(options)
    assert registry.alias("champion").version == "1"
    assert publish.read_current(root) == first
    assert publish.model_of(root, first) == registry.alias("champion").bundle_fingerprint
    assert f"index {first}" in capsys.readouterr().out


def test_rollback_without_an_index_of_the_previous_model_moves_nothing(two_champions,
                                                                       capsys: pytest.CaptureFixture) -> None:
    options, root, (first, second) = two_champions
    publish.prune_versions(root, keep=1, keep_models=1)  # the first model's index is gone
    assert publish.list_versions(root) == [second]
    assert main(["model", "rollback", "--reason", "bad answers", "--index-root", str(root)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "index build" in error[0]
    assert open_registry(options).alias("champion").version == "2" and publish.read_current(root) == second

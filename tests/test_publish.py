"""Atomic publish: builder killed at every step leaves the previous version current and loadable; lock; pruning;
recall refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shopclip.errors import Busy
from shopclip.indexer import publish
from shopclip.indexer.ann import AnnParams
from shopclip.errors import PublishRefused
from shopclip.indexer.build import BuildOptions, build_and_publish
from shopclip.indexer.catalogue import Catalogue
from shopclip.indexer.ingest import ingest_folder
from shopclip.indexer.published import open_current
from shopclip.model import load_embedder
from support.index import synthetic_drop

BUNDLE = "fake:dim=16,classes=4"


def published_catalogue(tmp_path: Path) -> tuple[Catalogue, Path, str]:
    catalogue = Catalogue(str(tmp_path / "db"))
    ingest_folder(synthetic_drop(tmp_path / "drop", range(1, 31)), catalogue)
    root = tmp_path / "index"
    first = build_and_publish(catalogue, root, load_embedder(BUNDLE), BuildOptions(commit_every=8))
    return catalogue, root, first.version


def build_command(catalogue: Catalogue, root: Path) -> list[str]:
    return [sys.executable, "-m", "shopclip.cli", "index", "build", "--catalogue", catalogue.uri,
            "--index-root", str(root), "--bundle", BUNDLE, "--commit-every", "64"]


@pytest.mark.parametrize("step", ["build-after-embed-chunk", "build-after-index-files", "publish-before-rename",
                                  "publish-before-flip"])
def test_builder_killed_at_any_step_leaves_previous_version_current(tmp_path: Path, step: str) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    ingest_folder(synthetic_drop(tmp_path / "drop2", range(100, 300), image_every=50), catalogue)
    killed = subprocess.run(build_command(catalogue, root), env=dict(os.environ, SHOPCLIP_KILL_AT=step),
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert publish.read_current(root) == first
    index = open_current(root)
    assert index.version == first and len(index) == 30 and index.vector(5).shape == (16,)

    resumed = subprocess.run(build_command(catalogue, root), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    if step == "build-after-embed-chunk":  # the first committed chunk was kept: only the rest is embedded
        assert result["embedded"] == 200 - 64
    else:
        assert result["embedded"] == 0
    assert len(open_current(root)) == 30 + 200
    assert not list(publish.versions_dir(root).glob(publish.TMP_PREFIX + "*"))


def test_killed_after_flip_serves_the_new_version(tmp_path: Path) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    ingest_folder(synthetic_drop(tmp_path / "drop2", range(100, 110)), catalogue)
    killed = subprocess.run(build_command(catalogue, root), capture_output=True,
                            env=dict(os.environ, SHOPCLIP_KILL_AT="publish-after-flip"))
    assert killed.returncode == -9
    assert publish.read_current(root) != first and len(open_current(root)) == 40


def test_second_builder_gets_busy_with_the_holder_named(tmp_path: Path) -> None:
    catalogue, root, _ = published_catalogue(tmp_path)
    with publish.builder_lock(root):
        with pytest.raises(Busy, match=f"pid {os.getpid()}"):
            build_and_publish(catalogue, root, load_embedder(BUNDLE))
        other = subprocess.run(build_command(catalogue, root), capture_output=True, text=True)
        assert other.returncode == 6 and "another index builder" in other.stderr
    build_and_publish(catalogue, root, load_embedder(BUNDLE))  # released: the next builder proceeds


def test_only_the_last_versions_are_kept(tmp_path: Path) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    versions = [first] + [build_and_publish(catalogue, root, load_embedder(BUNDLE), BuildOptions(keep_versions=2))
                          .version for _ in range(3)]
    assert publish.list_versions(root) == versions[-2:]
    assert publish.read_current(root) == versions[-1]


def test_recall_below_the_floor_refuses_to_publish(tmp_path: Path) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    impossible = BuildOptions(ann=AnnParams(kind="hnsw"), min_recall=1.01)
    with pytest.raises(PublishRefused, match="recall"):
        build_and_publish(catalogue, root, load_embedder(BUNDLE), impossible)
    assert publish.read_current(root) == first and publish.list_versions(root) == [first]


def test_pruning_keeps_the_previous_models_newest_version_for_a_rollback(tmp_path: Path) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    old_model = publish.model_of(root, first)
    options = BuildOptions(commit_every=8, keep_versions=2)
    newer = [build_and_publish(catalogue, root, load_embedder("fake:dim=24,classes=4"), options).version
             for _ in range(3)]
    kept = publish.list_versions(root)
    assert kept == [first, *newer[-2:]]  # two newest, plus the old model's newest: its rollback target
    assert publish.newest_version_built_by(root, old_model) == first
    assert publish.model_of(root, newer[-1]) == "fake-24-4"


def test_a_classifier_retrained_alone_is_another_model_to_pruning_and_rollback(tmp_path: Path) -> None:
    """Same weights, another classifier: the earlier classifier's newest version stays as its rollback target, and
    is found by its release, not by the fingerprint both share."""
    catalogue, root, first = published_catalogue(tmp_path)
    old = load_embedder(BUNDLE)
    retrained = load_embedder(BUNDLE + ",release=b")
    options = BuildOptions(commit_every=8, keep_versions=2)
    newer = [build_and_publish(catalogue, root, retrained, options).version for _ in range(3)]
    assert publish.list_versions(root) == [first, *newer[-2:]]
    assert publish.release_of(root, first) == old.release and publish.release_of(root, newer[-1]) == retrained.release
    assert publish.newest_version_built_by(root, old.fingerprint, old.release) == first
    assert publish.newest_version_built_by(root, old.fingerprint, retrained.release) == newer[-1]
    assert publish.newest_version_built_by(root, old.fingerprint) == newer[-1]  # a version registered before releases


def test_activating_a_kept_version_makes_it_current_again(tmp_path: Path) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    second = build_and_publish(catalogue, root, load_embedder("fake:dim=24,classes=4"), BuildOptions()).version
    publish.activate_version(root, first)
    assert publish.read_current(root) == first
    assert open_current(root).version == first
    assert set(publish.list_versions(root)) == {first, second}  # nothing is deleted by a rollback


def test_activating_an_unknown_version_is_not_found_and_changes_nothing(tmp_path: Path) -> None:
    from shopclip.errors import NotFound

    _, root, first = published_catalogue(tmp_path)
    with pytest.raises(NotFound, match="no-such-version"):
        publish.activate_version(root, "no-such-version")
    assert publish.read_current(root) == first


def test_index_activate_command_rolls_back_and_reports_one_line_errors(tmp_path: Path) -> None:
    catalogue, root, first = published_catalogue(tmp_path)
    build_and_publish(catalogue, root, load_embedder("fake:dim=24,classes=4"), BuildOptions())
    command = [sys.executable, "-m", "shopclip.cli", "index", "activate", "--index-root", str(root)]
    done = subprocess.run([*command, first], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["current"] == first and publish.read_current(root) == first
    refused = subprocess.run([*command, "nope"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1 and "nope" in refused.stderr

"""Model bundles in a real S3 server (`weed mini` on loopback): `--bundle s3://...` resolves through one function
(shopclip.staging.resolve_bundle, called by the model's loader) to a local copy keyed by the prefix's content, so
`index build` downloads the bundle once and `serve` starting afterwards uses that copy; a re-uploaded bundle is
downloaded again. `shopclip train --data s3:// --out s3://` trains on a mirror and uploads the bundle."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shopclip.cli import main
from shopclip.indexer import publish
from shopclip.objectstore import ObjectStore
from shopclip.staging import BUNDLE_MARKER, BUNDLES_DIR, resolve_bundle
from shopclip.v1 import info_pb2, info_pb2_grpc
from support.bundles import TINY_BUNDLE_CODES, tiny_bundle
from support.catalogue import catalogue_rows
from support.index import write_drop
from support.server import running_server
from support.training import TINY_MODEL, write_catalogue


@pytest.fixture(scope="module")
def local_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tiny_bundle(Path(tmp_path_factory.mktemp("tiny"))))


def uploaded(s3, local_bundle: Path) -> str:
    uri = f"s3://{s3.new_bucket()}/models/tiny"
    ObjectStore().upload(local_bundle, uri, last=[BUNDLE_MARKER])
    return uri


def cached_copies(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "store-cache" / BUNDLES_DIR).iterdir())


def no_download(*_: object, **__: object) -> None:
    raise AssertionError("downloaded again although the cache holds this bundle")


def test_marker_is_the_bundle_config_file() -> None:
    from shopclip.model.bundle import CONFIG_FILE

    assert BUNDLE_MARKER == CONFIG_FILE


def test_a_bundle_is_downloaded_once_per_content(s3, local_bundle: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    uri = uploaded(s3, local_bundle)
    first = Path(resolve_bundle(uri))
    assert (first / BUNDLE_MARKER).read_bytes() == (local_bundle / BUNDLE_MARKER).read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(ObjectStore, "download", no_download)
        assert Path(resolve_bundle(uri)) == first

    for round_ in range(2):  # re-uploaded with other content: a new copy; older copies beyond one are pruned
        ObjectStore().write_bytes(f"{uri}/notes-{round_}.txt", b"retrained")
        assert Path(resolve_bundle(uri)) != first
    assert len(cached_copies(tmp_path)) == 2 and first not in cached_copies(tmp_path)
    assert resolve_bundle(str(local_bundle)) == str(local_bundle) and resolve_bundle("fake:dim=8") == "fake:dim=8"


def test_a_prefix_without_a_bundle_is_not_found(s3) -> None:
    bucket = s3.new_bucket()
    ObjectStore().write_bytes(f"s3://{bucket}/models/half/model.safetensors", b"...")
    with pytest.raises(Exception, match=f"s3://{bucket}/models/half: no model bundle there"):
        resolve_bundle(f"s3://{bucket}/models/half")


def test_index_build_downloads_the_bundle_and_serve_uses_the_cached_copy(
        s3, local_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri = uploaded(s3, local_bundle)
    drop = write_drop(tmp_path / "drop", catalogue_rows(TINY_BUNDLE_CODES[:4]))
    where = ["--catalogue", str(tmp_path / "db")]
    assert main(["index", "ingest", str(drop), *where, "--rejects", str(tmp_path / "r.csv")]) == 0
    assert main(["index", "build", *where, "--index-root", str(tmp_path / "index"), "--bundle", uri,
                 "--index", "flat"]) == 0
    built = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert built["status"] == "published" and len(cached_copies(tmp_path)) == 1
    assert publish.read_manifest(tmp_path / "index", built["version"])["model"]["bundle"] == uri

    monkeypatch.setattr(ObjectStore, "download", no_download)

    async def info() -> info_pb2.GetInfoResponse:
        async with running_server(bundle=uri, index_root=str(tmp_path / "index")) as (_, channel):
            return await info_pb2_grpc.InfoServiceStub(channel).GetInfo(info_pb2.GetInfoRequest())

    answer = asyncio.run(info())
    assert list(answer.prdtypecodes) == list(TINY_BUNDLE_CODES) and answer.index_size == len(catalogue_rows(
        TINY_BUNDLE_CODES[:4]))


def test_train_from_and_to_the_store(s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    store.upload(write_catalogue(tmp_path / "data", num_classes=6, per_class=6), f"s3://{bucket}/labelled")
    out = f"s3://{bucket}/models/run-1"
    assert main(["train", "--data", f"s3://{bucket}/labelled", "--out", out, *TINY_MODEL, "--epochs", "1",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"bundle written to {out}")
    keys = {item.key for item in store.list(out)}
    assert {BUNDLE_MARKER, "model.safetensors"} <= keys and "checkpoint.pt" not in keys
    config = json.loads(store.read_bytes(f"{out}/{BUNDLE_MARKER}"))
    assert config["training"]["data_dir"] == f"s3://{bucket}/labelled"
    assert Path(resolve_bundle(out)).is_dir()  # what was uploaded is a bundle the loader takes


def test_evaluate_reads_a_bundle_and_its_training_folder_from_the_store(
        s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    store.upload(write_catalogue(tmp_path / "data", num_classes=6, per_class=8), f"s3://{bucket}/labelled")
    bundle = f"s3://{bucket}/models/run-2"
    assert main(["train", "--data", f"s3://{bucket}/labelled", "--out", bundle, *TINY_MODEL, "--epochs", "1",
                 "--device", "cpu", "--test-fraction", "0.25"]) == 0
    published = store.read_bytes(f"{bundle}/{BUNDLE_MARKER}")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--bundle", bundle, "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "run-2" / "eval.json").read_text())
    assert report["bundle"] == bundle and report["n_test"] > 0 and "classify" in report["methods"]
    assert store.read_bytes(f"{bundle}/{BUNDLE_MARKER}") == published  # the bundle in the store is left alone

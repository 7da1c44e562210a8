"""The object store against a real S3 server on loopback (`weed mini`, tests/support/s3.py) and on local paths:
bytes and trees round trip, listings and signatures follow changes, mirrors fetch only what changed, and every
failure is one domain error naming the URI (a wrong secret, a missing bucket or key, an unreachable endpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopclip import objectstore
from shopclip.catalogue_files import layout_of_names
from shopclip.cli import main
from shopclip.errors import AccessDenied, InvalidInput, NotFound, NotReady, exit_code
from shopclip.objectstore import MIRROR_MANIFEST, ObjectStore, StoreOptions, S3Location, join, name_of, safe_relative
from support.s3 import free_ports


def write_tree(root: Path) -> dict[str, bytes]:
    files = {"a.csv": b"x,y\n1,2\n", "images/image_1_product_2.jpg": bytes(range(256)) * 40,
             "images/deep/er.txt": "é\n".encode()}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != MIRROR_MANIFEST}


def test_bytes_round_trip_and_exists(s3) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    uri = f"s3://{bucket}/some/key.bin"
    store.write_bytes(uri, b"\x00payload")
    assert store.read_bytes(uri) == b"\x00payload"
    assert store.exists(uri) and store.exists(f"s3://{bucket}/some") and store.exists(f"s3://{bucket}/some/")
    assert not store.exists(f"s3://{bucket}/some/other") and not store.exists(f"s3://{bucket}/so")
    with pytest.raises(NotFound, match=f"s3://{bucket}/nope: no such object"):
        store.read_bytes(f"s3://{bucket}/nope")


def test_tree_round_trip_listing_folders_and_signature(s3, tmp_path: Path) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    files = write_tree(tmp_path / "src")
    prefix = f"s3://{bucket}/drops/2026-11"
    assert store.upload(tmp_path / "src", prefix) == 3
    listed = {item.key: item.size for item in store.list(prefix)}
    assert listed == {name: len(data) for name, data in files.items()}
    assert store.list(f"s3://{bucket}/drops/2026") == []  # a prefix is a folder: 2026 does not take 2026-11
    store.write_bytes(f"s3://{bucket}/drops/2026-12/New_X_train.csv", b"x")
    assert store.folders(f"s3://{bucket}/drops/") == [f"s3://{bucket}/drops/2026-11/", f"s3://{bucket}/drops/2026-12/"]

    mirrored = store.download(prefix, tmp_path / "copy")
    assert read_tree(tmp_path / "copy") == files and (mirrored.files, mirrored.fetched) == (3, 3)
    assert mirrored.signature == store.signature(prefix)


def test_signature_and_mirror_follow_a_changed_object(s3, tmp_path: Path) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    prefix = f"s3://{bucket}/drop/"
    write_tree(tmp_path / "src")
    store.upload(tmp_path / "src", prefix)
    before = store.signature(prefix)
    store.download(prefix, tmp_path / "copy")
    (tmp_path / "copy" / "mine.txt").write_text("an operator's own file")

    assert store.download(prefix, tmp_path / "copy").fetched == 0  # nothing changed: nothing fetched
    store.write_bytes(join(prefix, "a.csv"), b"x,y\n1,3\n")  # same size, new content: the ETag moves
    assert store.signature(prefix) != before
    again = store.download(prefix, tmp_path / "copy")
    assert again.fetched == 1 and (tmp_path / "copy" / "a.csv").read_bytes() == b"x,y\n1,3\n"

    s3.client().delete_object(Bucket=bucket, Key="drop/images/deep/er.txt")
    store.download(prefix, tmp_path / "copy")
    assert not (tmp_path / "copy" / "images" / "deep" / "er.txt").exists()  # gone from the store, gone here
    assert (tmp_path / "copy" / "mine.txt").exists()  # never brought by a mirror: left alone


def test_a_wrong_secret_is_access_denied_naming_the_uri(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(AccessDenied) as info:
        ObjectStore().list(f"s3://{bucket}/drops/")
    message = str(info.value)
    assert message.startswith(f"s3://{bucket}/drops/: the object store refused") and "\n" not in message
    assert "SignatureDoesNotMatch" in message and exit_code(info.value) == 8


def test_uploads_with_a_wrong_secret_are_access_denied_too(s3, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3.new_bucket()
    (tmp_path / "rejects.csv").write_text("source_file,row_number\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(AccessDenied, match=f"s3://{bucket}/drop/rejects.csv: the object store refused"):
        ObjectStore().put_file(tmp_path / "rejects.csv", f"s3://{bucket}/drop/rejects.csv")


def test_an_object_replaced_between_listing_and_download_is_not_mixed_in(s3, tmp_path: Path) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    store.write_bytes(f"s3://{bucket}/drop/a.csv", b"first")
    listing = store.list(f"s3://{bucket}/drop/")
    store.write_bytes(f"s3://{bucket}/drop/a.csv", b"second")
    with pytest.raises(NotReady, match="changed while it was being read"):
        store.download(f"s3://{bucket}/drop/", tmp_path / "copy", objects=listing)
    assert not (tmp_path / "copy" / "a.csv").exists()


def test_cli_with_a_wrong_secret_exits_non_zero_with_one_line(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bucket = s3.new_bucket()
    ObjectStore().write_bytes(f"s3://{bucket}/drop/New_X_train.csv", b",designation\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code = main(["index", "ingest", f"s3://{bucket}/drop/", "--catalogue", str(tmp_path / "db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 8 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"shopclip index: error: s3://{bucket}/drop/: the object store refused")


def test_missing_bucket_and_key_are_not_found(s3) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    with pytest.raises(NotFound, match="s3://no-such-bucket-here/x/: no such bucket"):
        store.list("s3://no-such-bucket-here/x/")
    with pytest.raises(NotFound, match=f"s3://{bucket}/absent/: nothing there to download"):
        store.download(f"s3://{bucket}/absent/", Path("unused"))


def test_an_unreachable_endpoint_is_not_ready(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    closed_port = free_ports(1)[0]  # nothing listens there once free_ports has closed it
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    store = ObjectStore(StoreOptions(s3_attempts=1))
    with pytest.raises(NotReady, match=f"s3://b-1/k: cannot reach the object store at http://127.0.0.1:{closed_port}"):
        store.read_bytes("s3://b-1/k")


def test_explicit_options_win_over_the_environment(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3.new_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: would fail if used
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = ObjectStore(StoreOptions(s3_endpoint=s3.endpoint, access_key_id=s3.env()["AWS_ACCESS_KEY_ID"],
                                     secret_access_key=s3.env()["AWS_SECRET_ACCESS_KEY"]))
    store.write_bytes(f"s3://{bucket}/k", b"v")
    assert store.read_bytes(f"s3://{bucket}/k") == b"v"
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in repr(store.options)  # credentials stay out of logs


def test_an_unknown_profile_names_the_option(s3) -> None:
    with pytest.raises(InvalidInput) as info:
        ObjectStore(StoreOptions(s3_profile="nobody")).list("s3://bucket-x/")
    assert info.value.field == "s3_profile" and "nobody" in str(info.value)


def test_local_paths_have_the_same_interface(tmp_path: Path) -> None:
    store = ObjectStore(env={})
    files = write_tree(tmp_path / "src")
    store.write_bytes(tmp_path / "new" / "file.bin", b"abc")  # parents made, written atomically
    assert store.read_bytes(tmp_path / "new" / "file.bin") == b"abc" and store.exists(tmp_path / "new")
    assert {item.key for item in store.list(tmp_path / "src")} == set(files)
    assert store.folders(tmp_path / "src") == [str(tmp_path / "src" / "images")]
    assert store.upload(tmp_path / "src", str(tmp_path / "up")) == 3 and read_tree(tmp_path / "up") == files
    first = store.signature(tmp_path / "src")
    store.download(tmp_path / "src", tmp_path / "copy")
    assert read_tree(tmp_path / "copy") == files
    os.utime(tmp_path / "src" / "a.csv", ns=(1, 1))
    assert store.signature(tmp_path / "src") != first
    with pytest.raises(NotFound, match="no such file"):
        store.read_bytes(tmp_path / "absent")


def test_upload_sends_the_last_names_last_and_skips_what_it_is_told(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "src")
    (tmp_path / "src" / "config.json").write_text("{}")
    (tmp_path / "src" / "checkpoint.pt").write_bytes(b"big")
    sent: list[str] = []
    monkeypatch.setattr(ObjectStore, "put_file", lambda self, source, uri: sent.append(Path(source).name))
    ObjectStore(env={}).upload(tmp_path / "src", "s3://b-1/models/x", skip=["checkpoint.pt"], last=["config.json"])
    assert sent[-1] == "config.json" and "checkpoint.pt" not in sent and len(sent) == 4


def test_uris_parse_join_and_name() -> None:
    assert S3Location.parse("s3://bucket/a/b") == S3Location("bucket", "a/b")
    assert S3Location.parse("s3://bucket").prefix == "" and S3Location("b", "a").prefix == "a/"
    with pytest.raises(InvalidInput, match="names no bucket"):
        S3Location.parse("s3:///key")
    assert join("s3://b/drops/", "x", "rejects.csv") == "s3://b/drops/x/rejects.csv"
    assert name_of("s3://b/drops/2026-11/") == "2026-11" and join("/tmp", "a") == "/tmp/a"


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b"])
def test_a_key_that_climbs_out_of_the_folder_is_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="refusing object key"):
        safe_relative(key, "s3://b/p/")


def test_drops_are_told_from_file_names_alone() -> None:
    assert layout_of_names(["New_X_train.csv", "New_y_train.csv"]) == "challenge"
    assert layout_of_names(["rakuten_text.csv"]) == layout_of_names(["images_index.csv"]) == "shared"
    assert layout_of_names(["rejects.csv", "notes.txt", "X.txt"]) is None


def test_configure_sets_the_process_options_until_reset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOPCLIP_STORE_CACHE", str(tmp_path / "from-env"))
    assert objectstore.current_options().store_cache == tmp_path / "from-env"
    objectstore.configure(StoreOptions(store_cache=tmp_path / "configured"))
    try:
        assert ObjectStore().options.store_cache == tmp_path / "configured"
    finally:
        objectstore.configure(None)
    assert objectstore.current_options().store_cache == tmp_path / "from-env"

"""`shopclip index run|ingest` over drops in a real S3 server (`weed mini` on loopback): drops are found and
compared by listing, staged under the index root, ingested as local drops are, and their rejects file lands
beside them in the bucket; a drop is marked done only once its ingest committed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from shopclip.cli import main
from shopclip.indexer import job
from shopclip.indexer.published import open_current
from shopclip.objectstore import ObjectStore
from support.index import synthetic_drop, write_csv

FAKE = "fake:dim=16,classes=4"


def drop_with_broken_rows(folder: Path) -> Path:
    """Five good products and two rows ingest must reject (no productid; a duplicate productid)."""
    drop = synthetic_drop(folder, range(1, 6))
    x_file = drop / "New_X_train.csv"
    x_file.write_text(x_file.read_text(encoding="utf-8") + '5,"sans id","",,77\n6,"dup","",2,78\n', encoding="utf-8")
    write_csv(drop / "New_y_train.csv", ["", "prdtypecode"], [[i, 10] for i in range(7)])
    return drop


def run_once(drops: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["index", "run", "--once", "--drops", drops, "--catalogue", str(tmp_path / "db"),
                 "--index-root", str(tmp_path / "index"), "--bundle", FAKE, "--index", "flat"])
    return code, json.loads(capsys.readouterr().out)


def rejects_in(store: ObjectStore, uri: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(store.read_bytes(uri).decode("utf-8"))))


def test_index_run_over_an_s3_drops_prefix(s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    drops = f"s3://{bucket}/drops/"
    store.upload(drop_with_broken_rows(tmp_path / "local" / "2026-11"), drops + "2026-11")
    store.write_bytes(drops + "not-a-drop/readme.txt", b"no catalogue here")

    code, summary = run_once(drops, tmp_path, capsys)
    assert (code, summary["status"]) == (0, "published")
    [drop] = summary["drops"]
    assert (drop["added"], drop["rejected"]) == (5, 2) and drop["source"] == drops + "2026-11/"
    assert drop["rejects_file"] == drops + "2026-11/rejects.csv"
    assert [(r["row_number"], r["field"]) for r in rejects_in(store, drop["rejects_file"])] == [
        ("6", "productid"), ("7", "productid")]
    published = open_current(tmp_path / "index")
    assert len(published) == 5 and summary["build"]["vectors"] == 5
    staged = tmp_path / "index" / job.STAGED_DROPS_DIR / "2026-11"
    assert Path(drop["staged"]) == staged and (staged / "New_X_train.csv").is_file()
    assert (tmp_path / "index" / job.REJECTS_DIR / "2026-11.csv").is_file()  # the local copy, as for local drops

    code, idle = run_once(drops, tmp_path, capsys)  # the rejects file written back does not make it a new drop
    assert (code, idle["status"], idle["drops"]) == (0, "up-to-date", [])

    store.write_bytes(drops + "2026-11/images/image_5009_product_9.jpg",
                      (staged / "images" / "image_5001_product_1.jpg").read_bytes())
    code, changed = run_once(drops, tmp_path, capsys)  # an object added to the drop: the drop changed
    assert code == 0 and [d["unchanged"] for d in changed["drops"]] == [5]


def test_a_drop_that_cannot_be_read_is_not_marked_done(s3, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    drops = f"s3://{bucket}/drops/"
    store.upload(synthetic_drop(tmp_path / "local" / "good", range(1, 9)), drops + "good")
    store.write_bytes(drops + "broken/New_X_train.csv", b",designation,productid\n0,a,1\n")

    code, summary = run_once(drops, tmp_path, capsys)
    assert code == 2 and summary["status"] == "published-with-invalid-drops"
    errors = {d["source"]: d.get("error") for d in summary["drops"]}
    assert errors[drops + "good/"] is None and "description" in errors[drops + "broken/"]
    state = json.loads((tmp_path / "index" / job.DROPS_STATE_FILE).read_text())
    assert set(state) == {"good"}  # the broken drop is tried again next run
    assert not store.exists(drops + "broken/rejects.csv")
    assert [d["source"] for d in run_once(drops, tmp_path, capsys)[1]["drops"]] == [drops + "broken/"]


def test_a_missing_bucket_fails_the_run_with_one_line_naming_it(s3, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = run_once("s3://no-such-bucket-here/drops/", tmp_path, capsys)
    assert code == 3 and summary["status"] == "failed"
    assert summary["error"].startswith("s3://no-such-bucket-here/drops/: no such bucket")


def test_index_ingest_of_an_s3_drop_with_the_store_flags(s3, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    store.upload(drop_with_broken_rows(tmp_path / "local" / "d"), f"s3://{bucket}/in/d")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the flag below wins over the variable
    assert main(["index", "ingest", f"s3://{bucket}/in/d", "--catalogue", str(tmp_path / "db"),
                 "--s3-endpoint", s3.endpoint, "--store-cache", str(tmp_path / "flag-cache")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["added"], summary["rejected"], summary["source_batch"]) == (5, 2, "d")
    assert summary["rejects_file"] == f"s3://{bucket}/in/d/rejects.csv"
    assert len(rejects_in(store, summary["rejects_file"])) == 2
    assert (tmp_path / "rejects-d.csv").is_file() and Path(summary["staged"]).is_relative_to(tmp_path / "flag-cache")

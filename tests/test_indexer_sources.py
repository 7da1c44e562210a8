"""Reading catalogue folders: both layouts, every validation rule, rejects with row numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from shopclip.errors import InvalidInput
from shopclip.catalogue_files import SourceOptions, detect_layout, read_labelled_folder
from shopclip.input_policy import ProductLimits, check_text
from support.images import jpeg_bytes
from support.index import write_csv


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes((16, 16), colour))


def challenge_folder(root: Path, x_name: str = "New_X_train.csv", y_name: str | None = "New_y_train.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    x_rows = [
        [0, "Livre de cuisine", "Recettes <b>faciles</b>", 101, 9001],
        [1, "Figurine Star Wars", "", 102, 9002],  # image missing on disk
        [2, "Jeu PS4", "multi\nligne", 103, 9003],
    ]
    write_csv(root / x_name, ["", "designation", "description", "productid", "imageid"], x_rows)
    if y_name:
        write_csv(root / y_name, ["", "prdtypecode"], [[0, 2705], [1, 1140], [2, 2462]])
    write_jpeg(root / "images" / "image_train" / "image_9001_product_101.jpg")
    write_jpeg(root / "images" / "image_train" / "image_9003_product_103.jpg")
    return root


def test_challenge_layout_reads_rows_labels_and_images(tmp_path: Path) -> None:
    rows, rejects = read_labelled_folder(challenge_folder(tmp_path))
    assert rejects == []
    by_id = {row.productid: row for row in rows}
    assert {pid: row.prdtypecode for pid, row in by_id.items()} == {101: 2705, 102: 1140, 103: 2462}
    assert by_id[101].image_path and Path(by_id[101].image_path).name == "image_9001_product_101.jpg"
    assert by_id[102].image_path is None and "missing" in (by_id[102].image_note or "")
    assert by_id[103].description == "multi\nligne"
    assert [row.row_number for row in rows] == [1, 2, 3]
    assert detect_layout(tmp_path) == "challenge"


def test_official_names_pair_and_absent_y_means_unlabelled(tmp_path: Path) -> None:
    official = challenge_folder(tmp_path / "a", "X_train_update.csv", "Y_train_CVw08PX.csv")
    assert {row.prdtypecode for row in read_labelled_folder(official)[0]} == {2705, 1140, 2462}
    unlabelled = challenge_folder(tmp_path / "b", "New_X_train.csv", None)
    rows, rejects = read_labelled_folder(unlabelled)
    assert len(rows) == 3 and rejects == [] and all(row.prdtypecode is None for row in rows)


def test_every_bad_row_is_rejected_with_its_reason_and_good_rows_survive(tmp_path: Path) -> None:
    x_rows = [
        [0, "ok", "", 1, 11],
        [1, "no id", "", "", 12],
        [2, "bad id", "", "12a", 13],
        [3, "dup", "", 1, 14],
        [4, "x" * 3000, "", 5, 15],
        [5, "no label", "", 6, 16],
        [6, "bad code", "", 7, 17],
        [7, "unknown code", "", 8, 18],
        [8, "encoding", "", 9, 19],
        [9, "", "", 10, ""],
    ]
    write_csv(tmp_path / "X_train.csv", ["", "designation", "description", "productid", "imageid"], x_rows)
    codes = {0: 10, 1: 10, 2: 10, 3: 10, 4: 10, 6: "abc", 7: 99, 8: 10, 9: 10, 42: 10}  # no label for index 5
    y_rows = [[index, code] for index, code in codes.items()]
    write_csv(tmp_path / "Y_train.csv", ["", "prdtypecode"], y_rows)
    raw = (tmp_path / "X_train.csv").read_bytes().replace(b"encoding", b"enc\xff\xfeding")
    (tmp_path / "X_train.csv").write_bytes(raw)

    rows, rejects = read_labelled_folder(tmp_path, SourceOptions(known_codes={10}))
    assert [row.productid for row in rows] == [1]
    reasons = {(r.source_file, r.row_number): (r.field, r.reason) for r in rejects}
    assert reasons[("X_train.csv", 2)][0] == "productid" and "missing" in reasons[("X_train.csv", 2)][1]
    assert "integer" in reasons[("X_train.csv", 3)][1]
    assert "duplicate" in reasons[("X_train.csv", 4)][1]
    assert reasons[("X_train.csv", 5)] == ("designation", "3000 characters, at most 1000 accepted")
    assert "X/Y mismatch" in reasons[("X_train.csv", 6)][1]
    assert "X/Y mismatch" in reasons[("X_train.csv", 7)][1]  # its label row was itself rejected
    assert "X/Y mismatch" in reasons[("X_train.csv", 8)][1]
    assert "integer" in reasons[("Y_train.csv", 6)][1]
    assert "unknown prdtypecode" in reasons[("Y_train.csv", 7)][1]
    assert "bad encoding" in reasons[("X_train.csv", 9)][1]
    assert reasons[("X_train.csv", 10)][0] == "designation"
    assert "no row" in reasons[("Y_train.csv", 10)][1]
    assert len(rejects) == 12


def test_corrupt_and_oversized_images_keep_the_text(tmp_path: Path) -> None:
    challenge_folder(tmp_path)
    (tmp_path / "images" / "image_train" / "image_9001_product_101.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows, _ = read_labelled_folder(tmp_path)
    row = {r.productid: r for r in rows}[101]
    assert row.image_path is None and "not a decodable image" in (row.image_note or "") and row.designation
    rows, _ = read_labelled_folder(tmp_path, SourceOptions(limits=ProductLimits(max_image_bytes=10)))
    assert all(r.image_path is None for r in rows)
    assert "at most 10 accepted" in ({r.productid: r for r in rows}[103].image_note or "")


def test_ingest_refuses_what_classify_refuses(tmp_path: Path) -> None:
    """One input policy: an image Pillow reads but Classify does not accept (GIF) and a description past
    Classify's limit never reach the catalogue."""
    limits = ProductLimits(max_description_chars=50)
    write_csv(tmp_path / "New_X_train.csv", ["", "designation", "description", "productid", "imageid"],
              [[0, "Lampe", "", 301, 9301], [1, "Chaise", "y" * 51, 302, 9302], [2, "", "", 303, 9303]])
    write_csv(tmp_path / "New_y_train.csv", ["", "prdtypecode"], [[0, 10], [1, 10], [2, 10]])
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "image_9301_product_301.jpg", format="GIF")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "image_9303_product_303.jpg", format="GIF")
    rows, rejects = read_labelled_folder(tmp_path, SourceOptions(limits=limits))
    (lamp,) = rows
    assert lamp.productid == 301 and lamp.image_path is None and "not a decodable image" in (lamp.image_note or "")
    reasons = {reject.productid: (reject.field, reject.reason) for reject in rejects}
    assert reasons["302"] == ("description", "51 characters, at most 50 accepted")
    assert reasons["303"][0] == "image" and "not a decodable image" in reasons["303"][1]
    for row in rows:  # what was kept, Classify takes
        check_text(row.designation, row.description, row.image_path is not None, limits)


def test_a_product_with_no_text_and_no_usable_image_is_rejected_not_kept(tmp_path: Path) -> None:
    """Classify would refuse it, so the catalogue must not hold it (it used to fail later, at embedding)."""
    write_csv(tmp_path / "New_X_train.csv", ["", "designation", "description", "productid", "imageid"],
              [[0, "", "", 201, 9201], [1, "", "", 202, 9202], [2, "Lampe", "", 203, 9203]])
    write_csv(tmp_path / "New_y_train.csv", ["", "prdtypecode"], [[0, 10], [1, 10], [2, 10]])
    write_jpeg(tmp_path / "images" / "image_9202_product_202.jpg")  # 201's image is missing, 203 has text
    rows, rejects = read_labelled_folder(tmp_path)
    assert sorted(r.productid for r in rows) == [202, 203]
    (reject,) = rejects
    assert (reject.productid, reject.field, reject.row_number) == ("201", "image", 1)
    assert "no designation or description" in reject.reason and "missing" in reject.reason


def test_missing_column_names_the_column(tmp_path: Path) -> None:
    write_csv(tmp_path / "X_train.csv", ["", "designation", "productid", "imageid"], [[0, "a", 1, 2]])
    with pytest.raises(InvalidInput) as info:
        read_labelled_folder(tmp_path)
    assert "description" in info.value.field


def test_folder_without_catalogue_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        read_labelled_folder(tmp_path)
    assert detect_layout(tmp_path) is None


def test_shared_layout_merges_text_and_image_only_products(tmp_path: Path) -> None:
    write_csv(tmp_path / "rakuten_text.csv", ["row", "designation", "description", "productid", "imageid",
                                               "prdtypecode"],
              [[5, "Livre", "", 201, 301, 10], [6, "Jouet", "desc", 202, 302, 1280]])
    write_jpeg(tmp_path / "images" / "image_301_product_201.jpg")
    write_jpeg(tmp_path / "images" / "image_303_product_203.jpg")
    write_jpeg(tmp_path / "images" / "image_304_product_204.jpg")
    write_csv(tmp_path / "images_index.csv", ["file", "row", "productid", "imageid", "prdtypecode", "source_repo"],
              [["image_301_product_201.jpg", 5, 201, 301, 10, "r"],
               ["image_303_product_203.jpg", 7, 203, 303, 40, "r"],
               ["image_304_product_204.jpg", 8, 204, 304, 40, "r"],
               ["image_305_product_205.jpg", 9, 205, 305, 40, "r"]])  # file absent: image-only, nothing left
    (tmp_path / "images" / "image_304_product_204.jpg").write_bytes(b"garbage")
    rows, rejects = read_labelled_folder(tmp_path)
    by_id = {row.productid: row for row in rows}
    assert set(by_id) == {201, 202, 203}
    assert by_id[201].designation == "Livre" and by_id[201].image_path is not None
    assert by_id[202].image_path is None
    assert by_id[203].designation == "" and by_id[203].prdtypecode == 40 and by_id[203].image_path
    assert {(r.row_number, r.field) for r in rejects} == {(3, "image"), (4, "image")}
    assert detect_layout(tmp_path) == "shared"


@pytest.mark.slow
def test_real_shared_data_reads_without_rejects() -> None:
    rows, rejects = read_labelled_folder("/work/shared/data")
    assert rejects == []
    assert len(rows) == 548 + 1732 + 1052
    assert sum(1 for row in rows if row.image_path and row.designation) == 548

"""`shopclip classify | search | embed | info` through the root CLI against the in-process fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fakes import UNKNOWN_PRODUCTID, fake_server

from shopclip.cli import main
from shopclip.client.cli import format_table
from shopclip.errors import EXIT_CODES, InvalidInput, NotFound, NotReady

CSV_TEXT = (",designation,description,productid,imageid\n"
            '0,Olivia: Personalisiertes Notizbuch,,3804725264,1263597046\n'
            '7,"Lot de 2 coussins, ""déco""","Housse <b>40x40</b>\nen coton",201115110,938777978\n')


@pytest.fixture()
def server():
    with fake_server() as (target, recorder):
        yield target, recorder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_classify_title_prints_an_aligned_table(server, capsys):
    target, recorder = server
    code, out, _ = run(capsys, "classify", "--target", target, "--title", "Coussin", "--description", "bleu",
                       "--top-k", "3")
    assert code == 0
    sent = recorder.last("Classify")
    assert (sent.product.designation, sent.product.description, sent.top_k) == ("Coussin", "bleu", 3)
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "prdtypecode", "probability"]
    assert lines[2].split() == ["1", str(len("Coussin")), "0.5000"]
    assert "ABSTAIN" in out and "Coussin bleu" in out and "model fp-test" in out
    table = lines[:5]
    assert len({len(line) for line in table[1:]}) == 1, "rows of one table share one width"


def test_classify_json_is_the_typed_result(server, capsys):
    target, _ = server
    code, out, _ = run(capsys, "classify", "--target", target, "--title", "Lampe", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["predictions"][0] == {"code": len("Lampe"), "probability": 0.5}
    assert data["neighbors"][1]["prdtypecode"] is None
    assert data["versions"]["index_version"] == "v7"


def test_classify_csv_row_with_its_image(server, capsys, tmp_path: Path):
    target, recorder = server
    (tmp_path / "X.csv").write_text(CSV_TEXT, encoding="utf-8")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "image_938777978_product_201115110.jpg").write_bytes(b"jpeg-7")
    code, _, _ = run(capsys, "classify", "--target", target, "--csv", str(tmp_path / "X.csv"), "--row", "7",
                     "--images", str(tmp_path / "images"))
    assert code == 0
    sent = recorder.last("Classify").product
    assert sent.designation == 'Lot de 2 coussins, "déco"'
    assert sent.description == "Housse <b>40x40</b>\nen coton"
    assert sent.image == b"jpeg-7"


def test_classify_image_only(server, capsys, tmp_path: Path):
    target, recorder = server
    (tmp_path / "p.jpg").write_bytes(b"\xff\xd8photo")
    assert run(capsys, "classify", "--target", target, "--image", str(tmp_path / "p.jpg"))[0] == 0
    sent = recorder.last("Classify").product
    assert (sent.designation, sent.image) == ("", b"\xff\xd8photo")


@pytest.mark.parametrize("argv, flag", [
    ([], "--title"),
    (["--csv", "X.csv"], "--row"),
    (["--csv", "X.csv", "--row", "99"], "--row"),
    (["--csv", "X.csv", "--row", "0", "--title", "t"], "--csv"),
    (["--csv", "missing.csv", "--row", "0"], "--csv"),
    (["--image", "missing.jpg"], "--image"),
    (["--csv", "X.csv", "--row", "0", "--images", "."], "--images"),
    (["--title", "t", "--tls-ca", "missing.pem"], "tls_ca"),
])
def test_bad_product_flags_name_the_flag(server, capsys, tmp_path: Path, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "X.csv").write_text(CSV_TEXT, encoding="utf-8")
    code, _, err = run(capsys, "classify", "--target", server[0], *argv)
    assert code == EXIT_CODES[InvalidInput]
    assert f"error: {flag}:" in err
    assert server[1].requests == []


def test_search_by_productid_and_by_title(server, capsys):
    target, recorder = server
    code, out, _ = run(capsys, "search", "--target", target, "--productid", "42", "--top-k", "2", "--code", "2705")
    assert code == 0
    assert recorder.last("SearchSimilar").productid == 42
    rows = [line.split() for line in out.splitlines()[2:4]]
    assert [(r[0], r[1]) for r in rows] == [("1000", "2705"), ("1001", "2705")]
    code, out, _ = run(capsys, "search", "--target", target, "--title", "Roman", "--json")
    assert code == 0 and len(json.loads(out)["neighbors"]) == 10


def test_search_needs_exactly_one_query(server, capsys):
    code, _, err = run(capsys, "search", "--target", server[0], "--productid", "1", "--title", "x")
    assert code == EXIT_CODES[InvalidInput] and "--productid" in err


def test_server_errors_map_to_the_root_exit_codes(server, capsys):
    target, _ = server
    code, _, err = run(capsys, "search", "--target", target, "--productid", str(UNKNOWN_PRODUCTID))
    assert code == EXIT_CODES[NotFound]
    assert "NOT_FOUND" in err and str(UNKNOWN_PRODUCTID) in err
    code, _, err = run(capsys, "info", "--target", "127.0.0.1:1", "--timeout", "0.5")
    assert code == EXIT_CODES[NotReady] and "UNAVAILABLE" in err


def test_embed_and_info(server, capsys):
    target, recorder = server
    code, out, _ = run(capsys, "embed", "--target", target, "--title", "abc", "--token", "k")
    assert code == 0 and "+3.0000" in out
    assert recorder.metadata[-1]["authorization"] == "Bearer k"
    code, out, _ = run(capsys, "info", "--target", target)
    assert code == 0
    assert "HNSW, 1234 labelled vectors" in out and "metric test_weighted_f1  0.8100" in out


def test_format_table_aligns_numbers_right_and_text_left():
    text = format_table(["id", "name"], [[5, "a"], [1234, "long name"]])
    assert text.splitlines() == ["  id  name", "----  ---------", "   5  a", "1234  long name"]


def test_classify_table_shows_the_closest_voters_and_marks_image_only_products():
    from shopclip.client.cli import SHOWN_VOTERS, format_classify
    from shopclip.client.results import ClassifyResult, Neighbor, Prediction, Versions

    voters = tuple(Neighbor(productid=100 + i, prdtypecode=10, similarity=0.9 - i / 100,
                            designation="" if i == 0 else f"titre {i}") for i in range(40))
    text = format_classify(ClassifyResult((Prediction(10, 0.8),), voters, False, Versions("m", "v", "r")))
    assert "model m (release r) · index v" in text
    assert f"the {SHOWN_VOTERS} closest of 40 neighbours that voted:" in text
    assert "(no title: image only)" in text
    assert f"titre {SHOWN_VOTERS - 1}" in text and f"titre {SHOWN_VOTERS}" not in text

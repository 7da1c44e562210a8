"""How the console names codes (ui/codes.py): the optional `prdtypecode,name` file, and the words that describe
a code from its catalogue titles; and the Classify page showing both."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopclip.errors import InvalidInput
from shopclip.ui.codes import CodeBook, characteristic_words, load_code_names


def test_code_names_file_with_or_without_header(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    path.write_text("prdtypecode,name\n1280,Jouets, enfance\n\n2583,Piscine\n", encoding="utf-8")
    assert load_code_names(path) == {1280: "Jouets, enfance", 2583: "Piscine"}


@pytest.mark.parametrize("text, message", [("1280\n", "line 1"), ("10,Livres\nabc,Jeux\n", "line 2")])
def test_a_malformed_code_names_file_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "names.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInput) as error:
        load_code_names(path)
    assert error.value.field == "code_names" and message in error.value.message


def test_a_missing_code_names_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_code_names(tmp_path / "absent.csv")


def test_characteristic_words_favour_what_sets_a_code_apart() -> None:
    titles = [(10, "Livre roman policier poche"), (10, "Roman historique livre"), (10, "Livre de cuisine"),
              (40, "Jeu console manette"), (40, "Manette sans fil pour console"), (40, "Jeu de course console")]
    words = characteristic_words(titles, per_code=2)
    assert words[10] == ("livre", "roman") and words[40][0] == "console"  # ties go alphabetically
    assert "pour" not in words[40] and "sans" not in characteristic_words(titles, per_code=10)[40]


def test_a_label_shows_the_name_when_known_and_the_words_always() -> None:
    book = CodeBook(names={10: "Livres"}, words={10: ("livre", "roman"), 40: ("console",)})
    assert book.label(10) == "10 · Livres (livre, roman)"
    assert book.label(40) == "40 (console)" and book.label(99) == "99" and book.label(None) == "-"


def test_the_classify_page_names_codes_from_the_configured_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from support.server import serving

    names = tmp_path / "names.csv"
    names.write_text("".join(f"{code},Nom du type {code}\n" for code in range(27)), encoding="utf-8")
    with serving() as target:
        monkeypatch.setenv("SHOPCLIP_TARGET", target)
        monkeypatch.setenv("SHOPCLIP_CODE_NAMES", str(names))
        page = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "ui" / "pages" / "classify.py"),
                                 default_timeout=30)
        page.run()
        page.text_input(key="designation").input("Lot de 3 tasses")
        page.button[0].click()
        page.run()
    assert not page.exception
    table = page.dataframe[0].value
    assert all(label == f"{code} · Nom du type {code}" for code, label in zip(table["prdtypecode"], table["code"]))

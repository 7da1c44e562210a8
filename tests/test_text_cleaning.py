"""clean_text / product_text on the HTML that real Rakuten descriptions contain."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from shopclip.model.text import clean_text, product_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Sac &agrave; dos l&#39;&eacute;t&eacute;", "Sac à dos l'été"),
        ("Caf&amp;eacute; cr&amp;egrave;me", "Café crème"),  # double-escaped
        ("Mode &amp;amp;amp; style", "Mode & style"),  # escaped three times
        ("COB &#43; LED", "COB + LED"),
        ("Chien &amp; nbsp; Mat&eacute;riel", "Chien Matériel"),  # entity split by a translator
        ("DURABLES &amp; amp; Case", "DURABLES & Case"),
        ("Tapestry &amp; nbsp Mode; Motif", "Tapestry Mode; Motif"),
    ],
)
def test_entities_are_decoded_until_stable(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_block_tags_separate_words_and_inline_tags_vanish() -> None:
    raw = "<p>Taille:<br />42</p><ul><li>Coton</li><LI>Lin</LI></ul>Super<b>bonne</b> qualit<span>é</span>"
    assert clean_text(raw) == "Taille: 42 Coton Lin Superbonne qualité"


def test_escaped_tags_are_removed_like_real_ones() -> None:
    assert clean_text("Un&lt;br&gt;Deux &lt;strong&gt;Trois&lt;/strong&gt;") == "Un Deux Trois"


def test_comparison_signs_are_not_tags() -> None:
    assert clean_text("taille < 5 cm et > 2 cm") == "taille < 5 cm et > 2 cm"


def test_comments_and_attributes_are_removed() -> None:
    raw = '<!-- seller note --><div class="x" style="a:b">Lampe</div><a href="http://x">lien</a>'
    assert clean_text(raw) == "Lampe lien"


def test_control_and_zero_width_characters_and_whitespace() -> None:
    raw = "\ufeffLampe\u200b\tLED\r\n\n\xa0 de\x00 bureau\u00ad  "
    assert clean_text(raw) == "Lampe LED de bureau"


def test_decomposed_accents_are_composed() -> None:
    assert clean_text("e\u0301te\u0301") == "été"


@pytest.mark.parametrize("missing", [None, float("nan"), math.nan, b"", ""])
def test_missing_values_are_empty(missing: object) -> None:
    assert clean_text(missing) == ""


def test_non_string_values_become_text() -> None:
    assert clean_text(1234) == "1234"
    assert clean_text(2.5) == "2.5"
    assert clean_text("Crème".encode()) == "Crème"


def test_pandas_missing_values() -> None:
    pd = pytest.importorskip("pandas")
    assert clean_text(pd.NA) == ""
    frame = pd.read_csv(io.StringIO("designation,description\nLampe,\n"))
    assert product_text(frame.designation[0], frame.description[0]) == "Lampe"


def test_product_text_joins_title_and_description_as_sentences() -> None:
    assert product_text("Lampe LED", "<p>Tr&egrave;s lumineuse</p>") == "Lampe LED. Très lumineuse"
    assert product_text("Lampe LED !", "Lumineuse") == "Lampe LED ! Lumineuse"
    assert product_text("Lampe", None) == "Lampe"
    assert product_text(None, "Seulement la description") == "Seulement la description"
    assert product_text(float("nan"), float("nan")) == ""


def test_product_text_keeps_the_title_and_cuts_the_description_at_a_word() -> None:
    title = "Poupée de collection en porcelaine"
    description = " ".join(f"mot{i}" for i in range(500))
    text = product_text(title, description, max_chars=100)
    assert text.startswith(title + ". mot0 mot1")
    assert len(text) <= 100
    assert text.split()[-1].startswith("mot")
    assert description.startswith(text[len(title) + 2:])  # cut between words, never inside one


def test_product_text_caps_an_overlong_title() -> None:
    text = product_text("titre " * 100, "description", max_chars=50)
    assert len(text) <= 50
    assert "description" not in text


def test_product_text_rejects_a_nonpositive_cap() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        product_text("x", "y", max_chars=0)


def test_real_catalogue_descriptions_leave_no_markup() -> None:
    """Every description of the real sample comes out without tags or entities."""
    pd = pytest.importorskip("pandas")
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten_text.csv"
    if not path.exists():
        pytest.skip("real data folder not present")
    frame = pd.read_csv(path, nrows=500)
    for designation, description in zip(frame.designation, frame.description):
        text = product_text(designation, description)
        assert "<br" not in text.lower() and "&#" not in text and "&amp;" not in text and "&nbsp" not in text
        assert "  " not in text and text == text.strip()

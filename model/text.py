"""Product text as every text tower sees it: cleaned of HTML, whitespace collapsed, length-capped.

Rakuten descriptions are raw HTML written by sellers and often machine-translated: tags (`<br />`,
`<li>`), entities, double-escaped entities (`&amp;eacute;`) and entities broken by a translator
(`&amp; nbsp;`). Training, indexing and serving all build text through `product_text`, so a
product gets the same vector wherever it comes from.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from numbers import Real

DEFAULT_MAX_CHARS = 1000
"""About 250 USE tokens: enough for the title and the informative head of a description."""

# Block-level tags separate words; inline tags (<b>, <span>, <a>...) may sit inside a word.
_BLOCK_TAGS = ("br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "table", "tbody", "h[1-6]",
               "blockquote", "hr", "iframe", "html", "body", "dd", "dt")
_BLOCK_TAG_RE = re.compile(rf"</?\s*(?:{'|'.join(_BLOCK_TAGS)})\b[^<>]*>", re.IGNORECASE)
# A tag name must follow `<` directly, so "taille < 5 cm et > 2" is kept as text.
_ANY_TAG_RE = re.compile(r"<!--.*?-->|</?[a-zA-Z][^<>]*>", re.DOTALL)
# Entities a translator split with a space or stripped of their `;`: "&amp; nbsp;", "& amp;", "& nbsp Mode".
_BROKEN_ENTITY_RE = re.compile(r"&\s*(nbsp|amp|apos|quot|lt|gt)\b\s*;?", re.IGNORECASE)
_MAX_UNESCAPE_ROUNDS = 4
_WHITESPACE_RE = re.compile(r"\s+")
_SENTENCE_END = (".", "!", "?", ":", ";", "…")


def _as_text(value: object) -> str:
    """Any cell value as a string: None and NaN (pandas' missing description) become ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Real) and math.isnan(float(value)):
        return ""
    if type(value).__name__ == "NAType":  # pandas.NA, without importing pandas
        return ""
    return str(value)


def _unescape(text: str) -> str:
    """Unescape until stable: `&amp;eacute;` is `&eacute;` escaped once more, i.e. "é"."""
    for _ in range(_MAX_UNESCAPE_ROUNDS):
        repaired = _BROKEN_ENTITY_RE.sub(r"&\1;", text)
        unescaped = html.unescape(repaired)
        if unescaped == text:
            break
        text = unescaped
    return text


def _is_dropped_char(char: str) -> bool:
    """Control and format characters (zero-width space, soft hyphen, BOM) carry no meaning."""
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co")


def clean_text(value: object) -> str:
    """Plain text of one designation or description cell.

    Entities are decoded first (escaped tags like `&lt;br&gt;` become real tags), then block tags
    become spaces and inline tags vanish, control characters are dropped, the text is NFC-normalised
    and runs of whitespace (including no-break spaces and newlines) collapse to one space.
    """
    text = _unescape(_as_text(value))
    text = _BLOCK_TAG_RE.sub(" ", text)
    text = _ANY_TAG_RE.sub("", text)
    text = _WHITESPACE_RE.sub(" ", text)  # before dropping controls: "\n" and "\t" are separators
    if not text.isprintable():  # printable text has none of those characters: skip the per-character scan
        text = "".join(char for char in text if not _is_dropped_char(char))
    text = unicodedata.normalize("NFC", text)
    return _WHITESPACE_RE.sub(" ", text).strip()


def _truncate_at_word(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip()


def product_text(designation: object, description: object = "", max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The one text of a product: cleaned designation, then as much cleaned description as fits.

    The designation (the title, the most informative part) is kept whole unless it alone exceeds
    `max_chars`; the description fills the remaining budget and is cut at a word boundary. The two
    are joined as sentences so a title without final punctuation does not run into the description.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    title = _truncate_at_word(clean_text(designation), max_chars)
    body = clean_text(description)
    if not title or not body:
        return _truncate_at_word(title or body, max_chars)
    separator = " " if title.endswith(_SENTENCE_END) else ". "
    budget = max_chars - len(title) - len(separator)
    if budget <= 0:
        return title
    body = _truncate_at_word(body, budget)
    return f"{title}{separator}{body}" if body else title

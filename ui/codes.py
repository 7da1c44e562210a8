"""How the console names a prdtypecode: a human name when an optional `prdtypecode,name` csv is configured, and
always a short description derived from the catalogue, its most characteristic title words (words frequent in
that code's titles and rare in the other codes', a class-level TF-IDF)."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shopclip.errors import InvalidInput

WORDS_PER_CODE = 4
WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
STOPWORDS = frozenset("""
avec pour les des une dans sur par sans plus aux est son ses que qui pas vos votre nos notre cette ces tout tous
toute toutes the and for with from this that your you are set lot pcs piece pieces taille couleur mode neuf
""".split())


@dataclass(frozen=True)
class CodeBook:
    names: Mapping[int, str] = field(default_factory=dict)
    words: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    def label(self, code: int | None) -> str:
        """`1280 · Jouets enfance (peluche, doudou, jouet)`: the code, its name if known, its words if known."""
        if code is None:
            return "-"
        parts = [str(code)]
        if code in self.names:
            parts.append(f"· {self.names[code]}")
        if self.words.get(code):
            parts.append(f"({', '.join(self.words[code])})")
        return " ".join(parts)


def load_code_names(path: str | Path) -> dict[int, str]:
    """`prdtypecode,name` rows (a header row is allowed); InvalidInput naming the line for anything else."""
    names: dict[int, str] = {}
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise InvalidInput("code_names", f"{path} line {number}: expected prdtypecode,name")
                code, name = row[0].strip(), ",".join(row[1:]).strip()
                if not code.isdigit():
                    if number == 1:
                        continue  # header
                    raise InvalidInput("code_names", f"{path} line {number}: {code!r} is not a prdtypecode")
                names[int(code)] = name
    except OSError as exc:
        raise InvalidInput("code_names", f"cannot read {path}: {exc.strerror}") from None
    return names


def characteristic_words(titles: Iterable[tuple[int, str]], per_code: int = WORDS_PER_CODE
                         ) -> dict[int, tuple[str, ...]]:
    """For (code, title) pairs, each code's `per_code` words with the highest tf(word, code) * idf over codes."""
    counts: dict[int, Counter[str]] = {}
    for code, title in titles:
        counts.setdefault(int(code), Counter()).update(
            word for word in WORD.findall((title or "").lower()) if word not in STOPWORDS)
    document_frequency = Counter(word for words in counts.values() for word in words)
    codes = len(counts)
    result = {}
    for code, words in counts.items():
        total = sum(words.values()) or 1
        scored = sorted(words, key=lambda w: (-(words[w] / total) * math.log((1 + codes) / document_frequency[w]), w))
        result[code] = tuple(scored[:per_code])
    return result

"""The text baseline every model must beat: TF-IDF (word 1-2 + char_wb 2-5) + LinearSVC.

Trained on the same training products as the model and scored on the same test products. A product
without text gets the SVC's answer for an empty text (its intercepts), as a text-only system would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shopclip.catalogue_files import SourceRow

from shopclip.model.text import product_text
from shopclip.training.data import has_text


class TfidfSvcBaseline:
    """Fit on products, then `scores(products)` -> (n, len(codes)) decision values in `codes` order."""

    def __init__(self, codes: Sequence[int], C: float = 1.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_union
        from sklearn.svm import LinearSVC

        self.codes = list(codes)
        self._vectorizer = make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        )
        self._svc = LinearSVC(C=C)

    def fit(self, products: Sequence[SourceRow]) -> "TfidfSvcBaseline":
        with_text = [p for p in products if has_text(p)]
        features = self._vectorizer.fit_transform([product_text(p.designation, p.description) for p in with_text])
        self._svc.fit(features, [p.prdtypecode for p in with_text])
        return self

    def scores(self, products: Sequence[SourceRow]) -> np.ndarray:
        """Decision values laid out on `codes` (classes unseen in training get -inf, so never win)."""
        features = self._vectorizer.transform([product_text(p.designation, p.description) for p in products])
        raw = self._svc.decision_function(features)
        if raw.ndim == 1:  # binary LinearSVC returns one column
            raw = np.stack([-raw, raw], axis=1)
        out = np.full((len(products), len(self.codes)), -np.inf, dtype=np.float64)
        column = {code: i for i, code in enumerate(self.codes)}
        for j, code in enumerate(self._svc.classes_):
            out[:, column[int(code)]] = raw[:, j]
        return out

"""The contract between the model and everything that uses it (indexer, server, evaluation).

An `Embedder` turns products into L2-normalised vectors in one shared space (`embed`), and classifies
products (`encode` then `classify`, given the k-NN vote of their neighbours in the index). Text-only,
image-only and text+image products all land in the same space, so any of them can be indexed, searched
for, or voted on.

Real bundles and the deterministic fake are both built by `shopclip.model.load_embedder`, so tests
exercise the same code path as production.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shopclip.input_policy import DEFAULT_LIMITS, ProductLimits, check_text
from shopclip.model.knn import KnnParams, final_probabilities, knn_votes
from shopclip.products import ProductInput


@dataclass
class Encoded:
    """One forward pass over products: what search needs (vectors) and what classification needs."""

    vectors: np.ndarray
    """(n, dim) float32, L2-normalised."""
    head_probs: np.ndarray
    """(n, classes) the linear head on the vectors."""
    views: Any = None
    """Whatever else the embedder's `classify` reads (a bundle's `ViewInputs`), or None."""

    def take(self, rows: Sequence[int]) -> "Encoded":
        rows = np.asarray(rows, dtype=np.int64)
        return Encoded(self.vectors[rows], self.head_probs[rows],
                       None if self.views is None else self.views.take(rows))


@runtime_checkable
class Embedder(Protocol):
    fingerprint: str
    """Identifies the weights: vectors made by embedders with different fingerprints are not comparable."""
    release: str
    """Identifies everything Classify answers from: the weights and the classifier (views, their weights, the vote's
    parameters). A retrain can change the classifier alone, keeping `fingerprint` (and every vector) the same."""
    dim: int
    codes: Sequence[int]
    """Class index -> prdtypecode, the order of `classify_vectors` columns."""
    limits: ProductLimits
    """The input policy products are checked and images decoded under (the server passes its own)."""
    source: str
    """What `load_embedder` was given (bundle directory, s3:// URI, fake:...): an index manifest records it, so a
    server can load the model that an index it is handed was built with."""

    def embed(self, products: Sequence[ProductInput]) -> np.ndarray:
        """(n, dim) float32, L2-normalised. Raises InvalidInput naming the field of a bad product."""
        ...

    def classify_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """(n, len(codes)) float32 probabilities of the linear head for vectors from `embed`."""
        ...

    def encode(self, products: Sequence[ProductInput], image_words: Sequence[str | None] | None = None) -> Encoded:
        """One forward pass: vectors and whatever `classify` needs. Raises InvalidInput like `embed`.

        `image_words`, per product: the words `read_words_on_image` gave ahead of the forward, "" for none (a
        product only embedded), None to let `encode` read them where the model needs them."""
        ...

    def read_words_on_image(self, product: ProductInput, field: str) -> str | None:
        """The words `encode` would read on this product's image, for a caller that reads them ahead, off the
        forward (the server); None when the model reads none for this product. InvalidInput naming `field` for an
        image that cannot be decoded."""
        ...

    def classify(self, encoded: Encoded, knn_votes: np.ndarray | None) -> np.ndarray:
        """(n, len(codes)) calibrated probabilities: what Classify answers, given the (n, len(codes)) k-NN vote
        of each product's labelled neighbours (None without an index)."""
        ...

    def describe(self) -> dict:
        """JSON-able facts for GetInfo and manifests: architecture, dims, versions, metrics."""
        ...


def knn_params(embedder: Embedder) -> KnnParams:
    """The embedder's tuned k-NN vote (a bundle's), else the defaults."""
    return getattr(embedder, "knn", None) or KnnParams()


def classify_with_neighbors(embedder: Embedder, encoded: Encoded, neighbor_codes: np.ndarray | None = None,
                            neighbor_scores: np.ndarray | None = None, labelled: np.ndarray | None = None
                            ) -> np.ndarray:
    """What Classify answers for `encoded` products, (n, len(codes)): the k-NN vote of their (n, k) neighbours'
    codes and similarities (best first; `labelled` masks padding) over the embedder's codes at its tuned
    temperature, then `embedder.classify`; without neighbours (no index) the embedder's views alone.

    The one owner of that arithmetic: the server calls it with the published index's hits, evaluation with an
    exact search of its reference products, so what `shopclip evaluate` scores is what `serve` answers.
    """
    votes = None if neighbor_codes is None else knn_votes(neighbor_codes, neighbor_scores, embedder.codes,
                                                          knn_params(embedder).temperature, labelled)
    return embedder.classify(encoded, votes)


class FakeEmbedder:
    """Deterministic, dependency-free stand-in with the real interface (tests and dry runs).

    Words are hashed into dimensions, so products that share words get similar vectors and
    a product's code can be recovered from its neighbours, which makes k-NN tests meaningful.
    """

    def __init__(self, dim: int = 32, codes: Sequence[int] = tuple(range(27)),
                 limits: ProductLimits = DEFAULT_LIMITS, release: str = "") -> None:
        """`release`: tells apart fakes with the same vectors (fingerprint) but another classifier, as a retrain
        of the classifier alone does ("" for the fingerprint itself)."""
        self.dim = dim
        self.codes = list(codes)
        self.limits = limits
        self.fingerprint = f"fake-{dim}-{len(self.codes)}"
        self.release = f"{self.fingerprint}-{release}" if release else self.fingerprint
        self.source = f"fake:dim={dim},classes={len(self.codes)}" + (f",release={release}" if release else "")
        self.knn = KnnParams()
        rng = np.random.default_rng(0)
        self._head = rng.standard_normal((dim, len(self.codes))).astype(np.float32)

    def _bucket_vector(self, token: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def embed(self, products: Sequence[ProductInput]) -> np.ndarray:
        out = np.zeros((len(products), self.dim), dtype=np.float32)
        for i, product in enumerate(products):
            # Text rules only: the fake never decodes, so tests may hand it any bytes as an image.
            check_text(product.designation, product.description, product.has_image, self.limits, f"products[{i}]")
            tokens = re.findall(r"\w+", f"{product.designation} {product.description}".lower())
            if product.image is not None:
                tokens.append("image:" + hashlib.blake2b(product.image, digest_size=8).hexdigest())
            for token in tokens:
                out[i] += self._bucket_vector(token)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def classify_vectors(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors @ self._head
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def encode(self, products: Sequence[ProductInput], image_words: Sequence[str | None] | None = None) -> Encoded:
        vectors = self.embed(products)
        return Encoded(vectors, self.classify_vectors(vectors))

    def read_words_on_image(self, product: ProductInput, field: str) -> str | None:
        return None  # the fake has no OCR view

    def classify(self, encoded: Encoded, knn_votes: np.ndarray | None) -> np.ndarray:
        return final_probabilities(encoded.head_probs, knn_votes, self.knn)

    def describe(self) -> dict:
        return {"architecture": "fake", "embed_dim": self.dim, "num_classes": len(self.codes),
                "fingerprint": self.fingerprint, "release": self.release}

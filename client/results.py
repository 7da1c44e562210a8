"""Typed, immutable results of the shopclip API: what callers get instead of protobuf messages.

Plain frozen dataclasses (stdlib only) so results can be hashed, compared in tests, logged and
turned into JSON (`dataclasses.asdict`) without knowing anything about gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Versions:
    """Which model and index produced an answer."""

    model_fingerprint: str
    """The weights: vectors of two answers with the same fingerprint are comparable."""
    index_version: str
    """"" when the server runs without an index."""
    model_release: str = ""
    """The weights and the classifier: two answers with the same release come from the same model ("" from a
    server older than releases)."""


@dataclass(frozen=True)
class Prediction:
    code: int
    """A prdtypecode."""
    probability: float
    """Head and k-NN vote combined, in [0, 1]."""


@dataclass(frozen=True)
class Neighbor:
    """A catalogue product close to the query in embedding space."""

    productid: int
    prdtypecode: int | None
    """None for unlabelled catalogue products (searchable, but they do not vote)."""
    similarity: float
    """Cosine similarity in [-1, 1]."""
    designation: str
    imageid: int | None = None


@dataclass(frozen=True)
class ClassifyResult:
    predictions: tuple[Prediction, ...]
    """Best first."""
    neighbors: tuple[Neighbor, ...]
    """Labelled catalogue products that voted, best first."""
    abstain: bool
    """True when the top probability is below the server's threshold: route to human review."""
    versions: Versions
    request_id: str = ""
    """The server's id of this answer: give it to `feedback` to confirm or correct it."""

    @property
    def code(self) -> int | None:
        """The predicted prdtypecode (None only if the server returned no prediction)."""
        return self.predictions[0].code if self.predictions else None


@dataclass(frozen=True)
class FeedbackResult:
    """The server's receipt for a confirmation or correction."""

    feedback_id: str
    productid: int | None
    """The productid given, or the one of the answer `request_id` named."""
    predicted_code: int | None
    """What the server had answered for that product (None when its prediction log has no answer for it)."""
    was_correct: bool | None
    """predicted_code == the code given; None without a prediction to compare."""


@dataclass(frozen=True)
class SearchResult:
    neighbors: tuple[Neighbor, ...]
    """Best first."""
    versions: Versions


@dataclass(frozen=True)
class EmbedResult:
    vectors: tuple[tuple[float, ...], ...]
    """One L2-normalised vector of `dim` floats per product, in request order."""
    dim: int
    versions: Versions


@dataclass(frozen=True)
class Info:
    """What the server is running."""

    versions: Versions
    architecture: str
    embed_dim: int
    prdtypecodes: tuple[int, ...]
    index_size: int
    index_type: str
    """FLAT, IVF, HNSW or UNSPECIFIED (no index)."""
    abstain_threshold: float
    knn_k: int
    metrics: Mapping[str, float] = field(default_factory=dict)

"""What the server computes, without protobuf or grpc: embed, classify (the embedder's views + k-NN vote), search.

`Engine.forward` is the micro-batched function: one call embeds every product of a batch, runs the
linear head and one batched index search for the products being classified. The model and the index it
serves are one immutable `Served` pair, read once per batch, so every answer of a batch names the model and
index versions that produced it. A hot swap replaces that one reference: `swap_index` a new index of the
same model, `swap_model` a new model together with an index built by it. No batch ever sees a model with an
index of another model, and search by product reuses the pair its vector came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from shopclip.errors import NotReady
from shopclip.indexer.api import Neighbor, PublishedIndex
from shopclip.model.embedder import Embedder, Encoded, classify_with_neighbors, knn_params
from shopclip.model.knn import KnnParams
from shopclip.products import ProductInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Versions:
    model_fingerprint: str
    index_version: str
    """"" when no index is loaded."""
    model_release: str
    """`Embedder.release`: the weights and the classifier."""


@dataclass(frozen=True)
class NeighborInfo:
    productid: int
    prdtypecode: int | None
    similarity: float
    designation: str
    imageid: int | None


@dataclass(frozen=True)
class Classification:
    predictions: list[tuple[int, float]]
    """(prdtypecode, probability), best first."""
    neighbors: list[NeighborInfo]
    """Labelled neighbours that voted, best first (empty without an index)."""
    abstain: bool


@dataclass(frozen=True)
class Job:
    product: ProductInput
    top_k: int | None = None
    """Classify with this many ranked codes; None only embeds."""
    image_words: str | None = None
    """The words on the product's image, when read ahead of the forward (`server/image_words.py`); None: the
    forward reads them if the model needs them."""


@dataclass(frozen=True)
class Served:
    """A model and the index it answers with (None: the model's views alone), swapped as one reference."""

    embedder: Embedder
    index: PublishedIndex | None = None
    knn: KnnParams = field(init=False)
    known_codes: frozenset[int] = field(init=False)
    description: dict = field(init=False)

    def __post_init__(self) -> None:
        # Derived once per model, not per batch.
        object.__setattr__(self, "knn", knn_params(self.embedder))
        object.__setattr__(self, "known_codes", frozenset(int(code) for code in self.embedder.codes))
        object.__setattr__(self, "description", self.embedder.describe())

    @property
    def versions(self) -> Versions:
        return Versions(self.embedder.fingerprint, self.index.version if self.index is not None else "",
                        self.embedder.release)


def check_index_matches(index: PublishedIndex, embedder: Embedder) -> None:
    """NotReady unless `index`'s vectors were made by `embedder` (vectors of another model are not comparable)."""
    model = index.manifest.get("model") or {}
    if "fingerprint" not in model or "dim" not in model:  # no proof the vectors are this model's
        raise NotReady(f"index {index.version}: its manifest does not say which model built it "
                       f"(model.fingerprint and model.dim): rebuild the index")
    if model["fingerprint"] != embedder.fingerprint or model["dim"] != embedder.dim:
        raise NotReady(f"index {index.version} was built with model {model['fingerprint']} "
                       f"(dim {model['dim']}), this server runs {embedder.fingerprint} "
                       f"(dim {embedder.dim}): rebuild the index")


@dataclass(frozen=True)
class Outcome:
    vector: np.ndarray
    classification: Classification | None
    served: Served
    """The pair that computed it (a search by this vector must use the same index)."""

    @property
    def versions(self) -> Versions:
        return self.served.versions


@dataclass(frozen=True)
class EngineInfo:
    versions: Versions
    architecture: str
    embed_dim: int
    prdtypecodes: list[int]
    index_size: int
    index_type: str
    """Manifest's index type ("flat", "ivf", "hnsw"), "" without an index."""
    metrics: dict[str, float]
    abstain_threshold: float
    knn_k: int


class Engine:
    def __init__(self, embedder: Embedder, *, abstain_threshold: float, index_required: bool) -> None:
        """`index_required`: the server was given an index root, so it is not ready until an index is loaded."""
        self.abstain_threshold = abstain_threshold
        self._index_required = index_required
        self._served = Served(embedder)

    @property
    def served(self) -> Served:
        return self._served

    @property
    def embedder(self) -> Embedder:
        return self._served.embedder

    @property
    def knn(self) -> KnnParams:
        return self._served.knn

    @property
    def index(self) -> PublishedIndex | None:
        return self._served.index

    @property
    def ready(self) -> bool:
        return self._served.index is not None or not self._index_required

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady("no published index loaded yet: retry shortly")

    def swap_index(self, index: PublishedIndex) -> None:
        """Serve `index` with the current model from the next batch on; refuses vectors of another model."""
        served = self._served
        check_index_matches(index, served.embedder)
        self._served = replace(served, index=index)

    def swap_model(self, embedder: Embedder, index: PublishedIndex) -> None:
        """Serve `embedder` with `index` (built by it) from the next batch on, both in one assignment."""
        check_index_matches(index, embedder)
        self._served = Served(embedder, index)

    def versions(self) -> Versions:
        return self._served.versions

    def forward(self, jobs: Sequence[Job]) -> list[Outcome]:
        """The batch function (runs in the forward thread)."""
        served = self._served
        # A product only embedded is not classified: nothing to read on its image.
        words = [job.image_words if job.image_words is not None or job.top_k is not None else "" for job in jobs]
        encoded = served.embedder.encode([job.product for job in jobs], image_words=words)
        rows = [i for i, job in enumerate(jobs) if job.top_k is not None]
        classifications = dict(zip(rows, self._classify(served, encoded.take(rows), [jobs[i].top_k for i in rows]))
                               ) if rows else {}
        return [Outcome(encoded.vectors[i], classifications.get(i), served) for i in range(len(jobs))]

    def _classify(self, served: Served, encoded: Encoded, top_ks: Sequence[int]) -> list[Classification]:
        """The embedder's classification given the k-NN vote, as arrays over the whole batch (one search, one
        vote, one metadata lookup): done product by product it cost ~7 ms per 16 products."""
        index = served.index
        voters: list[list[Neighbor]] = [[] for _ in top_ks]
        neighbors: tuple[np.ndarray, ...] = ()  # no index: the embedder's views alone
        if index is not None:
            voters = [[n for n in hits if n.prdtypecode in served.known_codes]
                      for hits in index.search(encoded.vectors, served.knn.k)]
            neighbors = self._voter_arrays(voters)
        probs = classify_with_neighbors(served.embedder, encoded, *neighbors)
        ranked = np.argsort(-probs, axis=1, kind="stable")
        described = describe_neighbor_lists(index, voters) if index is not None else voters
        codes = np.asarray(served.embedder.codes)
        results = []
        for row, top_k in enumerate(top_ks):
            best = ranked[row, :top_k]
            predictions = list(zip(codes[best].tolist(), probs[row, best].tolist()))
            results.append(Classification(predictions, described[row],
                                          abstain=predictions[0][1] < self.abstain_threshold))
        return results

    @staticmethod
    def _voter_arrays(voters: Sequence[Sequence[Neighbor]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, scores, present) of each row's voters, padded into (n, k) arrays for the vote."""
        width = max(1, max(len(row) for row in voters))
        codes = np.zeros((len(voters), width), dtype=np.int64)
        scores = np.zeros((len(voters), width), dtype=np.float64)
        present = np.zeros((len(voters), width), dtype=bool)
        for i, row in enumerate(voters):
            codes[i, :len(row)] = [n.prdtypecode for n in row]
            scores[i, :len(row)] = [n.score for n in row]
            present[i, :len(row)] = True
        return codes, scores, present

    def search_vector(self, outcome: Outcome, top_k: int, code: int | None,
                      exclude: Sequence[int] = ()) -> tuple[list[NeighborInfo], Versions]:
        """Nearest catalogue products to an embedded product, in the index of the model that embedded it
        (runs off the event loop)."""
        index = self._require_index(outcome.served)
        found = index.search(outcome.vector[None, :], top_k, code=code, exclude=exclude)[0]
        return describe_neighbors(index, found), outcome.versions

    def search_product(self, productid: int, top_k: int, code: int | None) -> tuple[list[NeighborInfo], Versions]:
        """Products similar to a catalogue product, itself excluded; NotFound for an unknown productid."""
        served = self._served
        index = self._require_index(served)
        vector = index.vector(productid)
        found = index.search(np.asarray(vector, dtype=np.float32)[None, :], top_k, code=code,
                             exclude=[productid])[0]
        return describe_neighbors(index, found), served.versions

    @staticmethod
    def _require_index(served: Served) -> PublishedIndex:
        if served.index is None:
            raise NotReady("similar-product search needs a published index (serve with --index-root)")
        return served.index

    def info(self) -> EngineInfo:
        served = self._served
        index, embedder, description = served.index, served.embedder, served.description
        return EngineInfo(
            versions=served.versions,
            architecture=str(description.get("architecture", "")),
            embed_dim=embedder.dim,
            prdtypecodes=[int(c) for c in embedder.codes],
            index_size=len(index) if index is not None else 0,
            index_type=str(index.manifest.get("index", {}).get("kind", "")) if index is not None else "",
            metrics={k: float(v) for k, v in (description.get("metrics") or {}).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)},
            abstain_threshold=self.abstain_threshold,
            knn_k=served.knn.k,
        )


def describe_neighbors(index: PublishedIndex, neighbors: Sequence[Neighbor]) -> list[NeighborInfo]:
    """Attach catalogue metadata (designation, imageid) to search hits, all in one lookup."""
    return describe_neighbor_lists(index, [neighbors])[0]


def describe_neighbor_lists(index: PublishedIndex, lists: Sequence[Sequence[Neighbor]]) -> list[list[NeighborInfo]]:
    """`describe_neighbors` of each list, with a single metadata lookup for all of them."""
    titles = iter(index.titles([n.productid for neighbors in lists for n in neighbors]))
    return [[NeighborInfo(n.productid, n.prdtypecode, float(n.score), *next(titles)) for n in neighbors]
            for neighbors in lists]

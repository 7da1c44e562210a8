"""The index build's options, declared once for the API, the CLI flags and the SHOPCLIP_* variables.

Kept free of faiss, lancedb and numpy so `shopclip --help` declares these flags without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass

from shopclip.errors import InvalidInput
from shopclip.settings import option

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class AnnParams:
    kind: str = option("auto", "auto: exact search below --approx-threshold vectors, IVF + exact re-rank above",
                       flag="index", choices=INDEX_KINDS)
    approx_threshold: int = option(10_000, "vectors from which `auto` builds IVF")
    """`auto` picks exact search below this many vectors and IVF above: past it, exact search of a Classify
    batch starts to cost as much as the model's forward, while IVF keeps recall@10 at 1.0 (bench/index.py;
    figures in the README). IVF over HNSW: it builds far faster at a million vectors with equal or better
    recall. The recall check below still guards every approximate build."""
    nlist: int | None = option(None, "IVF lists (default: about sqrt(n))")
    nprobe: int = option(16, "starting IVF nprobe (raised until --min-recall is met)")
    hnsw_m: int = option(32, "HNSW links per vector")
    ef_construction: int = option(64, "HNSW efConstruction")
    ef_search: int = option(32, "starting HNSW efSearch (raised until --min-recall is met)")
    rerank_factor: int = option(4, "the approximate stage returns this many times k candidates, re-ranked "
                                   "with exact inner products")
    use_gpu: bool = option(True, "use FAISS GPU for IVF training and exact ground truth when a GPU is present",
                           flag="gpu")


@dataclass(frozen=True)
class BuildOptions:
    ann: AnnParams = option(default_factory=AnnParams)
    """The index's flags (`--index`, `--nprobe`, ...), flattened into the build's."""
    min_recall: float = option(0.95, "refuse to publish an approximate index whose recall@k vs exact is lower")
    recall_queries: int = option(1000, "catalogue vectors used as queries by the recall check")
    recall_k: int = option(10, "k of the recall check")
    embed_batch: int = option(32, "products per embedding call")
    embed_threads: int | None = option(None, "CPU threads of the embedding forward (default: torch's own, every "
                                              "core); on cores a server also uses, fewer leave it its share "
                                              "(measure with bench/drop.py --embed-threads)")
    commit_every: int = option(2048, "rows per committed embedding chunk (what a killed build does not redo)")
    keep_versions: int = option(3, "published versions to keep", flag="keep")

    def __post_init__(self) -> None:
        if self.embed_threads is not None and self.embed_threads < 1:
            raise InvalidInput("embed_threads", f"must be >= 1, got {self.embed_threads}")

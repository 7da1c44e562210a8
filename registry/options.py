"""The registry's and the promotion gate's options, declared once for the API, the CLI flags and the SHOPCLIP_*
variables (shopclip.settings). Free of mlflow, torch and numpy, so `shopclip --help` declares them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shopclip.errors import InvalidConfig
from shopclip.settings import option

DEFAULT_REGISTRY_URI = "sqlite:///runs/registry.db"
"""A SQLite file under ./runs (beside quickstart's outputs), relative to the working directory as the catalogue
and index defaults are: offline, one file to back up. A team points SHOPCLIP_REGISTRY_URI at a shared database
(postgresql://...) or an MLflow tracking server (http://...)."""


@dataclass(frozen=True)
class RegistryOptions:
    """Which MLflow model registry, and which registered model in it."""

    registry_uri: str = option(DEFAULT_REGISTRY_URI, "MLflow registry: sqlite:///FILE, postgresql://..., "
                                                     "http://tracking-server, or a plain path to a SQLite file")
    model_name: str = option("shopclip", "registered model name (one per catalogue)")

    def __post_init__(self) -> None:
        if not self.model_name.strip():
            raise InvalidConfig("model_name", "must not be empty")
        if not self.registry_uri.strip():
            raise InvalidConfig("registry_uri", "must not be empty")

    @property
    def store_uri(self) -> str:
        """The URI MLflow opens: a plain path is a SQLite file."""
        return self.registry_uri if "://" in self.registry_uri else f"sqlite:///{self.registry_uri}"

    @property
    def sqlite_file(self) -> Path | None:
        """The database file of a SQLite registry (None for servers): read-only commands check it exists, so that
        `model list` on a mistyped path says so instead of creating an empty registry there."""
        prefix = "sqlite:///"
        return Path(self.store_uri[len(prefix):]) if self.store_uri.startswith(prefix) else None


@dataclass(frozen=True)
class GateOptions:
    """What a challenger must show before it replaces the champion (registry/gate.py)."""

    regression_set: str | None = option(None, "labelled catalogue folder both models are scored on (fixed: the "
                                              "same products at every promotion)")
    reference_set: str | None = option(None, "catalogue folder whose products are both models' k-NN references, "
                                             "as an index would serve them (default: each bundle's own training "
                                             "products, as `shopclip evaluate` uses)")
    max_f1_drop: float = option(0.01, "refuse when weighted F1 (regression set, or a figure recorded in both "
                                      "bundles) falls by more than this")
    max_recall_drop: float = option(0.10, "refuse when a class's recall on the regression set falls by more than "
                                          "this")
    recall_drop_significance: float = option(0.05, "a class's recall drop counts only when chance explains it "
                                                   "less often than this (one-sided exact McNemar p-value on "
                                                   "its products; 1: every drop beyond the tolerance counts)")
    min_class_products: int = option(5, "classes with fewer regression products are not judged by recall (too "
                                        "few to tell a drop from noise)")
    min_weighted_f1: float = option(0.5, "floor on the challenger's regression weighted F1, and the whole test "
                                         "when there is no champion yet")
    device: str | None = option(None, "cpu or cuda for scoring (default: cuda when available)")

    def __post_init__(self) -> None:
        for name in ("max_f1_drop", "max_recall_drop", "min_weighted_f1", "recall_drop_significance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidConfig(name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.min_class_products < 1:
            raise InvalidConfig("min_class_products", f"must be >= 1, got {self.min_class_products}")

    def thresholds(self) -> dict[str, float | int]:
        """The figures a decision was taken under (recorded with it)."""
        return {"max_f1_drop": self.max_f1_drop, "max_recall_drop": self.max_recall_drop,
                "recall_drop_significance": self.recall_drop_significance,
                "min_class_products": self.min_class_products, "min_weighted_f1": self.min_weighted_f1}

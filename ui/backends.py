"""The console's back ends, each opened on first use from `UiConfig` and kept for the process: the gRPC server
(python client), the prediction log, the model registry, the catalogue and the published indexes.

A part that is not configured raises `Unavailable` with what to configure; a page shows that sentence where its
content would be (`shopclip.ui.layout.section`), so a console without a prediction log still classifies.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from shopclip.client import ShopclipClient
from shopclip.errors import NotFound, ShopclipError
from shopclip.ui.config import UiConfig

if TYPE_CHECKING:  # heavy imports only where a page needs the part
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.predlog.store import PredictionStore
    from shopclip.registry.store import Registry
    from shopclip.ui.codes import CodeBook

CLIENT_TIMEOUT_S = 30.0


class Unavailable(ShopclipError):
    """A back end this console was started without, or that cannot be reached: the message says what to do."""


@dataclass
class Backends:
    config: UiConfig
    _parts: dict[str, object] = field(default_factory=dict, repr=False)
    # Reentrant: a part may open another while being opened (the codebook reads the catalogue).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def with_token(self, token: str) -> "Backends":
        """The same back ends, the server called with `token` (what a sign-in gives)."""
        return Backends(replace(self.config, token=token))

    def client(self) -> ShopclipClient:
        return self._part("client", lambda: ShopclipClient(self.config.target, token=self.config.token,
                                                           tls_ca=self.config.tls_ca, timeout=CLIENT_TIMEOUT_S))

    def prediction_log(self) -> "PredictionStore":
        if not self.config.prediction_log:
            raise Unavailable("No prediction log is configured: start the console with --prediction-log URL "
                              "(the one the server records to) to see the review queue and live accuracy.")

        def open_store() -> "PredictionStore":
            from shopclip.predlog.store import PredictionStore

            return PredictionStore.open(self.config.prediction_log)

        return self._part("prediction_log", open_store)

    def registry(self) -> "Registry":
        def open_it() -> "Registry":
            from shopclip.registry.store import open_registry

            try:
                return open_registry(self.config.registry)
            except NotFound as exc:
                raise Unavailable(f"No model registry: {exc}. Register a bundle (shopclip model register) or "
                                  f"pass --registry-uri.") from None

        return self._part("registry", open_it)

    def catalogue(self) -> "Catalogue":
        if not self.config.catalogue:
            raise Unavailable("No catalogue is configured: start the console with --catalogue URI (the one "
                              "`shopclip index` builds from) for thumbnails, code descriptions and counts.")

        def open_it() -> "Catalogue":
            from shopclip.indexer.catalogue import Catalogue

            return Catalogue(self.config.catalogue, self.config.table)

        return self._part("catalogue", open_it)

    def index_root(self) -> Path:
        if not self.config.index_root:
            raise Unavailable("No index root is configured: start the console with --index-root DIR to see the "
                              "published index versions.")
        return Path(self.config.index_root)

    def codebook(self) -> "CodeBook":
        """Code names (--code-names) and each code's characteristic title words (from the catalogue, when one is
        configured), computed once per process."""
        def build() -> "CodeBook":
            from shopclip.ui.codes import CodeBook, characteristic_words, load_code_names

            names = load_code_names(self.config.code_names) if self.config.code_names else {}
            try:
                rows = self.catalogue().labelled_products().select(["prdtypecode", "designation"]).to_pylist()
            except Unavailable:
                rows = []
            return CodeBook(names, characteristic_words((r["prdtypecode"], r["designation"]) for r in rows))

        return self._part("codebook", build)

    def image_files(self, productids: Sequence[int]) -> dict[int, Path]:
        """The catalogue's image file of each product that has one (for thumbnails); empty without a catalogue."""
        try:
            rows = self.catalogue().products(list(productids)).select(["productid", "image_uri"]).to_pylist()
        except Unavailable:
            return {}
        return {r["productid"]: Path(r["image_uri"]) for r in rows if r["image_uri"] and Path(r["image_uri"]).is_file()}

    def close(self) -> None:
        with self._lock:
            parts, self._parts = self._parts, {}
        for part in parts.values():
            for method in ("close", "dispose"):
                if hasattr(part, method):
                    getattr(part, method)()

    def _part(self, name: str, open_it):  # noqa: ANN001, ANN202 - a factory and what it returns
        with self._lock:
            if name not in self._parts:
                self._parts[name] = open_it()
            return self._parts[name]

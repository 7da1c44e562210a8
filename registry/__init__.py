"""shopclip.registry: model bundles as versions of an MLflow registered model, with lineage, the aliases
`champion` and `challenger`, a promotion gate and rollback (`shopclip model ...`).

A ring around the core: it depends on the model and training code, and nothing in the server imports it. The
serve/deploy side asks it one question, which bundle is the champion:

    from shopclip.registry import resolve_champion
    champion = resolve_champion()          # SHOPCLIP_REGISTRY_URI / SHOPCLIP_MODEL_NAME, else the defaults
    champion.version, champion.source, champion.bundle_fingerprint

Modules: `options` (RegistryOptions, GateOptions), `lineage` (the version tags), `store` (Registry over MLflow),
`gate` (score both models, decide, promote), `cli`. Importing this package loads neither mlflow nor torch.
"""

from __future__ import annotations

from shopclip.registry.options import GateOptions, RegistryOptions
from shopclip.registry.store import CHALLENGER, CHAMPION, ModelRecord, Registry, open_registry, resolve_champion

__all__ = ["CHALLENGER", "CHAMPION", "GateOptions", "ModelRecord", "Registry", "RegistryOptions", "open_registry",
           "resolve_champion"]

"""The monthly drop, step by step: what the Airflow DAG runs, as plain functions that need no Airflow.

    pending -> ingest -> plan -+-> retrain -> gate (register, evaluate, promote or refuse) -+-> publish -> check
                               +---------------------------------------------------------+

- `pending`: drops (subfolders of a folder or an s3:// prefix) not yet ingested in their current form.
- `ingest`: validate and upsert each into the catalogue; rejects go beside the drop (in the store for s3://).
  With `--prediction-log`, the feedback stored since the last run is written into the catalogue too (see
  `shopclip.predlog.corrections`), so the index and the next model learn the corrected labels.
- `plan`: retrain, or the short path (the champion embeds only the new rows). Retraining is chosen when there
  is no champion yet, when a drop brings codes the champion cannot predict, or when the labelled catalogue
  grew by `--retrain-growth` since the champion's training data (`--retrain always|never` overrides).
- `retrain`: export every labelled product of the catalogue, `shopclip train` on it (`--train-flags`), the
  bundle written under `--models`, named by the export's content so a retried task reuses a finished bundle.
  Training keeps the new model's vectors of the exported products under the work folder (`--keep-vectors`).
- `gate`: register the bundle (lineage: data fingerprint, parent = the champion), then the promotion gate of
  shopclip.registry; a refused challenger leaves the champion in place and the flow goes on with it. It embeds
  with `--embed-threads` threads, as the index build does; training takes its own `--threads` in `--train-flags`
  (on cores a server also uses, both leave it its share). Reference vectors that exist are not computed again:
  the champion's come from the catalogue, the challenger's from training; the ones the gate computes are kept.
- `publish`: build and publish the index with the champion (new rows embedded, or everything for a new model,
  less the vectors training or the gate kept for it); servers that follow models swap model and index together.
- `check`: the server at `--server` answers with the published version (model and index), else NotReady.

Every step is idempotent and safe to retry: ingest compares drop signatures, training skips a bundle that is
complete, registering the same bundle again reuses its version, publish builds only when the catalogue or
the model moved past the published version. Each returns a JSON-able dict (Airflow passes it on as XCom).
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopclip import settings
from shopclip.catalogue_files import SourceOptions
from shopclip.errors import InvalidInput, NotFound, NotReady, PromotionRefused
from shopclip.indexer.options import BuildOptions
from shopclip.registry.options import GateOptions, RegistryOptions
from shopclip.settings import option

if TYPE_CHECKING:
    from shopclip.client.results import Versions

log = logging.getLogger(__name__)

RETRAIN, REINDEX = "retrain", "reindex"
RETRAIN_CHOICES = ("auto", "always", "never")


@dataclass(frozen=True)
class DropFlowConfig:
    drops: str = option("drops", "folder or s3:// prefix whose subfolders are drops")
    catalogue: str = option("catalogue", "LanceDB catalogue URI")
    index_root: str = option("index", "where index versions are published (the servers' --index-root)")
    models: str = option("models", "folder or s3:// prefix that retrained bundles are written under")
    work_dir: str = option("work", "local folder for catalogue exports and training stages")
    server: str | None = option(None, "gRPC target of a server to check after publishing (unset: no check)")
    served_timeout_s: float = option(120.0, "how long the server may take to serve the published version")
    retrain: str = option("auto", "auto: retrain when needed (see the module doc); always; never",
                          choices=RETRAIN_CHOICES)
    retrain_growth: float = option(0.2, "auto retrains once the labelled catalogue grew by this share since the "
                                        "champion's training data")
    train_flags: str = option("", "extra `shopclip train` flags, e.g. '--epochs 3' (quoted as for a shell)")
    registry: RegistryOptions = option(default_factory=RegistryOptions)
    gate: GateOptions = option(default_factory=GateOptions)
    build: BuildOptions = option(default_factory=BuildOptions)
    sources: SourceOptions = option(default_factory=SourceOptions)
    prediction_log: str | None = option(None, "prediction log whose pending feedback each ingest writes into the "
                                              "catalogue as labelled rows (unset: feedback is not applied)",
                                        secret=True)

    def __post_init__(self) -> None:
        if self.retrain not in RETRAIN_CHOICES:
            raise InvalidInput("retrain", f"expected one of {', '.join(RETRAIN_CHOICES)}, got {self.retrain!r}")
        if self.retrain_growth < 0:
            raise InvalidInput("retrain_growth", f"must be >= 0, got {self.retrain_growth}")
        if self.served_timeout_s <= 0:
            raise InvalidInput("served_timeout_s", f"must be > 0, got {self.served_timeout_s}")
        try:
            shlex.split(self.train_flags)
        except ValueError as exc:
            raise InvalidInput("train_flags", f"cannot split {self.train_flags!r}: {exc}") from None


def config_from_environment(overrides: dict[str, Any] | None = None) -> DropFlowConfig:
    """The flow's options: `overrides` (a run's conf, by option name, e.g. `registry_uri`) over `SHOPCLIP_*`
    variables (how the DAG is deployed) over defaults: one mechanism for the CLI, the DAG and the tests."""
    import os

    return settings.from_mapping(DropFlowConfig, overrides or {}, os.environ)


# -- steps ---------------------------------------------------------------------------------------------------

def pending(config: DropFlowConfig) -> list[str]:
    """Names of the drops not yet ingested in their current form (the DAG's sensor)."""
    from shopclip.indexer import job

    return [drop.name for drop in job.pending_drops(config.drops, job.load_state(Path(config.index_root)))]


def ingest(config: DropFlowConfig) -> dict[str, Any]:
    """Ingest every pending drop; a drop that cannot be read is reported (and retried by the next run)."""
    from shopclip.indexer import job, publish
    from shopclip.indexer.catalogue import Catalogue

    with publish.builder_lock(config.index_root):
        catalogue = Catalogue(config.catalogue)
        drops = job.ingest_pending(_job_config(config, bundle=""), catalogue)
        corrections = _apply_corrections(config, catalogue) if config.prediction_log else None
        codes = catalogue.labelled_products().column("prdtypecode").to_pylist()
    invalid = [drop for drop in drops if "error" in drop]
    if invalid and len(invalid) == len(drops):
        raise InvalidInput("drops", "; ".join(drop["error"] for drop in invalid))
    return {"drops": drops, "corrections": corrections, "labelled": len(codes), "codes": sorted(set(codes))}


def _apply_corrections(config: DropFlowConfig, catalogue) -> dict[str, Any]:  # noqa: ANN001 - Catalogue
    from shopclip.predlog.corrections import apply_corrections, default_folder
    from shopclip.predlog.store import PredictionStore

    assert config.prediction_log is not None
    store = PredictionStore.open(config.prediction_log)
    try:
        return apply_corrections(store, catalogue, default_folder(Path(config.work_dir) / "corrections")).to_dict()
    finally:
        store.dispose()


def plan(config: DropFlowConfig, ingested: dict[str, Any]) -> dict[str, Any]:
    """Retrain or take the short path, and why."""
    champion = _champion_config(config)
    if config.retrain != "auto":
        return {"path": RETRAIN if config.retrain == "always" else REINDEX, "reason": f"--retrain {config.retrain}"}
    if champion is None:
        return {"path": RETRAIN, "reason": "no champion yet"}
    known = set(champion["label_map"]["index_to_code"])
    unknown = sorted(set(ingested["codes"]) - known)
    if unknown:
        return {"path": RETRAIN, "reason": f"codes the champion cannot predict: {unknown[:10]}"}
    trained_on = int(champion.get("training", {}).get("trained_on", {}).get("products") or 0)
    if ingested["labelled"] >= trained_on * (1 + config.retrain_growth):
        return {"path": RETRAIN, "reason": f"{ingested['labelled']} labelled products, the champion learnt from "
                                           f"{trained_on} (growth >= {config.retrain_growth:.0%})"}
    return {"path": REINDEX, "reason": f"{ingested['labelled']} labelled products, the champion learnt from "
                                       f"{trained_on}: the champion embeds the new rows"}


def retrain(config: DropFlowConfig) -> dict[str, Any]:
    """Export the labelled catalogue and train on it; returns where the bundle is (reused when complete)."""
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.export import export_labelled
    from shopclip.objectstore import ObjectStore, join

    export = export_labelled(Catalogue(config.catalogue), Path(config.work_dir) / "export")
    bundle = join(config.models, f"bundle-{_content_name(export.folder)}")
    if ObjectStore().exists(join(bundle, "config.json")):
        log.info("%s is complete: a retried task reuses it", bundle)
        return {"bundle": bundle, "export": export.to_dict(), "reused": True}
    from shopclip.cli import main as shopclip_main

    code = shopclip_main(["train", "--data", export.folder, "--out", bundle, *shlex.split(config.train_flags),
                          "--keep-vectors", str(_known_vectors_folder(config))])
    if code != 0:
        raise InvalidInput("train_flags", f"shopclip train exited {code} (its log says why)")
    return {"bundle": bundle, "export": export.to_dict(), "reused": False}


def gate(config: DropFlowConfig, bundle: str, references: str | None = None) -> dict[str, Any]:
    """Register the bundle (once) and run the promotion gate; a refusal is a result, not a failure.

    Both models vote with the same k-NN references, `references` (the export the challenger was trained on:
    the whole labelled catalogue) unless `--reference-set` is given: the champion's own training folder is an
    earlier export, replaced since, so it cannot serve as its references."""
    from dataclasses import replace

    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.known_vectors import KnownVectors
    from shopclip.registry.gate import promote
    from shopclip.registry.store import open_registry

    options = config.gate if config.gate.reference_set or not references else replace(
        config.gate, reference_set=references)
    if config.build.embed_threads is not None:  # the gate embeds with both models: the builder's share of the cores
        import torch

        torch.set_num_threads(config.build.embed_threads)
    registry = open_registry(config.registry, create=True)
    record = registry.register(bundle, description="retrained by the drop flow")  # a retry gets the same version
    champion = registry.alias("champion")
    if champion is not None and champion.version == record.version:
        return {"version": record.version, "promoted": True, "decision": "already champion"}
    known = KnownVectors(Catalogue(config.catalogue), _known_vectors_folder(config))
    try:
        decision = promote(registry, record.version, options, reason="drop flow", known_vectors=known)
    except PromotionRefused as refused:
        log.warning("version %s refused: %s", record.version, refused)
        return {"version": record.version, "promoted": False, "decision": refused.decision}
    return {"version": record.version, "promoted": True, "decision": decision}


def publish(config: DropFlowConfig) -> dict[str, Any]:
    """Build and publish the index with the champion (only what changed is embedded)."""
    from shopclip.indexer import job

    champion = _champion(config)
    if champion is None:
        raise NotFound(f"registry {config.registry.registry_uri}: no champion to publish an index with")
    code, summary = job.run_once(_job_config(config, bundle=champion.bundle_location))
    if code != 0:
        raise NotReady(f"index publish failed ({summary.get('status')}): {summary.get('error', '')}")
    return {"version": summary["current_version"], "model_version": champion.version,
            "model_fingerprint": champion.bundle_fingerprint, "model_release": champion.bundle_release,
            "build": summary["build"], "reused_vectors": summary.get("reused_vectors", 0)}


def check(config: DropFlowConfig, published: dict[str, Any]) -> dict[str, Any]:
    """Wait until the server answers with the published index and its model; NotReady after the timeout."""
    if not config.server:
        return {"checked": False, "reason": "no --server to check"}
    from shopclip.client import ShopclipClient

    deadline = time.monotonic() + config.served_timeout_s
    with ShopclipClient(config.server) as client:
        while True:
            versions = client.info(timeout=10).versions
            if _serves(versions, published):
                return {"checked": True, "index_version": versions.index_version,
                        "model_fingerprint": versions.model_fingerprint, "model_release": versions.model_release}
            if time.monotonic() > deadline:
                raise NotReady(f"{config.server} still serves index {versions.index_version} of model "
                               f"{versions.model_fingerprint} (release {versions.model_release or '?'}), not "
                               f"{published['version']} of {published['model_fingerprint']} (release "
                               f"{published.get('model_release') or '?'}), after {config.served_timeout_s:.0f} s")
            time.sleep(1.0)


def _serves(versions: Versions, published: dict[str, Any]) -> bool:
    """The server answers with the published index and the champion: same weights and, where both sides know
    it (a champion registered and a server started since releases exist), the same classifier."""
    if (versions.index_version, versions.model_fingerprint) != (published["version"], published["model_fingerprint"]):
        return False
    expected = published.get("model_release")
    return not (expected and versions.model_release) or versions.model_release == expected


# -- helpers -------------------------------------------------------------------------------------------------

def _job_config(config: DropFlowConfig, bundle: str):
    from shopclip.indexer.job import JobConfig

    return JobConfig(drops=config.drops, catalogue_uri=config.catalogue, index_root=Path(config.index_root),
                     bundle=bundle, build=config.build, sources=config.sources,
                     known_vectors=_known_vectors_folder(config))


def _known_vectors_folder(config: DropFlowConfig) -> Path:
    """Where training and the gate keep the vectors they computed, for the gate and the publish step to reuse
    (indexer/known_vectors.py)."""
    return Path(config.work_dir) / "known-vectors"


def _champion(config: DropFlowConfig):
    from shopclip.registry.store import open_registry

    try:
        return open_registry(config.registry, create=True).alias("champion")
    except NotFound:
        return None


def _champion_config(config: DropFlowConfig) -> dict[str, Any] | None:
    """The champion bundle's config.json (codes, what it was trained on), or None without a champion."""
    from shopclip.model.bundle import read_bundle_config
    from shopclip.registry.store import local_bundle

    champion = _champion(config)
    return None if champion is None else read_bundle_config(local_bundle(champion.bundle_location))


def _content_name(folder: str) -> str:
    """A short digest of an export's csv files: the same labelled catalogue gives the same bundle name."""
    digest = hashlib.blake2b(digest_size=6)
    for name in ("X_train.csv", "Y_train.csv"):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()


__all__ = ["DropFlowConfig", "config_from_environment", "pending", "ingest", "plan", "retrain", "gate", "publish",
           "check", "RETRAIN", "REINDEX"]


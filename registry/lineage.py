"""What a registered model version records about where it came from, as MLflow version tags.

Tags, not a run's params: a version registered from a bundle has no MLflow run (training writes bundles, not
runs), and tags are what `search_model_versions` filters on and what MLflow's UI shows beside the version. Every
value is text; structured ones (metrics, training choices, gate decisions) are compact JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import shopclip

PREFIX = "shopclip."
BUNDLE_FINGERPRINT = PREFIX + "bundle_fingerprint"
BUNDLE_RELEASE = PREFIX + "bundle_release"
DATA_FINGERPRINT = PREFIX + "data_fingerprint"
TRAINING_DATA = PREFIX + "training_data"
PARENT_VERSION = PREFIX + "parent_version"
CODE_VERSION = PREFIX + "code_version"
REGISTERED_BY = PREFIX + "registered_by"
GIT_COMMIT = PREFIX + "git_commit"
METRICS = PREFIX + "metrics"
WEIGHTED_F1 = PREFIX + "weighted_f1"
TRAINED_ON = PREFIX + "trained_on"
CLASSES = PREFIX + "classes"
LOCAL_COPY = PREFIX + "local_copy"
PREVIOUS_CHAMPION = PREFIX + "previous_champion"
ALIAS_EVENTS = PREFIX + "alias_events"
GATE = PREFIX + "gate"
GATE_DECISION_PREFIX = PREFIX + "gate."
"""`shopclip.gate.1`, `shopclip.gate.2`...: one full decision (JSON) per promotion attempt, so none is lost."""

RECORDED_FIGURES = ("cv_weighted_f1", "val_weighted_f1_classify")
"""Figures a bundle records in `metrics` that the gate compares between models, best first: cross-validation
when a run recorded it, else Classify's weighted F1 on the validation split. (`test_weighted_f1` is on each
bundle's own test split, so two bundles' values are not on the same products.)"""


def lineage_tags(config: dict[str, Any], *, release: str, local_copy: str | None, parent: str | None
                 ) -> dict[str, str]:
    """The tags of a new version from its bundle's config.json and its release (`bundle_release`). Empty values
    are left out."""
    training = config.get("training") or {}
    metrics = config.get("metrics") or {}
    commit = git_commit()
    tags = {
        BUNDLE_FINGERPRINT: str(config.get("fingerprint", "")),
        BUNDLE_RELEASE: release,
        DATA_FINGERPRINT: str(training.get("data_fingerprint", "")),
        TRAINING_DATA: str(training.get("data_dir", "")),
        PARENT_VERSION: parent or "",
        # The code that trained the bundle (recorded in it) and the code that registered it, which may be newer.
        CODE_VERSION: str((config.get("versions") or {}).get("shopclip", "")),
        REGISTERED_BY: f"shopclip {shopclip.__version__}" + (f" ({commit})" if commit else ""),
        GIT_COMMIT: commit or "",
        METRICS: compact_json(metrics),
        WEIGHTED_F1: _figure_text(headline_f1(metrics)),
        TRAINED_ON: compact_json(_training_summary(training)),
        CLASSES: str(len((config.get("label_map") or {}).get("index_to_code", []))),
        LOCAL_COPY: local_copy or "",
    }
    return {key: value for key, value in tags.items() if value not in ("", "{}")}


def headline_f1(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The weighted F1 `model list` shows, and which figure it is: cross-validation, then the held-out test
    split (`shopclip evaluate`), then validation. None when the bundle recorded none."""
    test = metrics.get("test_weighted_f1")
    candidates = [("cv", metrics.get("cv_weighted_f1")),
                  ("test", test.get("classify") if isinstance(test, dict) else test),
                  ("val", metrics.get("val_weighted_f1_classify"))]
    return next(((name, float(value)) for name, value in candidates if _is_figure(value)), None)


def recorded_figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The bundle's figures the gate compares (RECORDED_FIGURES); training writes -1 for one it could not
    compute (no validation split), which is left out."""
    return {name: float(metrics[name]) for name in RECORDED_FIGURES if _is_figure(metrics.get(name))}


def git_commit() -> str | None:
    """`git describe --always --dirty` of the checkout shopclip runs from; None when installed from a wheel."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                                   cwd=Path(shopclip.__file__).resolve().parent, capture_output=True, text=True,
                                   timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def read_json(tags: dict[str, str], key: str, default: Any = None) -> Any:
    """A JSON tag's value; a tag someone edited by hand into something unreadable counts as absent."""
    try:
        return json.loads(tags[key])
    except (KeyError, ValueError):
        return default


def _training_summary(training: dict[str, Any]) -> dict[str, Any]:
    """What decides how comparable two versions are: how many products, which epochs and seed, refit or not."""
    trained_on = training.get("trained_on") or {}
    summary = {"products": trained_on.get("products"), "epochs": trained_on.get("epochs"),
               "refit_on_validation": trained_on.get("refit_on_validation"), "seed": training.get("seed"),
               "frozen_towers": training.get("frozen_towers"), "device": training.get("device"),
               "productids_sha256": trained_on.get("productids_sha256")}
    return {key: value for key, value in summary.items() if value is not None}


def _is_figure(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _figure_text(figure: tuple[str, float] | None) -> str:
    return "" if figure is None else f"{figure[1]:.4f} ({figure[0]})"

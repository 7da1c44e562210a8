"""The promotion gate: a challenger replaces the champion only if it is not worse where it matters.

Both models answer a fixed regression set of labelled products exactly as `serve` would (training/evaluate.py
`classify_products`: one forward from the raw product, exact k-NN over reference products, Classify's views and
vote), and the challenger is refused when
- its weighted F1 on the regression set is below a floor (the only test when there is no champion yet: a model
  trained on shuffled labels scores near chance and stops here);
- that weighted F1, or a figure both bundles recorded (cross-validation, else validation weighted F1), fell by
  more than a tolerance;
- a class with enough regression products lost more than a set recall (a better average can hide a class that a
  new drop broke), and more than chance explains: both models answer the same products, so the class's loss is
  judged by an exact one-sided McNemar test on the products only one of them gets right. With ~15 products a
  class, two answers flipping already move recall by 0.13; across 27 classes some such flips are near certain
  for any retrained model, and a gate refusing on them would refuse every retraining.
The decision, both models' numbers, the classes that failed and the reason are recorded on the challenger's
version (registry/store.py `record_gate`) whatever the outcome, and forced promotions are recorded as forced.

References are each bundle's own training products (as `shopclip evaluate` uses), or one catalogue folder for
both (`--reference-set`, as a served index would hold them). Regression products a model learnt from or was
validated on are left out for both models, so neither is flattered and both answer the same products. A
`KnownVectors` (the drop flow passes one) supplies reference vectors a model already has and keeps the ones
computed here, so the index build after a promotion does not embed the catalogue again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shopclip import settings
from shopclip.errors import InvalidInput, PromotionRefused
from shopclip.registry import lineage
from shopclip.registry.options import GateOptions
from shopclip.registry.store import CHAMPION, MAX_TAG_CHARS, ModelRecord, Registry, local_bundle

if TYPE_CHECKING:
    import numpy as np

    from shopclip.catalogue_files import SourceRow
    from shopclip.model.bundle import BundleEmbedder

log = logging.getLogger(__name__)

PASSED, REFUSED, FORCED = "passed", "refused", "forced"
FIGURE_NAMES = {"cv_weighted_f1": "cross-validation weighted F1",
                "val_weighted_f1_classify": "validation weighted F1"}
REFERENCE_BATCH = 32
"""Products per embedding call for the references (as the indexer embeds them)."""


class KnownVectors(Protocol):
    """Reference vectors a model already computed elsewhere, and a place for the ones the gate computes (the
    drop flow's is indexer/known_vectors.py: the catalogue's vectors, and those kept for the index build)."""

    def lookup(self, fingerprint: str, products: Sequence["SourceRow"]) -> dict[int, "np.ndarray"]:
        """Vectors of model `fingerprint` for some of `products` (by productid), computed from their content."""

    def keep(self, fingerprint: str, products: Sequence["SourceRow"], vectors: "np.ndarray") -> None:
        """Remember vectors the gate computed with model `fingerprint`."""


@dataclass
class Candidate:
    """A registered version loaded for scoring."""

    record: ModelRecord
    embedder: "BundleEmbedder"
    references: list["SourceRow"]
    seen: set[int]
    """Productids it learnt from or was validated on: left out of the regression products."""
    figures: dict[str, float]
    reused_references: int = 0
    """References whose vector came from KnownVectors instead of an embedding."""


@dataclass(frozen=True)
class Scores:
    """One model's answers on the regression products (the same products, in the same order, for every model)."""

    weighted_f1: float
    truth: "np.ndarray"
    """(products,) the true code of each regression product."""
    correct: "np.ndarray"
    """(products,) whether the model's answer was that code."""

    @property
    def support(self) -> dict[int, int]:
        import numpy as np

        codes, counts = np.unique(self.truth, return_counts=True)
        return {int(code): int(n) for code, n in zip(codes, counts)}

    @property
    def recall(self) -> dict[int, float]:
        return {code: float(self.correct[self.truth == code].mean()) for code in self.support}


def promote(registry: Registry, ref: str, options: GateOptions, *, force: bool = False,
            reason: str = "", known_vectors: KnownVectors | None = None) -> dict[str, Any]:
    """Gate `ref` (a version or `challenger`) against the champion and make it champion if it passes, or
    unconditionally with `force`. The decision is recorded on the version first; PromotionRefused (carrying
    it as `.decision`) when refused, the champion unchanged. `known_vectors` spares embedding references
    whose vectors exist, and keeps the ones computed."""
    challenger = registry.get(ref)
    champion = registry.alias(CHAMPION)
    if champion is not None and champion.version == challenger.version:
        raise InvalidInput("version", f"version {challenger.version} is already the champion")
    if force:
        decision = _forced(challenger, champion, reason or "forced by the operator, gate not run")
    else:
        decision = evaluate_gate(challenger, champion, options, known_vectors)
    registry.record_gate(challenger.version, decision)
    if decision["decision"] == REFUSED:
        raise PromotionRefused(f"version {challenger.version} refused: {decision['reason']}", decision=decision)
    why = decision["reason"] if not reason or force else f"{reason} ({decision['reason']})"
    registry.promote(challenger.version, event="promoted" if decision["decision"] == PASSED else FORCED, reason=why)
    return decision


def evaluate_gate(challenger: ModelRecord, champion: ModelRecord | None, options: GateOptions,
                  known_vectors: KnownVectors | None = None) -> dict[str, Any]:
    """Score both versions on the regression set and decide; nothing is written to the registry."""
    from shopclip.training.data import fingerprint, load_products

    if not options.regression_set:
        raise InvalidInput("regression_set", f"required: pass --regression-set or set "
                                             f"{settings.env_name('regression_set')} (or promote with --force)")
    regression = load_products(_local_folder(options.regression_set))
    shared = _shared_references(options, regression)
    candidates = [_load(record, options, shared) for record in (challenger, champion) if record is not None]
    products, excluded = _eligible(regression, candidates)
    scores = [_score(candidate, products, known_vectors) for candidate in candidates]
    regression_info = {"source": str(Path(options.regression_set).resolve()), "fingerprint": fingerprint(regression),
                        "products": len(products), **excluded,
                        "references": "shared: " + str(Path(options.reference_set).resolve()) if shared is not None
                        else "each bundle's training products"}
    return decide(candidates, scores, options, regression_info)


def decide(candidates: list[Candidate], scores: list[Scores], options: GateOptions,
           regression_info: dict[str, Any]) -> dict[str, Any]:
    """The decision from the challenger's (first) and the champion's (second, when there is one) scores."""
    challenger, ours = candidates[0], scores[0]
    failures = _floor(ours, options)
    failed_classes: list[dict[str, Any]] = []
    champion_summary, recorded = None, "no champion"
    if len(candidates) > 1:
        champion, theirs = candidates[1], scores[1]
        comparable = _same_data(challenger, champion)
        recorded = "compared" if comparable else "not compared: the two models were validated on different data"
        failures += _f1_drops(ours, theirs, challenger.figures if comparable else {},
                              champion.figures if comparable else {}, options)
        failed_classes = _recall_drops(ours, theirs, options)
        if failed_classes:
            failures.append(f"{len(failed_classes)} class(es) lost more than {options.max_recall_drop:.2f} recall "
                            f"beyond chance: "
                            + ", ".join(f"{c['code']} ({c['champion_recall']:.2f} -> {c['challenger_recall']:.2f})"
                                        for c in failed_classes[:5]))
        champion_summary = _summary(champion, theirs)
    decision = {
        "decision": REFUSED if failures else PASSED, "at": _now(),
        "challenger": _summary(challenger, ours), "champion": champion_summary,
        "regression_set": {**regression_info, "classes_judged": _judged_count(ours, options)},
        "recorded_figures": recorded,
        "thresholds": options.thresholds(), "failed_classes": failed_classes,
        "failed_classes_total": len(failed_classes),
        "reason": "; ".join(failures) if failures else _why_passed(ours, scores[1:], options),
    }
    return _fit_in_a_tag(decision)


def format_decision(decision: dict[str, Any]) -> str:
    """The decision as `promote` prints it."""
    lines = [f"gate: {decision['decision'].upper()} - {decision['reason']}"]
    regression = decision.get("regression_set")
    if regression:
        lines.append(f"regression set: {regression['products']} products from {regression['source']} "
                     f"(left out: {regression['excluded_seen']} seen in training, {regression['excluded_unknown_code']}"
                     f" of codes neither model knows); references: {regression['references']}")
    if decision.get("recorded_figures", "").startswith("not compared"):
        lines.append(f"recorded figures {decision['recorded_figures']}")
    for role in ("challenger", "champion"):
        model = decision.get(role)
        if model and "weighted_f1" in model:
            figures = ", ".join(f"{FIGURE_NAMES.get(k, k)} {v:.4f}" for k, v in model["figures"].items())
            lines.append(f"{role:<10} version {model['version']}: regression weighted F1 {model['weighted_f1']:.4f}"
                         + (f"; recorded {figures}" if figures else ""))
        elif model:
            lines.append(f"{role:<10} version {model['version']}")
    for failed in decision.get("failed_classes", []):
        chance = f" (p = {failed['p_value']:.3g})" if "p_value" in failed else ""  # decisions before the test
        lines.append(f"  class {failed['code']}: recall {failed['champion_recall']:.3f} -> "
                     f"{failed['challenger_recall']:.3f} on {failed['products']} products{chance}")
    return "\n".join(lines)


# -- loading and scoring ------------------------------------------------------------------------------------

def _shared_references(options: GateOptions, regression: list["SourceRow"]) -> list["SourceRow"] | None:
    """The `--reference-set` products, less the regression products (k-NN must not find the product itself)."""
    if not options.reference_set:
        return None
    from shopclip.training.data import load_products

    asked = {p.productid for p in regression}
    return [p for p in load_products(_local_folder(options.reference_set)) if p.productid not in asked]


def _load(record: ModelRecord, options: GateOptions, shared: list["SourceRow"] | None) -> Candidate:
    from shopclip.model.bundle import load_bundle_embedder

    embedder = load_bundle_embedder(local_bundle(record.bundle_location), device=options.device)
    training = embedder.config.get("training") or {}
    split = training.get("split") or {}
    if shared is None and not split:
        raise InvalidInput("bundle", f"version {record.version} ({record.source}) records no training split: "
                                     "pass --reference-set to score it")
    seen = set(split.get("train", [])) | set(split.get("val", []))
    if shared is None:
        from shopclip.training.evaluate import learnt_products

        references = learnt_products({**training, "data_dir": _local_folder(str(training.get("data_dir", "")))})[1]
    else:
        references = shared
    return Candidate(record, embedder, references, seen, lineage.recorded_figures(embedder.config.get("metrics") or {}))


def _local_folder(uri: str) -> str:
    """A catalogue folder on this machine: an s3:// prefix (a training folder `train --data s3://` recorded, a
    regression set kept in the store) is mirrored into the cache first."""
    if "://" not in uri:
        return uri
    from shopclip.staging import local_copy

    return str(local_copy(uri))


def _eligible(regression: list["SourceRow"], candidates: list[Candidate]) -> tuple[list["SourceRow"], dict[str, int]]:
    """Regression products no model saw in training, of a code at least one knows (a code the challenger dropped
    counts against it)."""
    seen = set().union(*(candidate.seen for candidate in candidates))
    known = set().union(*(candidate.embedder.codes for candidate in candidates))
    unseen = [p for p in regression if p.productid not in seen]
    products = [p for p in unseen if p.prdtypecode in known]
    if not products:
        raise InvalidInput("regression_set", "no product is new to both models and of a code either knows")
    return products, {"excluded_seen": len(regression) - len(unseen),
                      "excluded_unknown_code": len(unseen) - len(products)}


def _score(candidate: Candidate, products: list["SourceRow"], known_vectors: KnownVectors | None) -> Scores:
    import numpy as np
    from sklearn.metrics import f1_score

    from shopclip.training.evaluate import classify_products

    embedder = candidate.embedder
    reference_codes = np.array([p.prdtypecode for p in candidate.references], dtype=np.int64)
    references = _reference_vectors(candidate, known_vectors)
    probs = classify_products(embedder, products, references, reference_codes)
    predicted = np.asarray(embedder.codes, dtype=np.int64)[probs.argmax(axis=1)]
    truth = np.array([p.prdtypecode for p in products], dtype=np.int64)
    log.info("version %s: %d regression products scored", candidate.record.version, len(products))
    return Scores(float(f1_score(truth, predicted, average="weighted", zero_division=0)), truth, predicted == truth)


def _reference_vectors(candidate: Candidate, known_vectors: KnownVectors | None) -> "np.ndarray":
    """(references, dim) in the candidate's reference order: known vectors where there are some, the others
    embedded (and handed to `known_vectors.keep`)."""
    import numpy as np

    embedder, references = candidate.embedder, candidate.references
    if known_vectors is None:
        return _embed(embedder, references)
    known = known_vectors.lookup(embedder.fingerprint, references)
    missing = [p for p in references if p.productid not in known]
    computed = _embed(embedder, missing)
    if missing:
        known_vectors.keep(embedder.fingerprint, missing, computed)
    known.update((p.productid, vector) for p, vector in zip(missing, computed))
    candidate.reused_references = len(references) - len(missing)
    log.info("version %s: %d reference vectors reused, %d embedded", candidate.record.version,
             candidate.reused_references, len(missing))
    return np.stack([known[p.productid] for p in references]) if references else computed


def _embed(embedder: "BundleEmbedder", products: list["SourceRow"]) -> "np.ndarray":
    """The references' vectors as the indexer computes them (`embedder.embed` of the catalogue product)."""
    import numpy as np

    from shopclip.training.data import product_input

    chunks = [embedder.embed([product_input(p) for p in products[start:start + REFERENCE_BATCH]])
              for start in range(0, len(products), REFERENCE_BATCH)]
    return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), dtype=np.float32)


# -- the checks ---------------------------------------------------------------------------------------------

def _floor(ours: Scores, options: GateOptions) -> list[str]:
    if ours.weighted_f1 >= options.min_weighted_f1:
        return []
    return [f"regression weighted F1 {ours.weighted_f1:.4f} is below the floor {options.min_weighted_f1:.2f}"]


def _same_data(challenger: Candidate, champion: Candidate) -> bool:
    """Whether the figures the two bundles recorded are on the same products: only when both trained on the same
    data (fingerprint), as two recipes compared on one folder. A model retrained after a drop validates on other
    products than its champion did, so a lower figure there says nothing about which model is better; the fixed
    regression set is what compares them then."""
    ours, theirs = challenger.record.data_fingerprint, champion.record.data_fingerprint
    return bool(ours) and ours == theirs


def _f1_drops(ours: Scores, theirs: Scores, our_figures: dict[str, float], their_figures: dict[str, float],
              options: GateOptions) -> list[str]:
    """Regression weighted F1, then each figure both bundles recorded, against the tolerance."""
    pairs = [("regression weighted F1", ours.weighted_f1, theirs.weighted_f1)]
    pairs += [(f"recorded {FIGURE_NAMES[name]}", our_figures[name], their_figures[name])
              for name in lineage.RECORDED_FIGURES if name in our_figures and name in their_figures]
    return [f"{label} fell {before:.4f} -> {after:.4f} (more than {options.max_f1_drop:.2f})"
            for label, after, before in pairs if before - after > options.max_f1_drop]


def _recall_drops(ours: Scores, theirs: Scores, options: GateOptions) -> list[dict[str, Any]]:
    """Judged classes (enough regression products) whose recall fell by more than the tolerance and beyond
    chance (`recall_loss_p_value` below the gate's significance), worst first."""
    our_recall, their_recall = ours.recall, theirs.recall
    failed = []
    for code, n in ours.support.items():
        if n < options.min_class_products or their_recall[code] - our_recall[code] <= options.max_recall_drop:
            continue
        p_value = recall_loss_p_value(ours, theirs, code)
        if p_value < options.recall_drop_significance:
            failed.append({"code": code, "products": n, "champion_recall": round(their_recall[code], 4),
                           "challenger_recall": round(our_recall[code], 4), "p_value": round(p_value, 4)})
    return sorted(failed, key=lambda c: c["challenger_recall"] - c["champion_recall"])


def recall_loss_p_value(ours: Scores, theirs: Scores, code: int) -> float:
    """One-sided exact McNemar test on the class's products: the chance that a challenger as good as the champion
    would lose at least as many of the products only one of them gets right. 1.0 when no answer differs."""
    from scipy.stats import binomtest

    rows = ours.truth == code
    lost = int((theirs.correct[rows] & ~ours.correct[rows]).sum())
    won = int((ours.correct[rows] & ~theirs.correct[rows]).sum())
    return float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue) if lost + won else 1.0


def _judged_count(ours: Scores, options: GateOptions) -> int:
    return sum(n >= options.min_class_products for n in ours.support.values())


def _why_passed(ours: Scores, theirs: list[Scores], options: GateOptions) -> str:
    if not theirs:
        return (f"first champion: regression weighted F1 {ours.weighted_f1:.4f} reaches the floor "
                f"{options.min_weighted_f1:.2f}")
    return (f"regression weighted F1 {ours.weighted_f1:.4f} vs champion {theirs[0].weighted_f1:.4f} (tolerance "
            f"{options.max_f1_drop:.2f}); no judged class lost more than {options.max_recall_drop:.2f} recall beyond "
            f"chance (p < {options.recall_drop_significance:g})")


# -- the record ---------------------------------------------------------------------------------------------

def _summary(candidate: Candidate, scores: Scores) -> dict[str, Any]:
    return {"version": candidate.record.version, "bundle_fingerprint": candidate.record.bundle_fingerprint,
            "weighted_f1": round(scores.weighted_f1, 4), "figures": candidate.figures,
            "references": len(candidate.references), "reused_references": candidate.reused_references}


def _forced(challenger: ModelRecord, champion: ModelRecord | None, reason: str) -> dict[str, Any]:
    return {"decision": FORCED, "at": _now(), "challenger": {"version": challenger.version},
            "champion": {"version": champion.version} if champion else None, "reason": reason}


def _fit_in_a_tag(decision: dict[str, Any]) -> dict[str, Any]:
    """Drop the mildest failed classes from the record until it fits one tag (their total stays counted)."""
    while len(lineage.compact_json(decision)) > MAX_TAG_CHARS and decision["failed_classes"]:
        decision["failed_classes"].pop()
    return decision


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

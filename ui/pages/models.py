"""Models: the champion and the challenger side by side with their metrics (the bundle's recorded figures, its
`shopclip evaluate` table and confusion matrix when the bundle folder holds them), every registered version, the
promotion history (alias moves and gate decisions with their reasons), and a rollback behind a confirmation.

Everything is read from the registry and the bundle folders' json and png files: no model loads in the console.
The rollback is `shopclip.registry.rollback`, the decision `shopclip model rollback` makes, index included when
the console has an index root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from shopclip.registry import lineage
from shopclip.registry.gate import format_decision
from shopclip.registry.rollback import rollback, rollback_target
from shopclip.registry.store import CHALLENGER, CHAMPION, ModelRecord, Registry
from shopclip.ui import session
from shopclip.ui.backends import Backends
from shopclip.ui.layout import section

# Module-level strings would show on the page (Streamlit magic): constants are documented by comments.
EVAL_DIR = "eval"  # where `shopclip evaluate` writes eval.json and confusion_matrix.png by default
DONE_KEY = "models_rollback_done"
ROUND_KEY = "models_rollback_round"  # bumped by each rollback: the next starts unticked, with no reason
DECISIONS_SHOWN = 10
SHORT = 12


def render(backends: Backends) -> None:
    st.title("Models")
    done = st.session_state.pop(DONE_KEY, None)
    if done:
        st.success(done, icon=":material/undo:")
    with section():
        registry = backends.registry()
        versions = registry.versions()
        if not versions:
            st.info(f"No model registered in {registry.options.registry_uri} yet: `shopclip model register "
                    f"BUNDLE` adds one (the drop flow registers every retrained bundle).")
            return
        with section("Champion and challenger"):
            _side_by_side(registry)
        with section("All versions"):
            _versions_table(versions)
        with section("Promotion history"):
            _history(versions)
        with section("Roll back the champion"):
            _rollback(registry, backends.config.index_root)


# -- champion and challenger -------------------------------------------------------------------------------------

def _side_by_side(registry: Registry) -> None:
    for column, alias in zip(st.columns(2), (CHAMPION, CHALLENGER)):
        with column, section():
            record = registry.alias(alias)
            if record is None:
                st.info(f"No {alias}: " + ("nothing was promoted yet (`shopclip model promote`)." if alias == CHAMPION
                                           else "the newest registration was promoted, none is waiting."))
            else:
                _model_card(alias, record)


def _model_card(alias: str, record: ModelRecord) -> None:
    st.markdown(f"#### {alias.title()}: version {record.version}")
    headline = lineage.headline_f1(record.metrics)
    st.metric(f"{alias} weighted F1" + (f" ({headline[0]})" if headline else ""),
              f"{headline[1]:.4f}" if headline else "-")
    st.caption(f"registered {record.created:%Y-%m-%d %H:%M} UTC · model {record.bundle_fingerprint[:SHORT] or '-'}"
               f" · release {record.bundle_release[:SHORT] or '-'} · data {record.data_fingerprint[:SHORT] or '-'}"
               f" · {record.source}")
    rows = metric_rows(record.metrics)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.caption("The bundle recorded no metrics.")
    _evaluation(record.bundle_location)


def metric_rows(metrics: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """The bundle's figures as (metric, value) rows: nested ones as `test_weighted_f1.classify`."""
    rows: list[dict[str, Any]] = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            rows += metric_rows(value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"metric": prefix + name, "value": float(value)})
    return rows


def _evaluation(location: str) -> None:
    """`shopclip evaluate`'s table and confusion matrix, read from a local bundle folder (no model loaded)."""
    folder = Path(location) / EVAL_DIR
    if "://" in location or not folder.is_dir():
        st.caption(f"No evaluation to show: `shopclip evaluate --bundle {location}` writes one into the bundle "
                   f"folder (read here from local folders only).")
        return
    report_file, matrix_file = folder / "eval.json", folder / "confusion_matrix.png"
    if report_file.is_file():
        report = json.loads(report_file.read_text(encoding="utf-8"))
        st.caption(f"Evaluation on {report.get('n_test', '?')} test products from {report.get('test_source', '?')}")
        st.dataframe([{"method": method, **figures} for method, figures in report.get("methods", {}).items()],
                     hide_index=True, width="stretch")
    if matrix_file.is_file():
        with st.expander("Confusion matrix (Classify, rows normalised)"):
            st.image(str(matrix_file), width="stretch")


# -- versions and history ----------------------------------------------------------------------------------------

def _versions_table(versions: list[ModelRecord]) -> None:
    st.dataframe([{"version": int(r.version), "aliases": ", ".join(r.aliases),
                   "weighted F1": r.tags.get(lineage.WEIGHTED_F1, ""), "gate": r.tags.get(lineage.GATE, ""),
                   "registered (UTC)": f"{r.created:%Y-%m-%d %H:%M}", "model": r.bundle_fingerprint[:SHORT],
                   "release": r.bundle_release[:SHORT], "data": r.data_fingerprint[:SHORT], "parent": r.parent_version or "",
                   "replaced": r.previous_champion or "", "source": r.source, "description": r.description}
                  for r in versions], hide_index=True, width="stretch")


def alias_history(versions: list[ModelRecord]) -> list[dict[str, Any]]:
    """Every alias move recorded on the versions, newest first. A promotion or a rollback shows on both versions
    it touched (`promoted` and `replaced`, `rolled_back` and `restored`), each with the reason given."""
    rows = [{"at": event.get("at", ""), "version": record.version, "event": event.get("event", ""),
             "other version": next((str(event[key]) for key in ("replaced", "by", "to", "from") if event.get(key)),
                                   ""),
             "reason": event.get("reason", "")}
            for record in versions for event in record.alias_events]
    return sorted(rows, key=lambda row: row["at"], reverse=True)


def gate_history(versions: list[ModelRecord]) -> list[tuple[ModelRecord, dict[str, Any]]]:
    """Every gate decision, newest first, with the version it judged."""
    found = [(record, decision) for record in versions for decision in record.gate_decisions]
    return sorted(found, key=lambda pair: str(pair[1].get("at", "")), reverse=True)


def _history(versions: list[ModelRecord]) -> None:
    moves = alias_history(versions)
    st.markdown("**Alias moves**")
    if moves:
        st.dataframe(moves, hide_index=True, width="stretch")
    else:
        st.caption("No alias has moved yet.")
    decisions = gate_history(versions)
    st.markdown("**Gate decisions**")
    if not decisions:
        st.caption("No gate decision recorded (`shopclip model promote` runs the gate).")
        return
    st.dataframe([{"at": d.get("at", ""), "version": r.version, "decision": d.get("decision", ""),
                   "against champion": (d.get("champion") or {}).get("version", ""), "reason": d.get("reason", "")}
                  for r, d in decisions], hide_index=True, width="stretch")
    with st.expander(f"The {min(len(decisions), DECISIONS_SHOWN)} newest decisions in full"):
        for record, decision in decisions[:DECISIONS_SHOWN]:
            st.code(f"version {record.version}, {decision.get('at', '?')}\n{format_decision(decision)}", language=None)


# -- rollback ----------------------------------------------------------------------------------------------------

def _rollback(registry: Registry, index_root: str | None) -> None:
    champion = registry.alias(CHAMPION)
    if champion is None:
        st.info("No champion yet: nothing to roll back.")
        return
    if champion.previous_champion is None:
        st.info(f"Version {champion.version} replaced no earlier champion: nothing to roll back to.")
        return
    target = rollback_target(registry)
    st.markdown(f"Makes version **{target.version}** the champion again, in place of version "
                f"**{champion.version}**. Servers that follow the registry serve it at their next poll.")
    if index_root:
        st.caption(f"The newest kept index version built by version {target.version} under {index_root} becomes "
                   f"live with it; without one, nothing moves.")
    else:
        st.warning("No index root is configured: only the champion alias moves. Start the console with "
                   "--index-root DIR to make the restored model's index live with it, as `shopclip model rollback "
                   "--index-root` does.")
    round_ = st.session_state.get(ROUND_KEY, 0)
    reason = st.text_input("Why (recorded on both versions)", key=f"rollback_reason_{round_}")
    confirmed = st.checkbox(f"I understand that version {champion.version} stops being the champion and version "
                            f"{target.version} is served instead", key=f"rollback_confirm_{round_}")
    clicked = st.button("Roll back", type="primary", disabled=not (confirmed and reason.strip()),
                        key=f"rollback_{round_}")
    if not clicked:
        return
    if not (confirmed and reason.strip()):  # the button is disabled then; a stale click must not move anything
        st.warning("Give a reason and tick the confirmation first.")
        return
    result = rollback(registry, reason.strip(), index_root or None)
    st.session_state[DONE_KEY] = f"{result.summary()}. Reason: {reason.strip()}"
    st.session_state[ROUND_KEY] = round_ + 1
    st.rerun()


render(session.backends())

"""`shopclip model list|show|register|promote|rollback`: the model registry's commands.

Options are `RegistryOptions` and `GateOptions` fields (shopclip.settings): each is a flag and a SHOPCLIP_*
variable (`SHOPCLIP_REGISTRY_URI`, `SHOPCLIP_REGRESSION_SET`...). Only argparse here: mlflow loads in the
handlers, torch only for `register` and `promote`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from shopclip import settings
from shopclip.registry.options import GateOptions, RegistryOptions
from shopclip.settings import option


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser(
        "model", help="model registry: register bundles, promote through the gate, roll back",
        description="Bundles as versions of one MLflow registered model with lineage tags; aliases `champion` "
                    "(what serving follows) and `challenger` (the newest registration). `promote` runs the gate "
                    "on a fixed regression set; `rollback` moves the champion back one step.")
    commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    listing = _with_registry(commands.add_parser("list", help="versions: aliases, weighted F1, data, gate"))
    listing.set_defaults(handler=_list)

    show = _with_registry(commands.add_parser("show", help="one version's lineage, gate decisions, alias history"))
    show.add_argument("version", nargs="?", default="champion", help="number, champion or challenger "
                                                                     "(default champion)")
    show.set_defaults(handler=_show)

    add = _with_registry(commands.add_parser("register", help="register a bundle (it becomes the challenger)"))
    add.add_argument("bundle", help="bundle folder written by `shopclip train`, or its s3:// URI")
    add.add_argument("--source", help="where servers read the bundle when not BUNDLE (e.g. its s3:// upload)")
    add.add_argument("--parent", help="version it was trained from (default: the champion now)")
    add.add_argument("--description", default="", help="free text shown by `show`")
    add.set_defaults(handler=_register)

    promote = _with_registry(commands.add_parser("promote", help="gate a version against the champion; make it "
                                                                 "champion if it passes"))
    promote.add_argument("version", nargs="?", default="challenger", help="number or challenger (default)")
    promote.add_argument("--force", action="store_true", help="skip the gate (recorded as forced)")
    promote.add_argument("--reason", default="", help="why, recorded with the decision")
    settings.add_arguments(promote.add_argument_group("gate (GateOptions; each flag is also a SHOPCLIP_* variable)"),
                           GateOptions)
    promote.set_defaults(handler=_promote)

    rollback = _with_registry(commands.add_parser("rollback", help="champion back to the previous champion"))
    rollback.add_argument("--reason", required=True, help="why, recorded on both versions")
    settings.add_arguments(rollback, RollbackOptions)
    rollback.set_defaults(handler=_rollback)


@dataclass(frozen=True)
class RollbackOptions:
    index_root: str | None = option(None, "also make the newest kept index version built by the restored champion "
                                          "live there: servers that follow models serve it at their next poll")


def _with_registry(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    settings.add_arguments(parser, RegistryOptions)
    return parser


def _open(args: argparse.Namespace, create: bool = False) -> Any:
    from shopclip.registry.store import open_registry

    return open_registry(settings.from_sources(RegistryOptions, args, os.environ), create=create)


def _list(args: argparse.Namespace) -> int:
    from shopclip.errors import NotFound

    try:
        registry = _open(args)
    except NotFound as exc:  # no database yet: as empty as a registry can be, and worth saying so
        print(f"no versions: {exc}")
        return 0
    versions = registry.versions()
    print(format_table(versions) if versions else f"no versions of model {registry.name!r} yet")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(format_record(_open(args).get(args.version)))
    return 0


def _register(args: argparse.Namespace) -> int:
    record = _open(args, create=True).register(args.bundle, source=args.source, parent=args.parent,
                                               description=args.description)
    print(f"registered {record.source} as version {record.version} of {record.name} "
          f"({', '.join(record.aliases)})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from shopclip.errors import PromotionRefused
    from shopclip.registry.gate import format_decision, promote

    registry = _open(args)
    try:
        decision = promote(registry, args.version, settings.from_sources(GateOptions, args, os.environ),
                           force=args.force, reason=args.reason)
    except PromotionRefused as refused:
        print(format_decision(refused.decision))  # both models' numbers, then the one-line error
        raise
    print(format_decision(decision))
    print(f"version {decision['challenger']['version']} is now the champion of {registry.name}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from shopclip.registry.rollback import rollback  # the console's rollback button makes the same decision

    index_root = settings.from_sources(RollbackOptions, args, os.environ).index_root
    result = rollback(_open(args), args.reason, index_root or None)
    print(f"champion rolled back from version {result.left.version} to version {result.restored.version}: "
          f"{args.reason}")
    if result.index_version is not None:
        print(f"index {result.index_version} (built with version {result.restored.version}) is live under "
              f"{index_root}")
    return 0


# -- output -------------------------------------------------------------------------------------------------

def format_table(versions: list[Any]) -> str:
    """`model list`: one line per version, newest first."""
    from shopclip.registry import lineage

    header = f"{'version':>7}  {'aliases':<20} {'weighted F1':<14} {'data fingerprint':<17} {'gate':<8} created (UTC)"
    lines = [header, "-" * len(header)]
    for record in versions:
        lines.append(f"{record.version:>7}  {','.join(record.aliases) or '-':<20} "
                     f"{record.tags.get(lineage.WEIGHTED_F1, '-'):<14} {record.data_fingerprint[:12] or '-':<17} "
                     f"{record.tags.get(lineage.GATE, '-'):<8} {record.created:%Y-%m-%d %H:%M}")
    return "\n".join(lines)


def format_record(record: Any) -> str:
    """`model show`: lineage, then every gate decision and alias move recorded on the version."""
    from shopclip.registry import lineage
    from shopclip.registry.gate import format_decision

    tags = record.tags
    rows = [("source", record.source), ("local copy", tags.get(lineage.LOCAL_COPY)),
            ("created", f"{record.created:%Y-%m-%d %H:%M:%S} UTC"), ("description", record.description),
            ("bundle fingerprint", record.bundle_fingerprint), ("bundle release", record.bundle_release),
            ("data fingerprint", record.data_fingerprint),
            ("training data", tags.get(lineage.TRAINING_DATA)), ("parent version", record.parent_version),
            ("previous champion", record.previous_champion), ("trained by code", tags.get(lineage.CODE_VERSION)),
            ("registered by", tags.get(lineage.REGISTERED_BY)), ("classes", tags.get(lineage.CLASSES)),
            ("trained on", tags.get(lineage.TRAINED_ON)), ("weighted F1", tags.get(lineage.WEIGHTED_F1)),
            ("metrics", _metrics_text(record.metrics))]
    aliases = f" ({', '.join(record.aliases)})" if record.aliases else ""
    lines = [f"model {record.name} version {record.version}{aliases}"]
    lines += [f"  {name + ':':<20}{value}" for name, value in rows if value]
    decisions = record.gate_decisions
    lines.append(f"gate decisions: {len(decisions) or 'none'}")
    for number, decision in enumerate(decisions, 1):
        lines.append(f"  {number}. {decision.get('at', '?')}")
        lines += ["     " + line for line in format_decision(decision).splitlines()]
    events = record.alias_events
    lines.append(f"alias history: {len(events) or 'none'}")
    lines += [f"  {event.get('at', '?')} {_event_text(event)}" for event in events]
    return "\n".join(lines)


def _metrics_text(metrics: dict[str, Any], prefix: str = "") -> str:
    """`val_weighted_f1_classify=0.9500, test_weighted_f1.classify=0.9400, ...` (numbers only)."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            parts.append(_metrics_text(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            parts.append(f"{prefix}{key}={value:.4f}")
    return ", ".join(part for part in parts if part)


def _event_text(event: dict[str, Any]) -> str:
    details = ", ".join(f"{key} {event[key]}" for key in ("replaced", "by", "to", "from") if event.get(key))
    return f"{event.get('event', '?')}" + (f" ({details})" if details else "") + f": {event.get('reason', '')}"

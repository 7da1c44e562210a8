"""The metric names the code really exports, read from its real registries, and the metric names a PromQL
expression uses: what tests/test_alert_rules.py and tests/test_dashboard.py compare, so an alert or a panel
on a misspelt or renamed metric (which would never fire, or stay empty) fails a test instead.

Names are those Prometheus stores: prometheus_client appends `_total` to counters, `_info` to info metrics and
`_bucket`/`_sum`/`_count` to histograms, and a labelled metric with no child yet has no sample, so each family
is expanded by its type rather than read off its current samples alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry

SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}

PROMETHEUS_SERIES = frozenset({
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
})
"""Series Prometheus itself writes for every target and alert."""


def registry_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def collector_names(collectors: Iterable[object]) -> set[str]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    return registry_names(registry)


def server_metric_names() -> set[str]:
    """What `shopclip serve` exports on its own (server/metrics.py)."""
    from shopclip.server.metrics import ServerMetrics

    return registry_names(ServerMetrics().registry)


def prediction_log_metric_names(tmp_dir: Path) -> set[str]:
    """What the prediction log adds to the server's registry: a real log on SQLite, its collectors()."""
    from shopclip.predlog.writer import open_prediction_log

    log = open_prediction_log(f"sqlite:///{tmp_dir / 'log.db'}", str(tmp_dir / "spill"))
    try:
        return collector_names(log.collectors())
    finally:
        log.close()


def monitor_metric_names() -> set[str]:
    """What `shopclip monitor` exports (shopclip.monitor.metrics): the registry of its metrics object."""
    from shopclip.monitor import metrics

    for name in ("MonitorMetrics", "Metrics"):
        cls = getattr(metrics, name, None)
        if isinstance(cls, type):
            return registry_names(cls().registry)
    for name in ("build_registry", "create_registry", "new_registry", "make_registry"):
        factory = getattr(metrics, name, None)
        if callable(factory):
            made = factory()
            return registry_names(getattr(made, "registry", made))
    for value in vars(metrics).values():
        if isinstance(value, CollectorRegistry):
            return registry_names(value)
    raise AssertionError("shopclip.monitor.metrics has no MonitorMetrics class, registry factory or registry: "
                         "update tests/support/metric_names.py to read its registry")


# --- PromQL ------------------------------------------------------------------------------------------------

KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                      "offset", "bool", "inf", "nan", "start", "end", "atan2"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z]+")
_IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names (in
    matchers or grouping clauses), durations, numbers, strings or Grafana variables. A `__name__` matcher is
    not followed (none of ours uses one)."""
    text = _GRAFANA_VARIABLE.sub(" 1 ", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if word.lower() in KEYWORDS or re.match(r"\s*\(", text[match.end():]):
            continue  # a keyword, or a function / aggregation call
        names.add(word)
    return names

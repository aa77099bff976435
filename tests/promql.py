"""The metric names a PromQL expression reads, for checking rules and dashboards against the
metric contract and a real scrape.

    >>> sorted(metric_names('sum by (le) (rate(servekit_request_seconds_bucket{code="5.."}[5m]))'))
    ['servekit_request_seconds_bucket']

Not a PromQL parser: a tokenizer that drops strings, label matchers, ranges, numbers,
durations, keywords and function calls, and keeps the bare names left (a histogram's
``x_bucket``, ``x_sum`` and ``x_count`` stay as written: a scrape has those names). A selector
without a name, ``{__name__="x"}``, counts as ``x``; a ``__name__=~`` regex names nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servekit.health.probe import Target
from servekit.health.verdict import evaluate_describe
from servekit.observe.collector import ExporterCollector, Watcher
from servekit.observe.snapshot import ModelView, Snapshot

KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)
# Keywords followed by a parenthesized list of label names, not of expressions.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
    | {"quantile", "count_values", "limitk", "limit_ratio"}
)
# Series Prometheus makes itself for every target: no scrape has them.
SYNTHETIC = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
    | {"scrape_samples_post_metric_relabeling", "scrape_series_added"}
)
# The metric contract of issue #14, as a scrape shows it (a histogram as its three series).
TORCHSERVE_METRICS = frozenset(
    {"ts_inference_requests_total", "ts_inference_latency_microseconds"}
    | {"ts_queue_latency_microseconds", "Requests2XX", "Requests4XX", "Requests5XX"}
    | {"CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization"}
    | {"DiskUsage", "DiskUtilization", "DiskAvailable"}
)
HANDLER_METRICS = frozenset(
    {f"servekit_request_seconds_{part}" for part in ("bucket", "sum", "count")}
    | {"servekit_responses_total", "ToolkitRequests", "ToolkitRequestErrors"}
    | {"ToolkitPreprocessTime", "ToolkitInferenceTime", "ToolkitPostprocessTime"}
)


def exporter_metric_names() -> frozenset[str]:
    """What ``servekit exporter`` serves, read off the exporter itself: its collector rendered
    for one described model with one worker (every family then has a sample)."""
    describe = [
        {
            "modelName": "m",
            "minWorkers": 1,
            "maxWorkers": 1,
            "workers": [{"id": "9000", "pid": 1, "status": "READY"}],
            "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0},
        }
    ]
    watcher = Watcher(Target())
    model = evaluate_describe("m", describe)
    watcher.snapshot = Snapshot(True, True, (ModelView(model, {"ready": 1}),))
    watcher.exits.update("m", {"9000": 1}, lambda model, pid: None)
    registry = CollectorRegistry()
    registry.register(ExporterCollector(watcher))
    text = generate_latest(registry).decode()
    return frozenset(
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    )


EXPORTER_METRICS = exporter_metric_names()
CONTRACT = TORCHSERVE_METRICS | HANDLER_METRICS | EXPORTER_METRICS
CLOSING = {"(": ")", "[": "]", "{": "}"}
_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z0-9]*)
    |(?P<variable>\$\{[^}]*\}|\$\w+)
    |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?:"([^"]*)"|'([^']*)')""")


class PromQLError(ValueError):
    """An expression this module cannot read: unbalanced brackets or an unclosed string."""


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` of each token but blanks; ``PromQLError`` for an unclosed string."""
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup or "other"
        if kind == "other" and match.group() in "\"'`":
            raise PromQLError(f"unclosed string at column {match.start() + 1} of {expr!r}")
        if kind != "space":
            yield kind, match.group()


def check_balanced(expr: str) -> None:
    """``PromQLError`` unless every (, [ and { closes in order (strings skipped)."""
    stack: list[str] = []
    for kind, text in tokens(expr):
        if kind != "other":
            continue
        if text in CLOSING:
            stack.append(CLOSING[text])
        elif text in CLOSING.values() and (not stack or stack.pop() != text):
            raise PromQLError(f"unbalanced {text!r} in {expr!r}")
    if stack:
        raise PromQLError(f"{''.join(reversed(stack))!r} missing at the end of {expr!r}")


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names ``expr`` selects."""
    check_balanced(expr)
    found: set[str] = set()
    items = list(tokens(expr))
    index = 0
    while index < len(items):
        kind, text = items[index]
        following = items[index + 1][1] if index + 1 < len(items) else ""
        if text in ("{", "["):
            end = _closing(items, index)
            if text == "{":
                inside = " ".join(t for _, t in items[index + 1 : end])
                found.update(a or b for a, b in _NAME_MATCHER.findall(inside))
            index = end
        elif kind == "name" and text.lower() in LABEL_LISTS and following == "(":
            index = _closing(items, index + 1)
        elif kind == "name" and _is_metric(text, following):
            found.add(text)
        index += 1
    return found


def _is_metric(name: str, following: str) -> bool:
    if following == "(" or name.lower() in KEYWORDS:
        return False  # a function call, an aggregation or a keyword
    return not (name.lower() in AGGREGATIONS and following.lower() in ("by", "without"))


def _closing(items: list[tuple[str, str]], start: int) -> int:
    """Index of the token closing the bracket at ``start``."""
    depth = 0
    for index in range(start, len(items)):
        kind, text = items[index]
        if kind == "other" and text in CLOSING:
            depth += 1
        elif kind == "other" and text in CLOSING.values():
            depth -= 1
            if depth == 0:
                return index
    raise PromQLError("unbalanced brackets")  # check_balanced ran first: not reached


# --- where expressions live ----------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a Grafana dashboard, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def template_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(variable, selector)`` of each ``label_values(selector, label)`` query variable."""
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text, re.DOTALL)
        if match is None:
            raise PromQLError(f"variable {variable.get('name')!r}: not label_values(...): {text!r}")
        yield variable["name"], match.group(1)


def dashboard_exprs(path: Path) -> list[str]:
    """Every target's ``expr`` in the dashboard at ``path``, then each query variable's
    ``label_values`` selector (a PromQL selector too: its metric must exist)."""
    dashboard = json.loads(path.read_text())
    exprs = [
        str(target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    return exprs + [selector for _, selector in template_queries(dashboard)]


def rules(path: Path) -> Iterator[dict[str, Any]]:
    """Every rule (recording and alerting) of a Prometheus rule file."""
    document = yaml.safe_load(path.read_text())
    for group in document["groups"]:
        yield from group["rules"]


def rule_exprs(path: Path) -> list[str]:
    """The ``expr`` of every rule in the rule file at ``path``."""
    return [str(rule["expr"]) for rule in rules(path)]


def recorded_names(path: Path) -> set[str]:
    """The names the rule file's recording rules define."""
    return {str(rule["record"]) for rule in rules(path) if "record" in rule}


def unknown_names(exprs: Iterable[str], scraped: set[str], rules_path: Path) -> set[str]:
    """Names ``exprs`` read that are neither in ``scraped`` (metric names of real scrapes)
    nor recorded by a rule of ``rules_path`` nor made by Prometheus itself (``up``, ...)."""
    known = scraped | recorded_names(rules_path) | SYNTHETIC
    return {name for expr in exprs for name in metric_names(expr)} - known

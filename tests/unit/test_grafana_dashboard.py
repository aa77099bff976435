"""deploy/grafana/torchserve-kit.json: a sane Grafana dashboard whose every query reads names
of the metric contract or of deploy/prometheus/rules.yml; and tests/promql.py, the helper that
reads those names (the e2e test checks them against a real scrape with it)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from tests.promql import (
    CONTRACT,
    PromQLError,
    check_balanced,
    dashboard_exprs,
    metric_names,
    panels,
    recorded_names,
    rule_exprs,
    template_queries,
    unknown_names,
)

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "torchserve-kit.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
GRID_WIDTH = 24
# What the dashboard must show (issue #14), as metric names some panel reads.
SHOWN = {
    "request rate": {"model_name:servekit_responses:rate5m"},
    "latency quantiles": {
        f"model_name:servekit_request_seconds:{q}_5m" for q in ("p50", "p95", "p99")
    },
    "errors by status code": {"servekit_responses_total", "Requests5XX"},
    "job queue depth": {"servekit_model_pending_requests", "servekit_model_queue_remaining"},
    "READY vs minWorkers": {"servekit_model_workers_ready", "servekit_model_min_workers"},
    "handler status": {"servekit_handler_workers"},
    "restarts and recycles": {"servekit_worker_restarts_total", "servekit_worker_recycles_total"},
}


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


# --- tests/promql.py -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="torchserve"} == 0', {"up"}),
        (
            "histogram_quantile(0.95, sum by (model_name, le) "
            "(rate(servekit_request_seconds_bucket[5m])))",
            {"servekit_request_seconds_bucket"},
        ),
        ("rate(x_sum[5m]) / rate(x_count[5m])", {"x_sum", "x_count"}),
        ("sum(rate(a[5m] offset 1h)) without (instance, pod)", {"a"}),
        ("a / on (model_name) group_left (status) b", {"a", "b"}),
        ("a > bool 0.5 and b or c unless d", {"a", "b", "c", "d"}),
        ("a atan2 b", {"a", "b"}),
        ('sum by (le) (rate(m{code=~"5..",model_name=~"$model_name"}[$__rate_interval]))', {"m"}),
        ('label_replace(a, "dst", "$1", "src", "(sum|by)")', {"a"}),
        ('count_values("version", build_info)', {"build_info"}),
        ("topk(5, a) * on () group_right () b", {"a", "b"}),
        ("max_over_time(deriv(a[10m])[1h:5m])", {"a"}),
        ("a offset -5m @ 1609746000", {"a"}),
        ("1e3 * a + Inf - NaN + 0x1F", {"a"}),
        (
            "model_name:servekit_request_seconds:p95_5m > 0.5",
            {"model_name:servekit_request_seconds:p95_5m"},
        ),
        ('{__name__="a", job="x"} + {__name__=~"b.*"}', {"a"}),
        ("SUM BY (le) (a)", {"a"}),
        ("absent(up{job='x'})", {"up"}),
        ("vector(1)", set()),
        ("time() - 3", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ["sum(a", "a[5m", 'a{b="c"', "(a))", "a[5m)", 'a{b="c}', "a}"])
def test_unbalanced_or_unclosed_is_an_error(expr: str) -> None:
    with pytest.raises(PromQLError):
        metric_names(expr)


def test_balanced_ignores_brackets_in_strings() -> None:
    check_balanced('a{b="(", c="]"}')


def test_unknown_names(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: g\n  rules:\n  - record: r:a:rate5m\n    expr: rate(a[5m])\n"
    )
    exprs = ["r:a:rate5m + a", "b / up", "absent(c)"]
    assert unknown_names(exprs, {"a"}, rules) == {"b", "c"}
    assert unknown_names(exprs, {"a", "b", "c"}, rules) == set()


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_is_json_with_unique_panel_ids() -> None:
    ids = [panel["id"] for panel in panels(dashboard())]
    assert ids and len(ids) == len(set(ids))
    assert dashboard()["uid"] and dashboard()["title"]


@pytest.mark.parametrize("panel", list(panels(dashboard())), ids=lambda panel: panel["title"])
def test_panel_has_datasource_and_queries(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert panel["targets"]
    ref_ids = [target["refId"] for target in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids))
    for target in panel["targets"]:
        assert target["expr"].strip(), f"{panel['title']}: empty expr"
        assert target["datasource"] == panel["datasource"]


@pytest.mark.parametrize("panel", list(panels(dashboard())), ids=lambda panel: panel["title"])
def test_panel_grid_position(panel: dict[str, Any]) -> None:
    grid = panel["gridPos"]
    assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h"))
    assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] >= 1 and grid["h"] >= 1
    assert grid["x"] + grid["w"] <= GRID_WIDTH


def test_panels_do_not_overlap() -> None:
    def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
        g = panel["gridPos"]
        return {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }

    for first, second in combinations(panels(dashboard()), 2):
        assert not cells(first) & cells(second), (first["title"], second["title"])


@pytest.mark.parametrize("expr", dashboard_exprs(DASHBOARD))
def test_every_expr_reads_a_metric(expr: str) -> None:
    assert metric_names(expr), expr


def test_model_name_variable_comes_from_the_exporter() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dict(template_queries(dashboard())) == {"model_name": "servekit_model_workers"}
    assert variables["model_name"]["query"]["query"].endswith(", model_name)")
    assert variables["model_name"]["includeAll"] and variables["model_name"]["multi"]


def test_model_panels_filter_on_the_variable() -> None:
    targets = [target for panel in panels(dashboard()) for target in panel["targets"]]
    for expr in (target["expr"] for target in targets):
        names = metric_names(expr)
        per_model = any(n.startswith(("servekit_", "model_name:", "ts_")) for n in names)
        if per_model:
            assert 'model_name=~"$model_name"' in expr, expr


def test_dashboard_reads_only_the_contract_and_recorded_names() -> None:
    assert unknown_names(dashboard_exprs(DASHBOARD), set(CONTRACT), RULES) == set()


def test_recorded_names_in_the_dashboard_are_defined_in_rules() -> None:
    read = {name for expr in dashboard_exprs(DASHBOARD) for name in metric_names(expr)}
    recorded_form = {name for name in read if ":" in name}
    assert recorded_form and recorded_form <= recorded_names(RULES)


@pytest.mark.parametrize("what", sorted(SHOWN))
def test_dashboard_shows(what: str) -> None:
    read = {name for expr in dashboard_exprs(DASHBOARD) for name in metric_names(expr)}
    assert SHOWN[what] <= read, what


def test_rule_exprs_reads_every_rule() -> None:
    assert len(rule_exprs(RULES)) == len(recorded_names(RULES)) + sum(
        1 for line in RULES.read_text().splitlines() if line.strip().startswith("- alert:")
    )

"""deploy/prometheus: the rules and the example config pass promtool's checks, the rules' own
unit tests (rules.test.yml) pass, every alert is labelled and explained and has a test there,
and every name the rules read is in the metric contract or recorded by a rule."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql import CONTRACT, SYNTHETIC, recorded_names, rule_exprs, rules, unknown_names

ROOT = Path(__file__).resolve().parent.parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
RULES_TEST = PROMETHEUS / "rules.test.yml"
GENERATOR = ROOT / "scripts" / "prometheusrule.py"
CONFIG = PROMETHEUS / "prometheus.yml"
SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> str:
    """promtool's output for ``args`` (run in deploy/prometheus); fails the test on exit != 0."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on PATH: run `make prometheus` (Debian's prometheus package)")
    done = subprocess.run(
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def alerts() -> list[dict[str, object]]:
    return [rule for rule in rules(RULES) if "alert" in rule]


def test_promtool_check_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_promtool_check_config() -> None:
    assert "SUCCESS" in promtool("check", "config", CONFIG.name)


def test_promtool_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULES_TEST.name)


def test_config_scrapes_the_contract_jobs_and_loads_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert jobs == {
        "torchserve": [{"targets": ["127.0.0.1:8082"]}],
        "servekit-exporter": [{"targets": ["127.0.0.1:8083"]}],
    }


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: str(rule["alert"]))
def test_alert_has_severity_summary_and_description(alert: dict[str, object]) -> None:
    labels, annotations = alert["labels"], alert["annotations"]
    assert isinstance(labels, dict) and isinstance(annotations, dict)
    assert labels["severity"] in SEVERITIES
    assert annotations["summary"] and annotations["description"]
    # every alert about a model names it
    if "model_name" in str(alert["expr"]) or "servekit_model" in str(alert["expr"]):
        assert "$labels.model_name" in annotations["summary"]


def test_every_alert_fires_and_stays_quiet_in_rules_test() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    names = {str(rule["alert"]) for rule in alerts()}
    assert cases.keys() == names
    for name, fired in cases.items():
        assert True in fired and False in fired, f"{name}: needs a firing and a quiet case"


def test_every_recording_rule_is_checked_for_its_value() -> None:
    tested = {
        case["expr"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("promql_expr_test", [])
    }
    assert recorded_names(RULES) <= tested


def test_rules_read_only_contract_metrics_and_recorded_names() -> None:
    assert unknown_names(rule_exprs(RULES), set(CONTRACT), RULES) == set()


def test_alert_names_and_records_are_unique() -> None:
    names = [str(rule.get("alert") or rule.get("record")) for rule in rules(RULES)]
    assert len(names) == len(set(names))
    assert not recorded_names(RULES) & (CONTRACT | SYNTHETIC)


def test_the_latency_objective_is_one_documented_number() -> None:
    (objective,) = [
        r for r in rules(RULES) if r.get("record") == "servekit:request_seconds:p95_objective"
    ]
    assert objective["expr"] == "vector(0.5)"
    readers = [
        r for r in rules(RULES) if "servekit:request_seconds:p95_objective" in str(r["expr"])
    ]
    assert [r.get("alert") for r in readers] == ["ServekitLatencyP95High"]
    assert "0.5" not in str(readers[0]["expr"])
    assert "servekit:request_seconds:p95_objective" in (ROOT / "docs/observability.md").read_text()


def test_the_prometheus_rule_resource_is_rules_yml_as_generated() -> None:
    """deploy/k8s/prometheusrule.yaml (what the Prometheus Operator loads) wraps rules.yml's
    groups unchanged: regenerate it with `make prometheusrule` after editing rules.yml."""
    spec = importlib.util.spec_from_file_location("prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    committed = (ROOT / "deploy" / "k8s" / "prometheusrule.yaml").read_text()
    assert committed == generator.render(RULES), "stale: run `make prometheusrule`"
    resource = yaml.safe_load(committed)
    assert (resource["apiVersion"], resource["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]

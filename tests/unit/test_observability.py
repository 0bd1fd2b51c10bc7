"""deploy/prometheus and deploy/grafana: the metric contract (metrics.yml), the alert rules and the dashboard.

promtool (Prometheus's own checker) validates the configuration, the rules and every dashboard query, and
runs the rules' unit tests (alerts.test.yml). Without promtool the structural checks still run.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import services
import shared
from tests.devtools import executable

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "imagepipe.json"
REQUIRED_ALERTS = {
    "ImagepipeParkedMessagesGrowing",
    "ImagepipeBacklogStuck",
    "ImagepipeHighFailureRatio",
    "ImagepipeServiceDown",
}
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

Doc = dict[str, Any]


@functools.cache
def _contract() -> Doc:
    contract: Doc = yaml.safe_load((PROMETHEUS / "metrics.yml").read_text())
    return contract


def _families() -> dict[str, Doc]:
    contract = _contract()
    return {m["name"]: m for m in [*contract["metrics"], *contract["external"]]}


def _rules() -> list[Doc]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> Doc:
    dashboard: Doc = json.loads(DASHBOARD.read_text())
    return dashboard


def _dashboard_queries() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _queries() -> list[str]:
    return [rule["expr"] for rule in _rules()] + _dashboard_queries()


def _promtool() -> Path:
    return executable("promtool", "`make devtools` extracts it from Debian's prometheus package")


def _run_promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    proc = subprocess.run([str(_promtool()), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


# --- the contract -------------------------------------------------------------------------------------------
def test_every_metric_in_the_contract_follows_prometheus_naming() -> None:
    for metric in _contract()["metrics"]:
        name, kind = metric["name"], metric["type"]
        assert re.fullmatch(r"imagepipe_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert kind in ("counter", "gauge", "histogram"), name
        assert name.endswith("_total") == (kind == "counter"), f"{name}: only counters end in _total"
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms here measure time, in seconds"
            assert metric["buckets"] == sorted(set(metric["buckets"])), name
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in metric["labels"]), name
        assert not {"le", "quantile", *TARGET_LABELS} & set(metric["labels"]), f"{name}: reserved label"
        assert metric["help"] and metric["service"] in ("upload", "compressor", "status", "notifier", "bus")


def _import_every_module() -> None:
    for package in (services, shared):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)


def test_the_metrics_exported_today_are_the_contracts() -> None:
    """`exported: true` must be true; the second part of issue 14 flips the others as it adds them."""
    _import_every_module()
    registered = {metric.name: metric.type for metric in REGISTRY.collect()}
    known = set()
    for metric in _contract()["metrics"]:
        family = metric["name"].removesuffix("_total") if metric["type"] == "counter" else metric["name"]
        old = metric.get("exported_as", "").removesuffix("_total")
        known |= {family, old}
        if metric["exported"]:
            assert registered.get(family) == metric["type"], (
                f"{metric['name']} is not exported as a {metric['type']}"
            )
        else:
            assert family not in registered, f"{metric['name']} is exported now: set `exported: true`"
            assert not old or registered.get(old) == metric["type"], f"{old} is not exported any more"
    strays = {name for name in registered if name.startswith("imagepipe_")} - known
    assert not strays, "exported but not in deploy/prometheus/metrics.yml"


def _metric_references(query: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched on it) for every metric a PromQL query reads."""
    for match in re.finditer(r"\b((?:imagepipe|rabbitmq)_[a-z0-9_]+|up)\b(\{[^}]*\})?", query):
        matchers = match.group(2) or ""
        yield match.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))


def _family_of(name: str, families: dict[str, Doc]) -> Doc | None:
    if name in families:
        return families[name]
    for suffix in HISTOGRAM_SERIES:
        family = families.get(name.removesuffix(suffix))
        if name.endswith(suffix) and family is not None and family["type"] == "histogram":
            return family
    return None


def test_alerts_and_dashboard_read_only_metrics_and_labels_of_the_contract() -> None:
    families = _families()
    for query in _queries():
        for name, matched in _metric_references(query):
            family = _family_of(name, families)
            assert family is not None, f"{name} is not in deploy/prometheus/metrics.yml (in: {query})"
            allowed = set(family["labels"]) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            assert matched <= allowed, f"{name} has no label {matched - allowed} (in: {query})"


def test_the_dashboard_shows_every_metric_of_the_contract() -> None:
    shown = {
        name
        for query in _dashboard_queries()
        for reference, _ in _metric_references(query)
        if (family := _family_of(reference, _families())) is not None
        for name in [family["name"]]
    }
    assert {m["name"] for m in _contract()["metrics"]} - shown == set()


# --- alert rules --------------------------------------------------------------------------------------------
def test_alert_rules_have_a_severity_summary_and_description() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["alert"].startswith("Imagepipe") and rule["expr"].strip()
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in _rules()} - tested == set(), (
        "alerts never shown firing in alerts.test.yml"
    )


def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    _run_promtool("check", "config", "prometheus.yml")
    _run_promtool("check", "rules", "alerts.yml")


def test_alert_rules_pass_their_unit_tests() -> None:
    _run_promtool("test", "rules", "alerts.test.yml")


# --- the dashboard ------------------------------------------------------------------------------------------
def test_dashboard_panels_are_placed_and_read_the_chosen_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Grafana's $__rate_interval becomes a literal range; each query is then checked as a recording rule.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": query.replace("$__rate_interval", "5m")}
        for n, query in enumerate(_dashboard_queries())
    ]
    (tmp_path / "dashboard.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _run_promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)


@pytest.mark.parametrize("broken", ["sum(rate(imagepipe_compressor_images_total[5m])", "up{job=}"])
def test_promtool_rejects_a_broken_query(tmp_path: Path, broken: str) -> None:
    (tmp_path / "r.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": broken}]}]})
    )
    with pytest.raises(AssertionError, match="promtool check rules"):
        _run_promtool("check", "rules", "r.yml", cwd=tmp_path)

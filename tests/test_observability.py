"""Alerts and dashboard, checked offline against what the service exports.

- deploy/k8s/base/prometheusrule.yaml: its `spec` passes `promtool check rules`, and
  `promtool test rules` with deploy/prometheus/alerts_test.yaml, where every alert both fires
  and stays quiet; every alert has a severity, a summary and a description with a runbook.
- deploy/grafana/print-service.json: a Grafana dashboard with a uid, unique panel ids, no
  overlapping panels, an expression in every target, all on the `${datasource}` variable;
  packed as a ConfigMap for Grafana's sidecar by deploy/grafana/kustomization.yaml.
- Every PromQL expression of both (and of the dashboard's variables) names only metrics the
  service exports, with label names those metrics have (or that Prometheus adds to every
  target), and label values the service uses where it has a fixed set of them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from service.app import Service
from service.config import Settings
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULE_FILE = ROOT / "deploy/k8s/base/prometheusrule.yaml"
RULE_TESTS = ROOT / "deploy/prometheus/alerts_test.yaml"
DASHBOARD = ROOT / "deploy/grafana/print-service.json"
GRAFANA_KUSTOMIZATION = ROOT / "deploy/grafana/kustomization.yaml"
K8S_BASE = ROOT / "deploy/k8s/base"

# What Prometheus (with the Operator's ServiceMonitor) adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint"})
# The series Prometheus writes itself for every target.
SCRAPE_SERIES = {"up": TARGET_LABELS}
SEVERITIES = {"critical", "warning", "info"}
NO_PROMTOOL = (
    "promtool is not installed: it comes with Debian's prometheus package "
    "(`apt-get install --no-install-recommends prometheus`, as .ci/run step 1 does)"
)


# --- what the service exports ------------------------------------------------------------


def exported() -> dict[str, frozenset[str]]:
    """Every sample name a fresh registry of the service holds, with its label names. A
    labelled metric has no sample before its first child exists, so each gets one."""
    metrics = Metrics(CollectorRegistry())
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            # prometheus_client says which labels a metric takes only through its children.
            names = wrapper._labelnames
            if names:
                wrapper.labels(*("x" for _ in names))
    samples: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in samples.items()}


@pytest.fixture(scope="module")
def service_registry(tmp_path_factory: pytest.TempPathFactory) -> CollectorRegistry:
    """The registry of a Service wired as `print-service run` wires it (not started)."""
    path = tmp_path_factory.mktemp("store") / "jobs.db"
    settings = Settings(auth_disabled=True, database_url=f"sqlite:///{path}")
    registry = CollectorRegistry()
    Service(settings, queues=settings.queue_map(), registry=registry)
    return registry


def known_values(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Label values the service has from its start: a fixed set (brokers, readiness checks,
    dead-letter sources), which an expression must spell as the service does."""
    values: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    return {label: values[label] for label in ("broker", "check", "source")}


def test_the_service_exports_readiness_and_lease_losses(service_registry):
    text = generate_latest(service_registry).decode()
    # Not connected yet, the store open: /readyz's checks, one series each.
    for line in (
        'print_ready{check="mqtt"} 0.0',
        'print_ready{check="amqp"} 0.0',
        'print_ready{check="store"} 1.0',
        'print_ready{check="outbox"} 1.0',
        'print_ready{check="accepting"} 1.0',
        'print_broker_connected{broker="mqtt"} 0.0',
        'print_broker_connected{broker="amqp"} 0.0',
        'print_dead_letters_total{source="command"} 0.0',
        'print_dead_letters_total{source="event"} 0.0',
        "print_lease_losses_total 0.0",
    ):
        assert line in text.splitlines(), line


# --- a small PromQL reader -----------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_TOKEN = re.compile(
    r"(?P<matchers>\{[^}]*\})"
    r"|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<other>\S)"
)
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(\"(?:\\.|[^\"\\])*\")")
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _AGGREGATIONS | _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2"}
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|__\w+|\w+)")


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]]  # (label, operator, value)


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # by/without/on/ignoring labels


def read_promql(expr: str) -> Query:
    """The metric selectors and grouping labels of a PromQL expression: enough to check
    names, not a parser (functions are what an identifier followed by `(` is)."""
    # Grafana's variables: in strings they stay (a value), in ranges they go with the range.
    text = _GRAFANA_VARIABLE.sub("5m", expr)
    strings: list[str] = []

    def keep(match: re.Match[str]) -> str:
        strings.append(match.group(0))
        return f'"{len(strings) - 1}"'

    text = _RANGE.sub("", _STRING.sub(keep, text))
    tokens = [(m.lastgroup, m.group(0)) for m in _TOKEN.finditer(text)]
    query = Query()
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and value in _LABEL_LISTS and following == "(":
            end = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
            query.grouping |= {v for k, v in tokens[i + 2 : end] if k == "ident"}
            i = end + 1
            continue
        if kind == "ident" and value not in _KEYWORDS and following != "(":
            matchers = []
            if tokens[i + 1 : i + 2] and tokens[i + 1][0] == "matchers":
                for label, op, quoted in _MATCHER.findall(following):
                    literal = strings[int(quoted.strip('"'))]
                    matchers.append((label, op, literal[1:-1]))
                i += 1
            query.selectors.append(Selector(value, matchers))
        i += 1
    return query


def problems_of(
    expr: str, metrics: dict[str, frozenset[str]], values: dict[str, set[str]]
) -> list[str]:
    """What in `expr` the service does not export; empty when all of it is."""
    query = read_promql(expr)
    found: list[str] = []
    if not query.selectors:
        found.append("no metric")
    labels_here: set[str] = set()
    for selector in query.selectors:
        known = metrics.get(selector.metric)
        if known is None:
            found.append(f"metric {selector.metric} is not exported")
            continue
        labels = known | TARGET_LABELS
        labels_here |= labels
        for label, op, value in selector.matchers:
            if label not in labels:
                found.append(f"{selector.metric} has no label {label}")
            elif op == "=" and label in values and value not in values[label]:
                found.append(f'{selector.metric}{{{label}="{value}"}}: not {sorted(values[label])}')
    found.extend(
        f"grouping by {label}, which none of its metrics has"
        for label in sorted(query.grouping - labels_here)
        if labels_here
    )
    return found


def test_the_promql_reader_finds_what_is_wrong():
    metrics = {**exported(), **SCRAPE_SERIES}
    values = {"broker": {"mqtt", "amqp"}}
    good = (
        "histogram_quantile(0.95, sum by (le, status) (rate("
        'print_command_to_event_seconds_bucket{namespace="$namespace", pod=~"$pod"}'
        "[$__rate_interval]))) / on (namespace) group_left max(print_outbox_depth offset 5m)"
        " > 1e3"
    )
    assert problems_of(good, metrics, values) == []
    assert [s.metric for s in read_promql(good).selectors] == [
        "print_command_to_event_seconds_bucket",
        "print_outbox_depth",
    ]
    assert problems_of("sum(rate(print_command_received_total[5m]))", metrics, values) == [
        "metric print_command_received_total is not exported"
    ]
    assert problems_of('print_outbox_depth{queue="q"} > 0', metrics, values) == [
        "print_outbox_depth has no label queue"
    ]
    assert problems_of("sum by (reason) (print_jobs)", metrics, values) == [
        "grouping by reason, which none of its metrics has"
    ]
    assert problems_of('print_broker_connected{broker="amqp "} == 0', metrics, values) == [
        "print_broker_connected{broker=\"amqp \"}: not ['amqp', 'mqtt']"
    ]
    # A label value with a brace or a metric-like word in it is a value, not a selector.
    assert [s.metric for s in read_promql('up{job="a}b sum(x)"}').selectors] == ["up"]


# --- the alerts ----------------------------------------------------------------------------


def load_rule() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULE_FILE.read_text(encoding="utf-8"))
    return document


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_rule()["spec"]["groups"] for rule in group["rules"]]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, NO_PROMTOOL
    return path


def test_the_prometheusrule_is_part_of_the_base():
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert RULE_FILE.name in kustomization["resources"]
    rule = load_rule()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")


def test_every_alert_is_named_labelled_and_annotated():
    names = [rule.get("alert") for rule in alerts()]
    assert all(names), "only alerts, no recording rules (their names would need checking)"
    assert len(set(names)) == len(names)
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"Print(?:[A-Z][a-z]+)+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert "Runbook" in rule["annotations"]["description"], name
    expected = {
        "PrintServiceDown",
        "PrintBrokerDisconnected",
        "PrintStoreNotReady",
        "PrintOutboxDepthHigh",
        "PrintOutboxOldestAgeHigh",
        "PrintRejectionRateHigh",
        "PrintDeadLetters",
        "PrintLeaseLost",
    }
    assert set(names) == expected


def test_the_up_alert_uses_the_servicemonitors_job_label():
    # The Operator names the job after the Service unless the ServiceMonitor sets jobLabel.
    monitor = yaml.safe_load((K8S_BASE / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((K8S_BASE / "service.yaml").read_text())
    assert "jobLabel" not in monitor["spec"]
    jobs = {
        value
        for expr in expressions()
        for selector in read_promql(expr).selectors
        for label, _, value in selector.matchers
        if label == "job"
    }
    assert jobs == {service["metadata"]["name"]}


def test_promtool_accepts_the_rules(tmp_path):
    rules = tmp_path / "print-service.rules.yaml"
    rules.write_text(yaml.safe_dump(load_rule()["spec"]))
    result = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_make_every_alert_fire_and_stay_quiet(tmp_path):
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["print-service.rules.yaml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert fires == names, f"alerts no test makes fire: {names - fires}"
    assert quiet == names, f"alerts no test expects quiet: {names - quiet}"

    # Summaries only: the tests compare an alert's labels and summary (see the test file).
    spec = load_rule()["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    (tmp_path / "print-service.rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- the dashboard -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return model


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def test_the_dashboard_is_a_grafana_model_on_a_datasource_variable():
    model = dashboard()
    assert model["uid"] == "print-service"
    assert model["title"]
    assert isinstance(model["schemaVersion"], int)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    on_variable = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [panel for panel in panels() if panel["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["datasource"] == on_variable, where
        assert panel["targets"], where
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == on_variable, where
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == on_variable, variable["name"]


def test_the_dashboards_panels_fit_the_grid_without_overlapping():
    cells: dict[tuple[int, int], int] = {}
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["id"])
                assert other == panel["id"], f"panels {other} and {panel['id']} overlap"


def test_the_dashboard_shows_what_operators_asked_for():
    shown = " ".join(t["expr"] for p in panels() for t in p.get("targets", []))
    for metric in (
        "print_commands_received_total",
        "print_rejections_total",
        "print_events_published_total",
        "print_outbox_depth",
        "print_outbox_oldest_unsent_age_seconds",
        "print_jobs{",
        "print_ready",
        "print_broker_connected",
        "print_command_to_event_seconds_bucket",
        "print_dead_letters_total",
        "print_lease_losses_total",
    ):
        assert metric in shown, metric


def test_the_dashboard_configmap_is_for_grafanas_sidecar():
    kustomization = yaml.safe_load(GRAFANA_KUSTOMIZATION.read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == [DASHBOARD.name]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert generator["options"]["disableNameSuffixHash"] is True
    # kubectl apply keeps the whole object in an annotation of at most 256 KiB.
    assert DASHBOARD.stat().st_size < 200_000


# --- every expression against the service ----------------------------------------------


def expressions() -> list[str]:
    """Every PromQL expression: the alerts', the panels' and the variables' metric parts."""
    found = [str(rule["expr"]) for rule in alerts()]
    found += [t["expr"] for p in panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match, variable["name"]
            found.append(f"group by ({match.group(2)}) ({match.group(1)})")
    return found


def test_every_expression_uses_what_the_service_exports(service_registry):
    metrics = {**exported(), **SCRAPE_SERIES}
    values = known_values(service_registry)
    assert values["check"] == {"mqtt", "amqp", "store", "outbox", "accepting"}
    problems = {
        expr: found for expr in expressions() if (found := problems_of(expr, metrics, values))
    }
    assert problems == {}
    used = {s.metric for expr in expressions() for s in read_promql(expr).selectors}
    assert len(used) >= 20  # the reader found the metrics, not nothing


def test_the_readme_names_every_metric_the_service_exports():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    derived = ("_created", "_bucket", "_sum", "_count")
    names = {
        re.sub(r"_(?:bucket|sum|count)$", "", name)
        for name in exported()
        if name.startswith("print_") and not name.endswith("_created")
    }
    assert {"print_command_to_event_seconds", "print_ready"} <= names
    assert not [name for name in names if name.endswith(derived)]
    assert [name for name in sorted(names) if f"`{name}" not in readme] == []

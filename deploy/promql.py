"""PromQL of the alerts and dashboards: extract it, parse it with promtool, name its metrics.

Parsing: every expression becomes a recording rule in a temporary rules file and `promtool check
rules` parses it (promtool has no "parse one expression" command). Metric names: a small tokenizer
drops strings, label matchers, ranges and label lists, then keeps the identifiers that are neither
functions, aggregations nor keywords; they are checked against deploy/metrics.yaml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
RULE_FILE = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
DASHBOARDS = DEPLOY / "grafana"
REGISTRY = DEPLOY / "metrics.yaml"

# Grafana's variables, replaced by a value of the right kind before parsing.
_GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${__range}": "1h"}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan", "atan2", "start", "end",
}
_SUFFIXES = {"counter": ("", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count", "_created")}


def promtool() -> str | None:
    return shutil.which("promtool")


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULE_FILE.read_text())["spec"]["groups"]


def _grafana_query(target: dict[str, Any]) -> str | None:
    return target.get("expr") if isinstance(target, dict) else None


def _substitute(expr: str) -> str:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Any other dashboard variable stands for a regex of label values.
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and every `label_values` variable of a dashboard."""
    board = json.loads(path.read_text())
    found: list[tuple[str, str]] = []
    for panel in board.get("panels", []):
        for target in panel.get("targets", []):
            expr = _grafana_query(target)
            if expr:
                found.append((f"{path.name}: {panel.get('title')} {target.get('refId')}", _substitute(expr)))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query or "")
        if var.get("type") == "query" and match:
            found.append((f"{path.name}: variable {var.get('name')}", _substitute(match.group(1))))
    return found


def all_expressions() -> list[tuple[str, str]]:
    found = [(f"{RULE_FILE.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
             for group in rule_groups() for rule in group["rules"]]
    for path in sorted(DASHBOARDS.glob("*.json")):
        found += dashboard_expressions(path)
    return found


def _run(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def parse_errors(expressions: list[tuple[str, str]]) -> list[str]:
    """Expressions promtool cannot parse, each named by where it came from."""
    tool = promtool()
    assert tool, "promtool is missing"
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        # One file per expression, so each error is tied to its source; promtool takes them all at once.
        files = []
        for n, (_, expr) in enumerate(expressions):
            path = Path(tmp) / f"expr{n}.yaml"
            rules = {"groups": [{"name": f"expr{n}", "rules": [{"record": "check:expr", "expr": expr}]}]}
            path.write_text(yaml.safe_dump(rules))
            files.append(path.name)
        code, out = _run([tool, "check", "rules", *files], Path(tmp))
        if code:
            # promtool prefixes each error with its file name.
            errors = [f"{where}: cannot parse {expr!r}" for n, (where, expr) in enumerate(expressions)
                      if f"expr{n}.yaml:" in out]
            errors = errors or [f"promtool check rules failed:\n{out}"]
    return errors


def rule_test_errors() -> list[str]:
    """`promtool test rules` on the PrometheusRule's spec and deploy/prometheus/tests/*.test.yaml."""
    tool = promtool()
    assert tool, "promtool is missing"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "botburrow.rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
        tests = []
        for test in sorted(RULE_TESTS.glob("*.test.yaml")):
            shutil.copy(test, tmp)
            tests.append(test.name)
        if not tests:
            return ["no promtool tests in deploy/prometheus/tests"]
        code, out = _run([tool, "test", "rules", *tests], Path(tmp))
    return [f"promtool test rules failed:\n{out}"] if code else []


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or label names)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():]
        if word.lower() in _KEYWORDS or rest.lstrip().startswith("("):
            continue
        if re.match(r"\d", text[max(match.start() - 1, 0)]) and match.start() > 0:
            continue  # a unit of a number or duration, e.g. the "m" of 5m
        names.add(word)
    return names


def known_metrics() -> set[str]:
    registry = yaml.safe_load(REGISTRY.read_text())
    names = set(registry["prometheus"]) | set(registry["nats_exporter"])
    for name, info in registry["botburrow"].items():
        names |= {name + suffix for suffix in _SUFFIXES[info["type"]]}
    return names


def unknown_metric_errors(expressions: list[tuple[str, str]]) -> list[str]:
    known = known_metrics()
    return [f"{where}: {name} is not in deploy/metrics.yaml"
            for where, expr in expressions for name in sorted(metric_names(expr) - known)]

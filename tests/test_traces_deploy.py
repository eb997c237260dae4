"""Traces in deploy/ (issue 21): the Tempo datasource, the traces dashboard (its TraceQL names only
attributes the exporter sets), the pipeline dashboard's link to it, the OTLP egress."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from botburrow import tracing
from botburrow.tracing import SpanRef
from services.metrics.spans import build
from tests.test_traces_context import _run

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TRACES = DEPLOY / "grafana" / "botburrow-traces.json"


def _queries(board: dict[str, Any]) -> list[str]:
    return [t["query"] for p in board["panels"] for t in p.get("targets", []) if t.get("queryType") == "traceql"]


def test_the_traces_dashboard_reads_tempo_and_names_only_attributes_the_exporter_sets() -> None:
    board = json.loads(TRACES.read_text())
    assert board["uid"] == "botburrow-traces"
    assert any(p["title"] == "Slow or costly activations" for p in board["panels"])
    assert all(p["datasource"] == {"type": "tempo", "uid": "${tempo}"} for p in board["panels"])
    sink = tracing.Sink("metrics", "http://127.0.0.1:9", capture_content=False, batch=False)
    ending, events = _run("text")
    spans = build(sink, SpanRef("1" * 32, "2" * 16), ending, events, parent=None, links=[])
    produced = {key for span in spans for key in span.attributes} | set(spans[0].resource.attributes)
    queries = _queries(board)
    assert queries
    named = {m for q in queries for m in re.findall(r"\b(?:span|resource)\.([a-z_][\w.]*)", q)}
    assert named and named <= produced, sorted(named - produced)
    assert all(q.count("{") == q.count("}") for q in queries)


def test_the_pipeline_dashboard_links_to_the_traces_and_tempo_is_provisioned() -> None:
    pipeline = json.loads((DEPLOY / "grafana" / "botburrow-pipeline.json").read_text())
    assert any(link["url"].startswith("/d/botburrow-traces") for link in pipeline["links"])
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "tempo-datasource.yaml").read_text())
    (tempo,) = source["datasources"]
    assert tempo["type"] == "tempo" and tempo["uid"] == "botburrow-tempo"


def test_the_stages_that_send_spans_may_reach_the_otlp_receiver() -> None:
    policies = list(yaml.safe_load_all((DEPLOY / "k8s" / "base" / "networkpolicies.yaml").read_text()))
    (otlp,) = [p for p in policies if p["metadata"]["name"] == "allow-otlp-traces"]
    components = otlp["spec"]["podSelector"]["matchExpressions"][1]["values"]
    assert set(components) >= {"ingest", "scheduler", "metrics"}
    assert otlp["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 4318}]

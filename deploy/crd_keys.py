"""Hand-kept allow-lists of the keys of the CRD objects deploy/ uses (ScaledObject, ServiceMonitor,
PrometheusRule, ExternalSecret).

kubernetes-validate has no schemas for CRDs, and the CRDs themselves accept (and the operators then
silently ignore) misspelled keys in free-form maps such as a KEDA trigger's `metadata`. Each key
below exists in the upstream CRD of the version named; a key not listed is an error. A schema is a
type (the value must be one), a dict (allowed keys -> their schemas), or a one-item list (a list
whose items follow that schema). `object` accepts anything; `dict` any mapping (labels, annotations).
"""

from __future__ import annotations

from typing import Any

Schema = Any

_LABEL_SELECTOR: Schema = {
    "matchLabels": dict,
    "matchExpressions": [{"key": str, "operator": str, "values": [str]}],
}
_METADATA: Schema = {"name": str, "namespace": str, "labels": dict, "annotations": dict}
_HPA_RULES: Schema = {
    "stabilizationWindowSeconds": int,
    "selectPolicy": str,
    "tolerance": object,
    "policies": [{"type": str, "value": int, "periodSeconds": int}],
}
_RELABEL: Schema = {
    "sourceLabels": [str], "separator": str, "targetLabel": str, "regex": str, "modulus": int,
    "replacement": str, "action": str,
}

# KEDA 2.x, keda.sh/v1alpha1 ScaledObject.
SCALED_OBJECT: Schema = {
    "scaleTargetRef": {"apiVersion": str, "kind": str, "name": str, "envSourceContainerName": str},
    "pollingInterval": int, "cooldownPeriod": int, "initialCooldownPeriod": int, "idleReplicaCount": int,
    "minReplicaCount": int, "maxReplicaCount": int,
    "fallback": {"failureThreshold": int, "replicas": int, "behavior": str},
    "advanced": {
        "restoreToOriginalReplicaCount": bool,
        "horizontalPodAutoscalerConfig": {"name": str, "behavior": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES}},
        "scalingModifiers": {"formula": str, "target": str, "activationTarget": str, "metricType": str},
    },
    "triggers": [{
        "type": str, "name": str, "metadata": dict, "metricType": str, "useCachedMetrics": bool,
        "authenticationRef": {"name": str, "kind": str},
    }],
}
# Trigger metadata is a free string map in the CRD; the scalers ignore keys they do not know.
TRIGGER_METADATA: dict[str, set[str]] = {
    "nats-jetstream": {
        "natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
        "activationLagThreshold", "useHttps",
    },
}

# prometheus-operator, monitoring.coreos.com/v1.
SERVICE_MONITOR: Schema = {
    "jobLabel": str, "targetLabels": [str], "podTargetLabels": [str], "sampleLimit": int, "targetLimit": int,
    "labelLimit": int, "labelNameLengthLimit": int, "labelValueLengthLimit": int, "keepDroppedTargets": int,
    "scrapeProtocols": [str], "scrapeClass": str, "bodySizeLimit": str, "attachMetadata": {"node": bool},
    "selector": _LABEL_SELECTOR,
    "namespaceSelector": {"any": bool, "matchNames": [str]},
    "endpoints": [{
        "port": str, "targetPort": object, "path": str, "scheme": str, "params": dict, "interval": str,
        "scrapeTimeout": str, "honorLabels": bool, "honorTimestamps": bool, "followRedirects": bool,
        "enableHttp2": bool, "filterRunning": bool, "proxyUrl": str, "tlsConfig": dict, "authorization": dict,
        "basicAuth": dict, "oauth2": dict, "bearerTokenSecret": dict,
        "relabelings": [_RELABEL], "metricRelabelings": [_RELABEL],
    }],
}
PROMETHEUS_RULE: Schema = {
    "groups": [{
        "name": str, "interval": str, "limit": int, "query_offset": str, "labels": dict,
        "partial_response_strategy": str,
        "rules": [{
            "record": str, "alert": str, "expr": str, "for": str, "keep_firing_for": str,
            "labels": dict, "annotations": dict,
        }],
    }],
}

# External Secrets Operator, external-secrets.io/v1.
_REMOTE_REF: Schema = {
    "key": str, "property": str, "version": str, "conversionStrategy": str, "decodingStrategy": str,
    "metadataPolicy": str, "nullBytePolicy": str,
}
EXTERNAL_SECRET: Schema = {
    "refreshInterval": str, "refreshPolicy": str,
    "secretStoreRef": {"name": str, "kind": str},
    "target": {"name": str, "creationPolicy": str, "deletionPolicy": str, "immutable": bool, "template": dict},
    "data": [{"secretKey": str, "remoteRef": _REMOTE_REF, "sourceRef": dict}],
    "dataFrom": [{"extract": _REMOTE_REF, "find": dict, "rewrite": [dict], "sourceRef": dict}],
}

CRDS: dict[str, tuple[str, Schema]] = {
    "ScaledObject": ("keda.sh/v1alpha1", SCALED_OBJECT),
    "ServiceMonitor": ("monitoring.coreos.com/v1", SERVICE_MONITOR),
    "PrometheusRule": ("monitoring.coreos.com/v1", PROMETHEUS_RULE),
    "ExternalSecret": ("external-secrets.io/v1", EXTERNAL_SECRET),
}


def unknown_keys(value: Any, schema: Schema, path: str) -> list[str]:
    """Every key of `value` that `schema` does not allow, and every value of the wrong type."""
    if schema is object:
        return []
    if isinstance(schema, type):
        ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {schema.__name__}, got {type(value).__name__}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [err for i, item in enumerate(value) for err in unknown_keys(item, schema[0], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping"]
    errors = []
    for key, item in value.items():
        if key not in schema:
            errors.append(f"{path}.{key}: unknown key")
        else:
            errors.extend(unknown_keys(item, schema[key], f"{path}.{key}"))
    return errors


def check_crd_object(obj: dict[str, Any]) -> list[str]:
    """Errors of one CRD object: wrong apiVersion, unknown or mistyped keys, unknown trigger metadata."""
    kind = obj.get("kind", "")
    name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    api_version, spec_schema = CRDS[kind]
    errors = []
    if obj.get("apiVersion") != api_version:
        errors.append(f"{name}: apiVersion {obj.get('apiVersion')!r}, expected {api_version!r}")
    top = {"apiVersion": str, "kind": str, "metadata": _METADATA, "spec": spec_schema}
    errors += [f"{name}: {err}" for err in unknown_keys(obj, top, "")]
    if kind == "ScaledObject":
        for trigger in obj.get("spec", {}).get("triggers", []):
            allowed = TRIGGER_METADATA.get(trigger.get("type", ""))
            if allowed is None:
                errors.append(f"{name}: trigger type {trigger.get('type')!r} has no metadata allow-list")
                continue
            errors += [f"{name}: trigger {trigger.get('name')}: unknown metadata key {key!r}"
                       for key in trigger.get("metadata", {}) if key not in allowed]
            errors += [f"{name}: trigger {trigger.get('name')}: metadata {key} must be a string"
                       for key, val in trigger.get("metadata", {}).items() if not isinstance(val, str)]
    return errors

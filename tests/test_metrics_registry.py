"""deploy/metrics.yaml is true of the code: every metric the dashboards and alerts may query is
exported with that type and those labels, and every `botburrow_*` metric the code exports is listed."""

import importlib
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = [
    "botburrow.runtime.consumer",
    "services.ingest.stage",
    "services.scheduler.stage",
    "services.runner.stage",
    "services.metrics.stage",
    "services.configsync.stage",
]


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    for module in STAGE_MODULES:
        importlib.import_module(module)
    found = {}
    collector: Any  # the registry's own attributes (`_type`, `_labelnames`): prometheus_client has no public ones
    for collector in set(REGISTRY._names_to_collectors.values()):
        name = getattr(collector, "_name", None)
        if not name or not name.startswith("botburrow_"):
            continue
        kind = collector._type
        full = f"{name}_total" if kind == "counter" else name
        found[full] = (kind, tuple(collector._labelnames))
    return found


def listed() -> dict[str, tuple[str, tuple[str, ...]]]:
    registry = yaml.safe_load((ROOT / "deploy" / "metrics.yaml").read_text())["botburrow"]
    return {name: (spec["type"], tuple(spec["labels"])) for name, spec in registry.items()}


def test_every_listed_metric_is_exported_as_listed() -> None:
    code = exported()
    missing = {name: spec for name, spec in listed().items() if code.get(name) != spec}
    assert not missing, {name: (spec, code.get(name)) for name, spec in missing.items()}


def test_every_exported_metric_is_listed() -> None:
    unlisted = set(exported()) - set(listed())
    assert not unlisted, f"add these to deploy/metrics.yaml: {sorted(unlisted)}"

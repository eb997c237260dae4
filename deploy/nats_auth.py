"""Offline checks of NATS authentication in deploy/ (issue 14), called by deploy/check.py.

The NATS users and their permissions live in one place, streams.permissions; these checks
fail when deploy/nats/values.yaml, the botburrow-nats ExternalSecret or a workload's env drift from it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from botburrow import settings
from streams import permissions

DEPLOY = Path(__file__).resolve().parent
VALUES = DEPLOY / "nats" / "values.yaml"
CLIENT_SECRET = "botburrow-nats"  # namespace botburrow: one NATS_URL per workload
SERVER_SECRET = "nats-users"  # namespace nats: the passwords, as the servers' env
STORE_KEY = "botburrow/nats-password-{user}"
# The workloads that connect, each as the user of its name: the stages and the streams-apply Job.
CLIENT_USERS = (*settings.STAGES, permissions.TOPOLOGY)
Obj = dict[str, Any]


def url_key(user: str) -> str:
    return f"{user}-url"


def values() -> Obj:
    return yaml.safe_load(VALUES.read_text())


def _secret_ref(var: Any) -> tuple[str, str] | None:
    ref = var.get("valueFrom", {}).get("secretKeyRef") if isinstance(var, dict) else None
    return (ref.get("name"), ref.get("key")) if ref else None


def values_errors(vals: Obj | None = None) -> list[str]:
    """values.yaml: the accounts are what permissions.py generates; every password comes from the
    nats-users Secret, which an ExternalSecret fills; nats-box connects as the operator."""
    vals = values() if vals is None else vals
    where = "deploy/nats/values.yaml"
    errors = _accounts_errors(vals.get("config", {}).get("merge", {}).get("accounts", {}), where)
    env = vals.get("container", {}).get("env", {})
    errors += [f"{where}: container.env.{permissions.password_env(user)} must come from Secret {SERVER_SECRET}, "
               f"key {user}" for user in permissions.USERS
               if _secret_ref(env.get(permissions.password_env(user))) != (SERVER_SECRET, user)]
    external = [r for r in vals.get("extraResources", []) if r.get("kind") == "ExternalSecret"
                and r.get("spec", {}).get("target", {}).get("name") == SERVER_SECRET]
    data = {d["secretKey"]: d["remoteRef"]["key"] for r in external for d in r["spec"].get("data", [])}
    wanted = {user: STORE_KEY.format(user=user) for user in permissions.USERS}
    if any(data.get(user) != key for user, key in wanted.items()):
        errors.append(f"{where}: extraResources needs an ExternalSecret for {SERVER_SECRET} with {wanted}")
    box = vals.get("natsBox", {}).get("container", {}).get("env", {})
    if box.get("NATS_USER") != permissions.OPERATOR or _secret_ref(box.get("NATS_PASSWORD")) != (
            SERVER_SECRET, permissions.OPERATOR):
        errors.append(f"{where}: natsBox.container.env must set NATS_USER={permissions.OPERATOR} and its password")
    return errors


def _accounts_errors(accounts: Obj, where: str) -> list[str]:
    """The generated users exactly as permissions.py makes them; an operator's own extra users (the nats
    CLI, README) may follow, each with its password from the environment, never in the file."""
    generated = permissions.helm_accounts()[permissions.ACCOUNT]
    account = accounts.get(permissions.ACCOUNT, {}) if isinstance(accounts, dict) else {}
    users = account.get("users", [])
    ours = [u for u in users if u.get("user") in permissions.USERS]
    errors = []
    if set(accounts) != {permissions.ACCOUNT} or {k: v for k, v in account.items() if k != "users"} != {
            k: v for k, v in generated.items() if k != "users"} or ours != generated["users"]:
        errors.append(f"{where}: config.merge.accounts differs from what streams/permissions.py generates "
                      "(run `python -m streams.permissions --write deploy/nats/values.yaml`)")
    errors += [f"{where}: user {u.get('user')} must take its password from the environment (<< $VAR >>)"
               for u in users if u not in ours and not re.fullmatch(r"<< \$\w+ >>", str(u.get("password", "")))]
    return errors


def rendered_config(vals: Obj | None = None) -> str:
    """The accounts as the chart writes them into nats.conf: JSON, with `<< $VAR >>` unquoted."""
    vals = values() if vals is None else vals
    text = json.dumps({"accounts": vals["config"]["merge"]["accounts"]}, indent=1)
    return re.sub(r'"<< (\$\w+) >>"', r"\1", text)


def client_secret_errors(objs: list[Obj]) -> list[str]:
    """The botburrow-nats ExternalSecret: a URL per connecting workload, with that workload's user."""
    found = [o for o in objs if o.get("kind") == "ExternalSecret" and o["spec"]["target"]["name"] == CLIENT_SECRET]
    if len(found) != 1:
        return [f"needs exactly one ExternalSecret making Secret {CLIENT_SECRET}, found {len(found)}"]
    spec = found[0]["spec"]
    data = {d["secretKey"]: d["remoteRef"]["key"] for d in spec.get("data", [])}
    errors = [] if data == {u: STORE_KEY.format(user=u) for u in CLIENT_USERS} else [
        f"ExternalSecret {CLIENT_SECRET}: data must be the passwords of {list(CLIENT_USERS)} and nothing else"]
    templates = spec["target"].get("template", {}).get("data", {})
    for user in CLIENT_USERS:
        pattern = rf"nats://{re.escape(user)}:\{{\{{ index \. \"{re.escape(user)}\" \}}\}}@[\w.-]+:\d+"
        if not re.fullmatch(pattern, templates.get(url_key(user), "")):
            errors.append(f"ExternalSecret {CLIENT_SECRET}: {url_key(user)} must be "
                          f"nats://{user}:<its password>@host:port")
    errors += [f"ExternalSecret {CLIENT_SECRET}: {key} is no workload's URL"
               for key in templates if key not in {url_key(u) for u in CLIENT_USERS}]
    return errors


def workload_errors(objs: list[Obj]) -> list[str]:
    """Every stage and the Job take NATS_URL from their own key of botburrow-nats; stages bind health
    and metrics to the pod IP (METRICS_HOST from the downward API); KEDA reads the BOTBURROW account."""
    errors = []
    for obj in objs:
        if obj.get("kind") not in ("Deployment", "Job"):
            continue
        user = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        env = {var["name"]: var for var in obj["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        if user in CLIENT_USERS and _secret_ref(env.get("NATS_URL", {})) != (CLIENT_SECRET, url_key(user)):
            errors.append(f"{where}: NATS_URL must come from Secret {CLIENT_SECRET}, key {url_key(user)}")
        field = env.get("METRICS_HOST", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if user in settings.STAGES and field != "status.podIP":
            errors.append(f"{where}: METRICS_HOST must be the pod IP (fieldRef status.podIP)")
    for scaled in (o for o in objs if o.get("kind") == "ScaledObject"):
        errors += [f"ScaledObject/{scaled['metadata']['name']}: trigger {t['name']} reads account "
                   f"{t['metadata'].get('account')}, not {permissions.ACCOUNT}"
                   for t in scaled["spec"]["triggers"] if t["type"] == "nats-jetstream"
                   and t["metadata"].get("account") != permissions.ACCOUNT]
    return errors


def errors(objs: list[Obj]) -> list[str]:
    return permissions.check() + values_errors() + client_secret_errors(objs) + workload_errors(objs)

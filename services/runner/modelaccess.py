"""Where an agent's model calls go and which key they carry (contract §4), within the operator's lists.

A config is data someone else wrote: its `brain.api_key_env` names the secret sent upstream and its
`brain.api_base` the server it is sent to. So both are checked against the operator's settings before
any secret is read:

- `api_key_env` must be one of `MODEL_KEY_ENVS` (default `ANTHROPIC_API_KEY,OPENAI_API_KEY`); the Hub,
  R2, NATS, GitHub and Brave credentials never are (settings.NEVER_MODEL_KEYS, whatever the list says);
- the endpoint a call would really reach must be one of `MODEL_API_BASES` (default the providers' public
  endpoints), `ANTHROPIC_BASE_URL` or, in local mode, `MODEL_BASE_URL_OVERRIDE` (which then replaces
  every config's `api_base`, so a config naming another server sends nothing there).

`resolve` is the one resolution of base URL and key, used by the native loop (providers.model_for) and
the model gateway (the CLIs); `check` is the same test without reading a secret (the runner's preflight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from botburrow.secrets import env_name_to_secret, read_secret
from botburrow.settings import BY_NAME, NEVER_MODEL_KEYS
from schemas.agent import Brain
from services.runner.transcript import ANTHROPIC_DEFAULT_URL, LOCAL_KEY, ModelError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class ModelAccessRefused(ModelError):
    """The config names a key or an endpoint the operator does not allow: the activation fails with this."""


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "anthropic" (Messages) or "openai" (Chat Completions)
    base_url: str  # anthropic: without /v1; openai: as configured (usually ending in /v1)
    key: str | None


def _setting(environ: Mapping[str, str], name: str) -> object:
    setting = BY_NAME[name]
    raw = environ.get(name, "").strip() or setting.default or ""
    return setting.parse(raw)


def _origin(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        return None
    return parts.scheme, parts.hostname.lower(), port, parts.path.rstrip("/")


def base_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """`url` is one of `allowed` or below one (same scheme, host and port; the path at a `/` boundary)."""
    mine = _origin(url)
    if mine is None:
        return False
    for entry in allowed:
        theirs = _origin(entry)
        if theirs is not None and mine[:3] == theirs[:3] and (mine[3] + "/").startswith(theirs[3] + "/"):
            return True
    return False


def _override(environ: Mapping[str, str]) -> str:
    return environ.get("MODEL_BASE_URL_OVERRIDE", "").strip().rstrip("/")


def _base(brain: Brain, environ: Mapping[str, str], protocol: str) -> str:
    override = _override(environ)
    if protocol == "anthropic":
        own = brain.api_base if brain.provider == "anthropic" else None
        base = override or own or environ.get("ANTHROPIC_BASE_URL", "").strip() or ANTHROPIC_DEFAULT_URL
        return base.rstrip("/").removesuffix("/v1")
    if override:
        return f"{override}/v1"
    return (brain.api_base or "").rstrip("/") if brain.provider != "anthropic" else ""


def _refuse_key_env(brain: Brain, environ: Mapping[str, str]) -> None:
    name = brain.api_key_env
    if name is None:
        return
    allowed = _setting(environ, "MODEL_KEY_ENVS")
    assert isinstance(allowed, frozenset)
    if name in NEVER_MODEL_KEYS or name not in allowed:
        raise ModelAccessRefused(f"brain.api_key_env {name} is not a model key: the operator allows "
                                 f"{', '.join(sorted(allowed))} (MODEL_KEY_ENVS)")


def _refuse_base(base: str, environ: Mapping[str, str]) -> None:
    listed = _setting(environ, "MODEL_API_BASES")
    assert isinstance(listed, tuple)
    operator = tuple(u for u in (environ.get("ANTHROPIC_BASE_URL", "").strip(), _override(environ)) if u)
    if not base_allowed(base, listed + operator):
        raise ModelAccessRefused(f"brain.api_base {base} is not an allowed model endpoint: the operator allows "
                                 f"{', '.join(listed + operator)} (MODEL_API_BASES)")


def own_protocol(brain: Brain) -> str:
    return "anthropic" if brain.provider == "anthropic" else "openai"


def check(brain: Brain, environ: Mapping[str, str]) -> None:
    """Raise ModelAccessRefused if the brain names a key or endpoint the operator does not allow."""
    _refuse_key_env(brain, environ)
    base = _base(brain, environ, own_protocol(brain))
    if not base:
        raise ModelAccessRefused(f"provider {brain.provider} needs brain.api_base (an OpenAI-compatible endpoint)")
    _refuse_base(base, environ)


def resolve(brain: Brain, environ: Mapping[str, str], protocol: str | None = None) -> Endpoint:
    """The endpoint and key for `protocol` (default: the brain's own), checked first; `base_url` is empty
    when the brain has no endpoint for that protocol (an anthropic brain has none for openai)."""
    protocol = protocol or own_protocol(brain)
    _refuse_key_env(brain, environ)
    base = _base(brain, environ, protocol)
    if not base:
        return Endpoint(protocol, "", None)
    _refuse_base(base, environ)
    local = LOCAL_KEY if _override(environ) else None
    if protocol == "anthropic":
        return Endpoint(protocol, base, read_secret("anthropic-api-key", environ=environ) or local)
    env_name = brain.api_key_env or DEFAULT_KEY_ENV
    return Endpoint(protocol, base, read_secret(env_name_to_secret(env_name), env_name, environ=environ) or local)

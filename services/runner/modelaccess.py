"""Where an agent's model calls go and which key they carry (contract §4), within the operator's lists.

A config is data someone else wrote: its `brain.api_key_env` names the secret sent upstream and its
`brain.api_base` the server it is sent to. So both are checked against the operator's settings before
any secret is read:

- `api_key_env` must be one of `MODEL_KEY_ENVS` (default `ANTHROPIC_API_KEY,OPENAI_API_KEY`); the Hub,
  R2, NATS, GitHub and Brave credentials never are (settings.NEVER_MODEL_KEYS, whatever the list says);
- the endpoint a call would really reach must be one of `MODEL_API_BASES` (default the providers' public
  endpoints), `ANTHROPIC_BASE_URL` or, in local mode, `MODEL_BASE_URL_OVERRIDE` (which then replaces
  every config's `api_base`, so a config naming another server sends nothing there).

`ModelAccess.resolve` is the one resolution of base URL and key, used by the native loop
(providers.model_for) and the model gateway (the CLIs); `check` is the same test without reading a secret
(the runner's preflight). The operator's lists come in a `ModelAccess` built once from the settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec

from botburrow.secrets import env_name_to_secret, read_secret
from botburrow.settings import NEVER_MODEL_KEYS, RunnerSettings
from schemas.agent import Brain
from services.runner.transcript import ANTHROPIC_DEFAULT_URL, LOCAL_KEY, ModelError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class ModelAccessRefused(ModelError):
    """The config names a key or an endpoint the operator does not allow: the activation fails with this."""


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "anthropic" (Messages) or "openai" (Chat Completions)
    base_url: str  # anthropic: without /v1; openai: as configured (usually ending in /v1)
    key: str | None = field(repr=False)

    @property
    def identity(self) -> tuple[str, str, str]:
        """What one shared client serves (seams.ModelClients): protocol, base URL and a hash of the key (the
        key itself is never a dictionary key: a dump of the pool must not print it)."""
        digest = hashlib.sha256((self.key or "").encode()).hexdigest()[:24]
        return self.protocol, self.base_url, digest


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


class ModelAccess(msgspec.Struct, frozen=True, kw_only=True):
    """The operator's model settings (built once from the runner's settings): which key variables a config
    may name, which endpoints it may reach; `check` and `resolve` apply them to one brain."""

    key_envs: frozenset[str] = RunnerSettings.model_key_envs  # MODEL_KEY_ENVS
    api_bases: tuple[str, ...] = RunnerSettings.model_api_bases  # MODEL_API_BASES
    anthropic_base_url: str = ""  # ANTHROPIC_BASE_URL
    base_url_override: str = ""  # MODEL_BASE_URL_OVERRIDE (local mode and tests)

    @classmethod
    def from_settings(cls, settings: RunnerSettings) -> ModelAccess:
        return cls(key_envs=settings.model_key_envs, api_bases=settings.model_api_bases,
                   anthropic_base_url=(settings.anthropic_base_url or "").strip(),
                   base_url_override=(settings.model_base_url_override or "").strip().rstrip("/"))

    def _base(self, brain: Brain, protocol: str) -> str:
        override = self.base_url_override
        if protocol == "anthropic":
            own = brain.api_base if brain.provider == "anthropic" else None
            base = override or own or self.anthropic_base_url or ANTHROPIC_DEFAULT_URL
            return base.rstrip("/").removesuffix("/v1")
        if override:
            return f"{override}/v1"
        return (brain.api_base or "").rstrip("/") if brain.provider != "anthropic" else ""

    def _refuse_key_env(self, brain: Brain) -> None:
        name = brain.api_key_env
        if name is not None and (name in NEVER_MODEL_KEYS or name not in self.key_envs):
            raise ModelAccessRefused(f"brain.api_key_env {name} is not a model key: the operator allows "
                                     f"{', '.join(sorted(self.key_envs))} (MODEL_KEY_ENVS)")

    def _refuse_base(self, base: str) -> None:
        operator = tuple(u for u in (self.anthropic_base_url, self.base_url_override) if u)
        if not base_allowed(base, self.api_bases + operator):
            raise ModelAccessRefused(f"brain.api_base {base} is not an allowed model endpoint: the operator "
                                     f"allows {', '.join(self.api_bases + operator)} (MODEL_API_BASES)")

    def check(self, brain: Brain) -> None:
        """Raise ModelAccessRefused if the brain names a key or endpoint the operator does not allow."""
        self._refuse_key_env(brain)
        base = self._base(brain, own_protocol(brain))
        if not base:
            raise ModelAccessRefused(f"provider {brain.provider} needs brain.api_base (an OpenAI-compatible "
                                     "endpoint)")
        self._refuse_base(base)

    def resolve(self, brain: Brain, secrets: Mapping[str, str], protocol: str | None = None) -> Endpoint:
        """The endpoint and key for `protocol` (default: the brain's own), checked first; `base_url` is empty
        when the brain has no endpoint for that protocol (an anthropic brain has none for openai). The key
        is read (a secret, from `secrets`) only after the checks."""
        protocol = protocol or own_protocol(brain)
        self._refuse_key_env(brain)
        base = self._base(brain, protocol)
        if not base:
            return Endpoint(protocol, "", None)
        self._refuse_base(base)
        local = LOCAL_KEY if self.base_url_override else None
        if protocol == "anthropic":
            return Endpoint(protocol, base, read_secret("anthropic-api-key", environ=secrets) or local)
        env_name = brain.api_key_env or DEFAULT_KEY_ENV
        return Endpoint(protocol, base, read_secret(env_name_to_secret(env_name), env_name, environ=secrets) or local)


def own_protocol(brain: Brain) -> str:
    return "anthropic" if brain.provider == "anthropic" else "openai"

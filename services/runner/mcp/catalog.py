"""The operator's MCP catalog: the only MCP servers an activation may start, and how.

The built-in servers (contract §3) are always there; `MCP_CATALOG_FILE` (YAML, mounted by the deployment)
adds more. A config's `capabilities.mcp_servers` or a skill's `mcp.server` may only NAME an entry:

    servers:
      jira:
        command: /opt/mcp/jira-server        # run inside the server's own sandbox
        args: ["--stdio"]
        secret: jira-token                   # from SECRETS_DIR (or JIRA_TOKEN); its only credential
        secret_env: JIRA_TOKEN               # the variable it receives it as (default: from the name)
        grants: ["jira:read"]                # started only for an agent holding one of these
        network: true                        # its own sandbox with a route out; default false
        paths: ["/opt/mcp"]                  # read-only paths it needs besides /usr (the command's dir)

An entry needs at least one grant: a server no grant asks for never starts. The built-in names
(`hub`, `github`, `brave`/`brave-search`, `filesystem`) cannot be redefined.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from botburrow import grants as grants_mod

ALIASES = {"brave-search": "brave"}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
_ENV = re.compile(r"[A-Z][A-Z0-9_]*")
_KEYS = {"command", "args", "secret", "secret_env", "grants", "network", "paths"}


class CatalogError(ValueError):
    """The catalog file is unreadable or malformed; the message names the entry and field."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    grants: tuple[str, ...]
    command: str | None = None  # None: a built-in, whose command the planner knows
    args: tuple[str, ...] = ()
    secret: str | None = None
    secret_env: str | None = None
    network: bool = False
    paths: tuple[str, ...] = ()

    def needed_grants(self) -> list[tuple[str, str]]:
        out = []
        for text in self.grants:
            grant = grants_mod.parse(text)
            out.append((grant.service, grant.permission))
        return out


BUILTINS: dict[str, CatalogEntry] = {
    "hub": CatalogEntry("hub", ("hub:read", "hub:write")),
    "github": CatalogEntry("github", ("github:read", "github:write"), secret="github-pat",
                           secret_env="GITHUB_PERSONAL_ACCESS_TOKEN", network=True),
    "brave": CatalogEntry("brave", ("brave:search",), secret="brave-api-key", secret_env="BRAVE_API_KEY",
                          network=True),
    "filesystem": CatalogEntry("filesystem", ("filesystem:read", "filesystem:write")),
}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: expected a list of strings")
    return tuple(value)


def _entry(name: object, node: object) -> CatalogEntry:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CatalogError(f"servers: {name!r} is not a server name (a-z, 0-9, '-')")
    if canonical(name) in BUILTINS or name in ALIASES:
        raise CatalogError(f"servers.{name}: a built-in server cannot be redefined")
    if not isinstance(node, dict) or set(node) - _KEYS:
        raise CatalogError(f"servers.{name}: expected a mapping with keys {sorted(_KEYS)}")
    command = node.get("command")
    if not isinstance(command, str) or not command.startswith("/"):
        raise CatalogError(f"servers.{name}.command: expected an absolute path")
    grants = _strings(node.get("grants"), f"servers.{name}.grants")
    if not grants:
        raise CatalogError(f"servers.{name}.grants: at least one grant starts a server")
    for grant in grants:
        try:
            grants_mod.parse(grant)
        except ValueError as exc:
            raise CatalogError(f"servers.{name}.grants: {exc}") from None
    secret = node.get("secret")
    if secret is not None and not (isinstance(secret, str) and _NAME.fullmatch(secret)):
        raise CatalogError(f"servers.{name}.secret: expected a secret name (a-z, 0-9, '-')")
    secret_env = node.get("secret_env") or (secret.upper().replace("-", "_") if secret else None)
    if secret_env is not None and not (isinstance(secret_env, str) and _ENV.fullmatch(secret_env)):
        raise CatalogError(f"servers.{name}.secret_env: expected an environment variable name")
    network = node.get("network", False)
    if not isinstance(network, bool):
        raise CatalogError(f"servers.{name}.network: expected true or false")
    paths = _strings(node.get("paths"), f"servers.{name}.paths")
    if any(not p.startswith("/") for p in paths):
        raise CatalogError(f"servers.{name}.paths: expected absolute paths")
    return CatalogEntry(name, grants, command, _strings(node.get("args"), f"servers.{name}.args"), secret,
                        secret_env, network, paths)


@dataclass(frozen=True)
class Catalog:
    entries: Mapping[str, CatalogEntry] = field(default_factory=lambda: dict(BUILTINS))

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(canonical(name))

    @classmethod
    def parse(cls, text: str) -> Catalog:
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise CatalogError(f"MCP catalog: not YAML: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - {"servers"}:
            raise CatalogError("MCP catalog: expected one top-level key, servers")
        servers = doc.get("servers") or {}
        if not isinstance(servers, dict):
            raise CatalogError("servers: expected a mapping of name -> server")
        return cls({**BUILTINS, **{name: _entry(name, node) for name, node in servers.items()}})

    @classmethod
    def load(cls, path: str | Path | None) -> Catalog:
        """MCP_CATALOG_FILE: unset = the built-in servers only; unreadable or malformed = refuse to start."""
        if not path:
            return cls()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CatalogError(f"cannot read the MCP catalog {path}: {exc.strerror}") from None
        return cls.parse(text)

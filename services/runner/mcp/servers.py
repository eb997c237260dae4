"""The MCP servers an activation may start, as launch plans: only the operator's catalog, only with grants.

| name | grant | credential (its only secret) | where it runs |
| `hub` | hub:read / hub:write | the agent's Hub key | in the runner itself (see hubserver.py) |
| `github` | github:read / :write | secret `github-pat` | its own sandbox, network; `--read-only` unless :write |
| `brave` (`brave-search`) | brave:search | secret `brave-api-key` | its own sandbox, network |
| `filesystem` | filesystem:read / :write | none | a sandbox of the activation's workspace, no network |
| catalog entries | their `grants` | their `secret` | their own sandbox; network if marked (catalog.py) |

A config's `capabilities.mcp_servers` and a skill's `mcp.server` only NAME servers of the catalog
(services/runner/mcp/catalog.py): a command, args or env they carry themselves are ignored with a warning,
and an unknown name is logged and skipped. Only the config's own list starts servers: a skill chosen by
the words of a post starts nothing. Every environment is built from nothing: PATH, a HOME in the
sandbox, neutral identity variables and the server's own credential. `Launch` is what to run inside a
sandbox (services.runner.sandbox: `stdio`); services/runner/mcptools.py starts it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mcp.types import Tool

from botburrow import grants as grants_mod
from botburrow.secrets import read_secret
from botburrow.tools import tools_dir
from schemas.agent import AgentDefinition, McpServerSpec, SkillDefinition
from services.runner.mcp.catalog import ALIASES, BUILTINS, Catalog, CatalogEntry, canonical

log = logging.getLogger(__name__)

# tools/node_modules (installed by ./setup.sh from tools/package.json; BOTBURROW_TOOLS_DIR moves it).
NODE_MODULES = tools_dir({}) / "node_modules"  # the default; the runner passes its BOTBURROW_TOOLS_DIR's
BRAVE_ENTRY = "@brave/brave-search-mcp-server/dist/index.js"
FILESYSTEM_ENTRY = "@modelcontextprotocol/server-filesystem/dist/index.js"
BUILTIN = tuple(BUILTINS)
SERVER_PATH = "/usr/local/bin:/usr/bin:/bin"
#: HOME of a server inside its sandbox (the sandbox's scratch tmpfs: nothing of it outlives the server).
SERVER_HOME = "/tmp"

__all__ = ["ALIASES", "BUILTIN", "Launch", "Planner", "canonical", "holds", "wanted_servers"]


@dataclass(frozen=True)
class Launch:
    """How to start one server in a sandbox: argv and a complete environment, never the runner's own.
    `cwd` is the only writable host directory it sees (the activation workspace for `filesystem`, else
    an empty private directory); `binds` are read-only toolchain paths it needs beyond /usr."""

    name: str
    command: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    read_only: bool = False  # offer only tools annotated readOnlyHint
    secret: str | None = None  # the secret's name (never its value: that is in env only)
    network: bool = False
    binds: tuple[Path, ...] = ()
    workspace: bool = False  # cwd is the activation workspace (its size limit applies)

    def allows(self, tool: Tool) -> bool:
        if not self.read_only:
            return True
        return bool(tool.annotations and tool.annotations.read_only_hint)


def _names(definition: AgentDefinition) -> list[str]:
    """The config's `mcp_servers` as names; what an object entry brings besides its name is ignored."""
    names: list[str] = []
    for entry in definition.config.capabilities.mcp_servers:
        if isinstance(entry, McpServerSpec):
            if entry.command or entry.args or entry.env:
                log.warning("mcp server: the config's own command, args and env are ignored (the operator's "
                            "catalog says how a server runs)", extra={"agent": definition.name, "server": entry.name})
            names.append(entry.name)
        else:
            names.append(entry)
    return names


def wanted_servers(definition: AgentDefinition, grants: set[str]) -> list[str]:
    """The config's `mcp_servers` names (aliases resolved, deduplicated), plus `hub` with any hub grant."""
    out = list(dict.fromkeys(canonical(n) for n in _names(definition)))
    if "hub" not in out and (holds(grants, "hub", "read") or holds(grants, "hub", "write")):
        out.insert(0, "hub")
    return out


def ignored_skill_servers(definition: AgentDefinition, skills: Iterable[SkillDefinition]) -> None:
    """A skill's `mcp.server` starts nothing (only the config's list and grants do): say so once per run."""
    for skill in skills:
        if skill.front_matter.mcp is not None and skill.front_matter.mcp.server is not None:
            log.warning("mcp server of a skill ignored: only the config's mcp_servers start servers",
                        extra={"agent": definition.name, "skill": skill.name})


def holds(grants: Iterable[str], service: str, permission: str) -> bool:
    """`service:permission` on some resource, by the one grant parser (`github:write:repo` is a write)."""
    return grants_mod.holds_some(grants, service, permission)


def base_env() -> dict[str, str]:
    return {"PATH": SERVER_PATH, "HOME": SERVER_HOME, "USER": "botburrow", "LOGNAME": "botburrow",
            "SHELL": "/bin/sh", "TERM": "dumb"}


def _toolchain(*paths: str | Path) -> tuple[Path, ...]:
    """Read-only binds a server needs: its files outside /usr (the sandbox shows /usr anyway)."""
    out = []
    for path in paths:
        resolved = Path(os.path.realpath(path))
        if resolved.exists() and not resolved.is_relative_to("/usr"):
            out.append(resolved)
    return tuple(dict.fromkeys(out))


@dataclass
class Planner:
    """Builds the launch plans of one activation. `homes` is the agent's own directory for server
    working directories (never shared with another agent); `catalog` the operator's (default: built-ins)."""

    environ: Mapping[str, str]
    homes: Path
    workspace: Path
    node_modules: Path = NODE_MODULES
    github_binary: str | None = None
    github_host: str | None = None  # `--gh-host` (GitHub Enterprise; tests: http://127.0.0.1, port 80 only)
    catalog: Catalog | None = None

    def _home(self, name: str) -> Path:
        home = self.homes / name
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return home

    def _secret(self, server: str, name: str) -> str | None:
        value = read_secret(name, environ=self.environ)
        if not value:
            log.warning("mcp server skipped: its secret is missing", extra={"server": server, "secret": name})
        return value

    def github(self, grants: set[str]) -> Launch | None:
        token = self._secret("github", "github-pat")
        binary = self.github_binary or shutil.which("github-mcp-server", path=str(Path(sys.executable).parent))
        if not token or not binary:
            if token and not binary:
                log.warning("mcp server skipped: github-mcp-server is not installed", extra={"server": "github"})
            return None
        binary = os.path.realpath(binary)
        write = holds(grants, "github", "write")
        args = ["stdio"] + ([] if write else ["--read-only"])
        if self.github_host:
            args += ["--gh-host", self.github_host]
        env = base_env() | {"GITHUB_PERSONAL_ACCESS_TOKEN": token}
        return Launch("github", binary, args, env, self._home("github"), read_only=not write, secret="github-pat",
                      network=True, binds=_toolchain(binary))

    def _node(self, server: str) -> str | None:
        node = shutil.which("node")
        if not node:
            log.warning("mcp server skipped: node is not installed", extra={"server": server})
        return os.path.realpath(node) if node else None

    def brave(self, grants: set[str]) -> Launch | None:
        key = self._secret("brave", "brave-api-key")
        node = self._node("brave")
        if not key or not node:
            return None
        modules = Path(os.path.realpath(self.node_modules))
        # Its cwd is an empty private directory: the server loads a .env from its cwd.
        return Launch("brave", node, [str(modules / BRAVE_ENTRY)], base_env() | {"BRAVE_API_KEY": key},
                      self._home("brave"), secret="brave-api-key", network=True, binds=_toolchain(node, modules))

    def filesystem(self, grants: set[str]) -> Launch | None:
        node = self._node("filesystem")
        if not node:
            return None
        modules = Path(os.path.realpath(self.node_modules))
        write = holds(grants, "filesystem", "write")
        return Launch("filesystem", node, [str(modules / FILESYSTEM_ENTRY), str(self.workspace)], base_env(),
                      self.workspace, read_only=not write, binds=_toolchain(node, modules), workspace=True)

    def entry(self, entry: CatalogEntry) -> Launch | None:
        """A server of the operator's catalog file, as the catalog says."""
        assert entry.command is not None
        env = base_env()
        if entry.secret:
            value = self._secret(entry.name, entry.secret)
            if not value:
                return None
            env[entry.secret_env or entry.secret.upper().replace("-", "_")] = value
        binds = _toolchain(entry.command, Path(entry.command).parent, *entry.paths)
        return Launch(entry.name, entry.command, list(entry.args), env, self._home(f"catalog-{entry.name}"),
                      secret=entry.secret, network=entry.network, binds=binds)

    def plan(self, definition: AgentDefinition, grants: set[str],
             skills: Iterable[SkillDefinition] = ()) -> list[Launch]:
        """Servers to start in sandboxes (hub is not among them: the runner serves it in-process). Only
        the config's list counts: `skills` are looked at only to warn that their servers are ignored."""
        ignored_skill_servers(definition, skills)
        catalog = self.catalog or Catalog()
        launches: list[Launch] = []
        for name in wanted_servers(definition, grants):
            entry = catalog.get(name)
            if entry is None:
                log.warning("mcp server skipped: not in the operator's catalog",
                            extra={"agent": definition.name, "server": name[:64]})
                continue
            if name == "hub":
                continue
            if not any(holds(grants, service, permission) for service, permission in entry.needed_grants()):
                log.info("mcp server not started: no grant", extra={"agent": definition.name, "server": name})
                continue
            launch = getattr(self, name)(grants) if name in BUILTINS else self.entry(entry)
            if launch is not None:
                launches.append(launch)
        return launches

"""The MCP servers an activation may start (SPEC §3), as launch plans built from grants.

| name | grant | credential (its only secret) | tools |
| `hub` | hub:read / hub:write | the agent's Hub key | served by the runner itself (see hubserver.py) |
| `github` | github:read / :write | secret `github-pat` | `--read-only` (and read-only hints) unless :write |
| `brave` (`brave-search`) | brave:search | secret `brave-api-key` | all; cwd an empty dir (it reads `.env`) |
| `filesystem` | filesystem:read / :write | none | read-only hints unless :write; root = workspace |

Plus the object form of a config's `mcp_servers` and a chosen skill's `mcp.server` (no grant: the
config or skill brings them; they get only the env they declare). Every environment is built from
nothing: PATH, a private HOME, neutral identity variables and the server's own credential.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcp.types import Tool

from botburrow.mcp import grants as grants_mod
from botburrow.schemas.agent import AgentDefinition, McpServerSpec, SkillDefinition
from botburrow.secrets import read_secret
from botburrow.tools import tools_dir

log = logging.getLogger(__name__)

# tools/node_modules (installed by ./setup.sh from tools/package.json; BOTBURROW_TOOLS_DIR moves it).
NODE_MODULES = tools_dir() / "node_modules"
BRAVE_ENTRY = "@brave/brave-search-mcp-server/dist/index.js"
FILESYSTEM_ENTRY = "@modelcontextprotocol/server-filesystem/dist/index.js"
ALIASES = {"brave-search": "brave"}
BUILTIN = ("hub", "github", "brave", "filesystem")
SERVER_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Launch:
    """How to start one server: a complete environment, never the runner's own."""

    name: str
    command: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    read_only: bool = False  # offer only tools annotated readOnlyHint
    secret: str | None = None  # the secret's name (never its value: that is in env only)

    def allows(self, tool: Tool) -> bool:
        if not self.read_only:
            return True
        return bool(tool.annotations and tool.annotations.read_only_hint)


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def wanted_servers(definition: AgentDefinition, grants: set[str]) -> list[str | McpServerSpec]:
    """The config's `mcp_servers` (aliases resolved, deduplicated), plus `hub` with any hub grant."""
    out: list[str | McpServerSpec] = []
    seen: set[str] = set()
    for entry in definition.config.capabilities.mcp_servers:
        key = canonical(entry) if isinstance(entry, str) else entry.name
        if key not in seen:
            seen.add(key)
            out.append(canonical(entry) if isinstance(entry, str) else entry)
    if "hub" not in seen and any(g.split(":")[0] == "hub" for g in grants):
        out.insert(0, "hub")
    return out


def holds(grants: Iterable[str], service: str, permission: str) -> bool:
    """`service:permission` on some resource, by the one grant parser (`github:write:repo` is a write)."""
    return grants_mod.holds_some(grants, service, permission)


def base_env(home: Path) -> dict[str, str]:
    return {"PATH": SERVER_PATH, "HOME": str(home), "USER": "botburrow", "LOGNAME": "botburrow",
            "SHELL": "/bin/sh", "TERM": "dumb"}


@dataclass
class Planner:
    """Builds the launch plans of one activation. `homes` is the agent's own directory for server
    homes and working directories (never shared with another agent)."""

    environ: Mapping[str, str]
    homes: Path
    workspace: Path
    node_modules: Path = NODE_MODULES
    github_binary: str | None = None
    github_host: str | None = None  # `--gh-host` (GitHub Enterprise; tests: http://127.0.0.1, port 80 only)

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
        write = holds(grants, "github", "write")
        args = ["stdio"] + ([] if write else ["--read-only"])
        if self.github_host:
            args += ["--gh-host", self.github_host]
        env = base_env(self._home("github")) | {"GITHUB_PERSONAL_ACCESS_TOKEN": token}
        return Launch("github", binary, args, env, self._home("github"), read_only=not write, secret="github-pat")

    def brave(self, grants: set[str]) -> Launch | None:
        key = self._secret("brave", "brave-api-key")
        node = shutil.which("node")
        if not key or not node:
            return None
        home = self._home("brave")  # empty: the server loads a .env from its cwd
        env = base_env(home) | {"BRAVE_API_KEY": key}
        return Launch("brave", node, [str(self.node_modules / BRAVE_ENTRY)], env, home, secret="brave-api-key")

    def filesystem(self, grants: set[str]) -> Launch | None:
        node = shutil.which("node")
        if not node:
            log.warning("mcp server skipped: node is not installed", extra={"server": "filesystem"})
            return None
        write = holds(grants, "filesystem", "write")
        home = self._home("filesystem")
        return Launch("filesystem", node, [str(self.node_modules / FILESYSTEM_ENTRY), str(self.workspace)],
                      base_env(home), home, read_only=not write)

    def custom(self, name: str, command: str, args: Sequence[str], env: Mapping[str, str]) -> Launch:
        home = self._home(f"custom-{name}")
        return Launch(name, command, list(args), base_env(home) | dict(env), home)

    def plan(self, definition: AgentDefinition, grants: set[str],
             skills: Sequence[SkillDefinition] = ()) -> list[Launch]:
        """Subprocess servers to start (hub is not among them: the runner serves it in-process)."""
        launches: list[Launch] = []
        for entry in wanted_servers(definition, grants):
            launch = self._one(definition, entry, grants)
            if launch is not None:
                launches.append(launch)
        for skill in skills:
            server = skill.front_matter.mcp.server if skill.front_matter.mcp else None
            if server is not None and all(x.name != skill.name for x in launches):
                launches.append(self.custom(skill.name, server.command, server.args, server.env))
        return launches

    def _one(self, definition: AgentDefinition, entry: str | McpServerSpec, grants: set[str]) -> Launch | None:
        if isinstance(entry, McpServerSpec):
            if canonical(entry.name) in BUILTIN:
                log.warning("mcp server skipped: a config server may not take a built-in name",
                            extra={"agent": definition.name, "server": entry.name})
                return None
            return self.custom(entry.name, entry.command, entry.args, entry.env)
        if entry == "hub":
            return None
        if entry not in BUILTIN:
            log.warning("mcp server skipped: unknown name", extra={"agent": definition.name, "server": entry})
            return None
        needs = {"github": ("read", "write"), "brave": ("search",), "filesystem": ("read", "write")}[entry]
        if not any(holds(grants, entry, p) for p in needs):
            log.info("mcp server not started: no grant", extra={"agent": definition.name, "server": entry})
            return None
        return getattr(self, entry)(grants)

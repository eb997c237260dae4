"""The MCP toolset of an activation (`ToolsetFactory`, contract §3): start the granted servers, offer
their tools to the native loop as `<server>__<tool>`, count calls, close everything after.

- `hub` is served in-process (hubtools.HubTools, contract §3 allows it for the native loop), named
  `hub__<tool>` as before. For CLI executors the same backend is wrapped in our `hub` MCP server.
- Every other server comes from the operator's catalog (services/runner/mcp/catalog.py, servers.py) and
  runs in a sandbox of the runner's backend (SANDBOX_BACKEND: `filesystem` in one of the activation's
  workspace without network, `github`/`brave`/networked entries each in their own with a route out),
  behind a filtering proxy (services.runner.mcp.proxy), started concurrently. Node servers take 1.5-3 s to
  start (bench/mcp.py), so `github` and `brave` (no per-activation state) are kept idle for
  REUSE_IDLE_S and handed to the *same agent's* next activation if the launch (command, args, env with
  its credential, filter) is identical; never to another agent, never two activations at once.
  Filesystem and catalog-file servers are always fresh.
- A server that does not start is recorded as an error `tool` event and its tools are not offered;
  one that dies mid-run answers every call with an error result.
- `toolbox.relay()` starts the Unix-socket endpoint a sandboxed CLI reaches through
  `python -m services.runner.mcp.relay <socket> <server>` (services/runner/mcp/endpoint.py documents it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from prometheus_client import Counter

from schemas.agent import SkillDefinition
from services.runner.config import SandboxConfig
from services.runner.hubtools import HubTools
from services.runner.loop import ToolOutcome
from services.runner.mcp.catalog import Catalog
from services.runner.mcp.endpoint import RelayEndpoint
from services.runner.mcp.hubserver import build_hub_server
from services.runner.mcp.proxy import CallResult, ServerHost, ServerUnavailable
from services.runner.mcp.servers import NODE_MODULES, Launch, Planner, holds
from services.runner.sandbox import Bind, Limits, MiB, Sandbox, SandboxSpec
from services.runner.seams import ToolContext
from services.runner.shelltools import ShellTools
from services.runner.transcript import ToolCall, ToolSpec
from streams.subjects import token

log = logging.getLogger(__name__)

MCP_CALLS = Counter("botburrow_mcp_calls", "MCP tool calls of activations", ["agent_id", "server", "status"])
SEPARATOR = "__"
# Servers with no per-activation state (the filesystem server is rooted at the workspace; config and
# skill servers are unknown): an idle one may serve the same agent's next activation.
REUSABLE = frozenset({"github", "brave"})
REUSE_IDLE_S = 300.0
TOOL_NAME_MAX = 64


def model_name(server: str, tool: str) -> str:
    """`<server>__<tool>` in the providers' tool-name alphabet ([A-Za-z0-9_-], at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}{SEPARATOR}{tool}")[:TOOL_NAME_MAX]


#: Limits of one MCP server's sandbox (Node servers take ~100 MB; V8 reserves more, hence a wide margin).
SERVER_LIMITS = Limits(memory_bytes=1024 * MiB, pids=256, cpus=1.0, tmpfs_bytes=64 * MiB, timeout_s=0.0)


NEUTRAL_ENV = {"HOME": "/", "USER": "botburrow", "LOGNAME": "botburrow", "SHELL": "/bin/sh", "TERM": "dumb"}


def _spec(launch: Launch, label: str) -> SandboxSpec:
    """The server's sandbox: its argv and env, `cwd` writable at its own path, its toolchain read-only."""
    return SandboxSpec(argv=[launch.command, *launch.args], env=launch.env, workspace=str(launch.cwd),
                       workdir=str(launch.cwd), binds=tuple(Bind(source=str(p), target=str(p)) for p in launch.binds),
                       limits=SERVER_LIMITS, label=label)


@contextlib.asynccontextmanager
async def _sandboxed_stdio(sandbox: Sandbox, launch: Launch, label: str, errlog: Any) -> AsyncIterator[Any]:
    """An mcp Transport: the server's stdio, the server in a sandbox (network only if it needs it)."""
    command = await sandbox.stdio(_spec(launch, label), network=launch.network, limit_workspace=launch.workspace)
    try:
        # stdio_client lays env over the runner's HOME, USER, SHELL, ...: override them all.
        env = {**NEUTRAL_ENV, **command.env}
        params = StdioServerParameters(command=command.command, args=command.args, env=env, cwd=command.cwd)
        async with stdio_client(params, errlog=errlog) as streams:
            yield streams
    finally:
        await command.cleanup()


def _connect(sandbox: Sandbox, launch: Launch, label: str, errlog: Any) -> Client:
    # Roots: mcp.Client advertises none, so the filesystem server keeps exactly the workspace root.
    return Client(_sandboxed_stdio(sandbox, launch, label, errlog))


class McpToolbox:
    """The loop's Toolbox: in-process hub tools plus every started server's filtered tools."""

    def __init__(self, agent: str, hub: HubTools | None, hosts: dict[str, ServerHost], scratch: Path,
                 grants: set[str], shell: ShellTools | None = None) -> None:
        self.agent, self.hub, self.hosts, self.scratch, self.grants = agent, hub, hosts, scratch, grants
        self.shell = shell
        self._routes: dict[str, tuple[str, str]] = {}
        self._specs: list[ToolSpec] = (list(hub.specs()) if hub else []) + (shell.specs() if shell else [])
        taken = {spec.name for spec in self._specs}
        for server, host in hosts.items():
            for tool in host.tools:
                name = model_name(server, tool.name)
                if name in taken:  # sanitising or truncation made two names equal: offer neither twice
                    log.warning("mcp tool skipped: name collision", extra={"server": server, "tool": tool.name})
                    continue
                taken.add(name)
                self._routes[name] = (server, tool.name)
                self._specs.append(ToolSpec(name, tool.description or tool.title or tool.name,
                                            dict(tool.input_schema or {"type": "object"})))
        self._endpoint: RelayEndpoint | None = None

    @property
    def servers(self) -> list[str]:
        return (["hub"] if self.hub else []) + sorted(self.hosts)

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        if self.shell is not None and self.shell.handles(name):
            return await self.shell.call(name, arguments)
        if self.hub is not None and self.hub.handles(name):
            outcome = await self.hub.call(name, arguments)
            MCP_CALLS.labels(self.agent, "hub", "error" if outcome.is_error else "ok").inc()
            return outcome
        route = self._routes.get(name)
        if route is None:
            server = name.split(SEPARATOR, 1)[0]
            MCP_CALLS.labels(self.agent, server, "denied").inc()
            return ToolOutcome(f"{name} is not available to this agent", is_error=True, server=server)
        server, tool = route
        result = await self.hosts[server].call(tool, arguments)
        MCP_CALLS.labels(self.agent, server, result.status).inc()
        return ToolOutcome(result.text, is_error=result.is_error, server=server)

    async def relay(self) -> Path:
        """Start (once) the endpoint for sandboxed CLIs; returns its Unix socket path."""
        if self._endpoint is None:
            hosts = dict(self.hosts)
            if (hub := self.hub) is not None:
                hub_host = ServerHost("hub", lambda: Client(build_hub_server(hub, self.grants)), lambda _: True)
                await hub_host.start(10.0)
                hosts["hub"] = hub_host
            self._endpoint = RelayEndpoint(hosts, self.scratch / "relay" / "mcp.sock", self._count)
            await self._endpoint.start()
        return self._endpoint.socket_path

    async def _count(self, server: str, tool: str, result: CallResult, duration_ms: float) -> None:
        MCP_CALLS.labels(self.agent, server, result.status).inc()

    async def aclose(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
            hub_host = self._endpoint.hosts.get("hub")
            if hub_host is not None and hub_host is not self.hosts.get("hub"):
                await hub_host.close()


class ServerPool:
    """Idle servers kept for the next activation of the same agent with the same launch (command,
    args, env, filter). Only servers without per-activation state are kept (REUSABLE); a taken
    server is exclusively that activation's, and a dead one is never handed out."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._idle: dict[str, tuple[ServerHost, asyncio.TimerHandle]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @staticmethod
    def key(agent: str, launch: Launch) -> str:
        # A digest, so that no dict key holds the credential that is part of the env.
        blob = json.dumps([agent, launch.name, launch.command, launch.args, sorted(launch.env.items()),
                           str(launch.cwd), launch.read_only, launch.network, [str(b) for b in launch.binds]])
        return hashlib.sha256(blob.encode()).hexdigest()

    def take(self, key: str) -> ServerHost | None:
        entry = self._idle.pop(key, None)
        if entry is None:
            return None
        host, timer = entry
        timer.cancel()
        if host.alive:
            return host
        self._close_later(host)
        return None

    def put(self, key: str, host: ServerHost) -> None:
        if self.idle_s <= 0 or not host.alive or key in self._idle:
            self._close_later(host)
            return
        timer = asyncio.get_running_loop().call_later(self.idle_s, self._expire, key, host)
        self._idle[key] = (host, timer)

    def _expire(self, key: str, host: ServerHost) -> None:
        if self._idle.get(key, (None,))[0] is host:
            del self._idle[key]
            self._close_later(host)

    def _close_later(self, host: ServerHost) -> None:
        task = asyncio.create_task(host.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        for key in list(self._idle):
            host, timer = self._idle.pop(key)
            timer.cancel()
            self._close_later(host)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class McpToolsets:
    """`ToolsetFactory` for the runner: the granted servers of each activation, fresh or reused
    (see ServerPool). Call `aclose()` when the runner stops."""

    def __init__(self, secret_env: Mapping[str, str], *, node_modules: Path = NODE_MODULES,
                 github_host: str | None = None, start_timeout_s: float = 30.0, call_timeout_s: float = 60.0,
                 reuse_idle_s: float = REUSE_IDLE_S,
                 skills: Callable[[], Mapping[str, SkillDefinition]] | None = None,
                 catalog: Catalog | None = None, sandbox: Sandbox | None = None,
                 sandbox_config: SandboxConfig | None = None) -> None:
        """`secret_env` is where the servers' secrets are read (nothing else); the servers run in `sandbox`, else in
        one of `sandbox_config`'s backend (default bwrap), opened when first needed and closed by `aclose`;
        `catalog` is the operator's (default: the built-in servers only)."""
        self.secret_env, self.node_modules, self.github_host = secret_env, node_modules, github_host
        self.catalog = catalog or Catalog()
        self.start_timeout_s, self.call_timeout_s = start_timeout_s, call_timeout_s
        self.skills = skills  # e.g. AgentDirectory.skills: for a skill's `mcp.server`, see _skills
        self.pool = ServerPool(reuse_idle_s)
        self._sandbox: Sandbox | None = sandbox
        self.sandbox_config = sandbox_config or SandboxConfig()
        self._own_sandbox = sandbox is None
        self._root: Path | None = None

    def _skills(self, ctx: ToolContext) -> Sequence[SkillDefinition]:
        # The chosen skills, when ToolContext carries them; else the skills the config lists.
        chosen = getattr(ctx, "skills", None)
        if chosen is not None:
            return list(chosen)
        known = self.skills() if self.skills else {}
        return [known[n] for n in ctx.definition.config.capabilities.skills if n in known]

    async def _homes(self, agent: str) -> Path:
        if self._root is None:
            self._root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="botburrow-mcp-homes-"))
        return self._root / token(agent)

    def sandbox(self) -> Sandbox:
        """The one backend of this runner's MCP servers and shell tools (SandboxConfig.open)."""
        if self._sandbox is None:
            self._sandbox = self.sandbox_config.open()
        return self._sandbox

    async def _start(self, launches: list[Launch], errlog: Any, ctx: ToolContext) -> dict[str, ServerHost]:
        agent = ctx.definition.name
        hosts: dict[str, ServerHost] = {}
        fresh: dict[str, ServerHost] = {}
        sandbox = self.sandbox() if launches else None
        for x in launches:
            reused = self.pool.take(self.pool.key(agent, x)) if x.name in REUSABLE else None
            if reused is not None:
                hosts[x.name] = reused
            else:
                assert sandbox is not None
                label = f"{ctx.activation_id}-mcp-{x.name}"
                fresh[x.name] = ServerHost(x.name, functools.partial(_connect, sandbox, x, label, errlog),
                                           x.allows, self.call_timeout_s)
        started_s = time.monotonic()
        results = await asyncio.gather(*(h.start(self.start_timeout_s) for h in fresh.values()),
                                       return_exceptions=True)
        for (name, host), result in zip(fresh.items(), results, strict=True):
            if not isinstance(result, BaseException):
                hosts[name] = host
                continue
            MCP_CALLS.labels(agent, name, "unavailable").inc()
            if ctx.recorder is not None:
                reason = str(result) if isinstance(result, ServerUnavailable) else host.failure or "failed"
                await ctx.recorder.tool(0, ToolCall(f"start-{name}", model_name(name, "start"), {}),
                                        ToolOutcome(reason, is_error=True, server=name),
                                        (time.monotonic() - started_s) * 1000)
        return hosts

    def _prepare(self, ctx: ToolContext, homes: Path,
                 skills: Sequence[SkillDefinition]) -> tuple[Path, Path, Any, list[Launch]]:
        """In a worker thread, in one hop (each hop costs the event loop a wake-up, and every activation opens
        toolsets: issue 18): the activation's scratch dir, its servers' stderr file, its workspace, the plan."""
        scratch = Path(tempfile.mkdtemp(prefix="botburrow-mcp-"))
        workspace = ctx.workspace or scratch / "workspace"
        # Servers' stderr goes to a file of this activation, never to the runner's stderr (logs).
        errlog = open(scratch / "servers.stderr", "w")  # closed by `open`'s teardown (`_discard`)
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            planner = Planner(self.secret_env, homes, workspace, self.node_modules, github_host=self.github_host,
                              catalog=self.catalog)
            return scratch, workspace, errlog, planner.plan(ctx.definition, ctx.grants, skills)
        except BaseException:
            _discard(errlog, scratch)
            raise

    @contextlib.asynccontextmanager
    async def open(self, ctx: ToolContext) -> AsyncIterator[McpToolbox]:
        homes = await self._homes(ctx.definition.name)
        scratch, workspace, errlog, launches = await asyncio.to_thread(self._prepare, ctx, homes, self._skills(ctx))
        hosts: dict[str, ServerHost] = {}
        box: McpToolbox | None = None
        try:
            hosts = await self._start(launches, errlog, ctx) if launches else {}
            hub = None
            if holds(ctx.grants, "hub", "read") or holds(ctx.grants, "hub", "write"):
                assert ctx.hub is not None and ctx.poster is not None
                hub = HubTools(ctx.hub, ctx.agent_key, ctx.grants, ctx.poster, ctx.activation_id, ctx.commented)
            box = McpToolbox(ctx.definition.name, hub, hosts, scratch, ctx.grants, self._shell(ctx, workspace))
            yield box
        finally:
            if box is not None:
                await box.aclose()
            await self._release(ctx.definition.name, launches, hosts)
            await asyncio.to_thread(_discard, errlog, scratch)

    def _shell(self, ctx: ToolContext, workspace: Path) -> ShellTools | None:
        """Shell and file tools for the native loop, only with `shell.enabled` (a CLI brings its own)."""
        shell = ctx.definition.config.capabilities.shell
        if not shell.enabled or ctx.definition.config.type != "native":
            return None
        return ShellTools(shell, workspace, self.sandbox(), ctx.activation_id)

    async def _release(self, agent: str, launches: list[Launch], hosts: dict[str, ServerHost]) -> None:
        closing = []
        for launch in launches:
            host = hosts.get(launch.name)
            if host is None:
                continue
            if launch.name in REUSABLE:
                self.pool.put(self.pool.key(agent, launch), host)
            else:
                closing.append(host.close())
        await asyncio.gather(*closing, return_exceptions=True)

    async def aclose(self) -> None:
        await self.pool.aclose()
        if self._sandbox is not None and self._own_sandbox:
            await self._sandbox.close()
        if self._root is not None:
            await asyncio.to_thread(shutil.rmtree, self._root, True)


def _discard(errlog: Any, scratch: Path) -> None:
    errlog.close()
    shutil.rmtree(scratch, True)

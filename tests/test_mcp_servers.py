"""MCP servers of an activation on real parts: the real filesystem and GitHub servers (the latter
against a fake GitHub API on loopback port 80), a probe server of our own, our hub server and the relay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from botburrow.definitions.parse import parse_agent
from botburrow.grants import GrantPolicy, PolicyGrantResolver
from botburrow.runtime.http import serve
from schemas.agent import AgentDefinition
from services.runner.loop import ToolOutcome
from services.runner.mcp.catalog import Catalog
from services.runner.mcp.servers import FILESYSTEM_ENTRY
from services.runner.mcptools import McpToolsets
from services.runner.seams import ToolContext
from services.runner.transcript import ToolCall
from tests.fixtures.setup_parts import needs_npm_package

Toolsets = Callable[..., McpToolsets]
GITHUB_TOKEN = "ghp_test0123456789abcdefTOKEN"
PLANTED = "planted-parent-secret-0042"

# A stdlib-only MCP server over stdio (the mcp import alone costs seconds): env dumps its environment,
# crash kills the process mid-call.
PROBE_SERVER = r"""
import json, os, sys, time

TOOLS = [{"name": n, "description": n, "inputSchema": {"type": "object", "properties": {}}}
         for n in ("env", "crash", "hang")]

def reply(msg_id, result=None, error=None):
    out = {"jsonrpc": "2.0", "id": msg_id}
    out.update({"error": error} if error else {"result": result})
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    msg = json.loads(line)
    method, msg_id = msg.get("method"), msg.get("id")
    if msg_id is None:
        continue
    if method == "initialize":
        reply(msg_id, {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                       "serverInfo": {"name": "probe", "version": "1"}})
    elif method == "tools/list":
        reply(msg_id, {"tools": TOOLS})
    elif method == "tools/call" and msg["params"]["name"] == "env":
        reply(msg_id, {"content": [{"type": "text", "text": json.dumps(dict(os.environ))}]})
    elif method == "tools/call" and msg["params"]["name"] == "crash":
        os._exit(3)
    elif method == "tools/call" and msg["params"]["name"] == "hang":
        time.sleep(3600)
    else:
        reply(msg_id, error={"code": -32601, "message": f"no method {method}"})
"""


def definition(name: str, grants: list[str], servers: list[Any]) -> AgentDefinition:
    config = {"version": "1.0.0", "name": name, "type": "native", "brain": {"model": "claude-sonnet-4-20250514"},
              "capabilities": {"grants": grants, "mcp_servers": servers}}
    return parse_agent(name, json.dumps(config).encode(), b"You are {{name}}.")


@dataclass
class Recorded:
    tools: list[tuple[ToolCall, ToolOutcome]] = field(default_factory=list)

    async def llm(self, *args: Any) -> None:
        return None

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None:
        self.tools.append((call, outcome))


def context(d: AgentDefinition, grants: set[str], workspace: Path | None = None,
            recorder: Recorded | None = None) -> ToolContext:
    return ToolContext(definition=d, agent_key="agent-key-unused", grants=grants, activation_id="act-1",
                       poster=None, hub=None, workspace=workspace, recorder=recorder)


def text_of(result: CallToolResult) -> str:
    """The text of a tool result's first content block: every tool here answers with text."""
    first = result.content[0]
    assert isinstance(first, TextContent), first
    return first.text


@dataclass
class FakeGitHub:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)


def outgoing_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@contextlib.asynccontextmanager
async def running_fake_github() -> AsyncIterator[FakeGitHub]:
    """GitHub's REST API for `get_me`; `--gh-host` drops any port, so it must be port 80. Not on loopback:
    the sandboxed server has a network namespace of its own, where 127.0.0.1 is its own (and the runner's
    loopback is refused), so on this host's outgoing address, which its route out reaches."""
    address = outgoing_address()
    if address is None:
        pytest.skip("no non-loopback address on this host for the fake GitHub API")
    fake = FakeGitHub(f"http://{address}")

    async def any_path(request: Request) -> JSONResponse:
        fake.seen.append({"method": request.method, "path": request.url.path, "headers": dict(request.headers),
                          "body": (await request.body()).decode(errors="replace")})
        if request.url.path.rstrip("/") == "/api/v3/user":
            return JSONResponse({"login": "octo-fake", "id": 42, "type": "User", "name": "Octo Fake"})
        return JSONResponse({"message": "Not Found"}, status_code=404)

    app = Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
    try:
        server = await serve(app, address, 80)
    except OSError as exc:
        pytest.skip(f"the fake GitHub API needs {address}:80 (github-mcp-server's --gh-host drops ports): {exc}")
    try:
        yield fake
    finally:
        await server.stop()


@pytest.fixture
async def fake_github() -> AsyncIterator[FakeGitHub]:
    async with running_fake_github() as fake:
        yield fake


@pytest.fixture
async def toolsets() -> AsyncIterator[Toolsets]:
    """McpToolsets(...) that are closed (with their idle pooled servers) after the test."""
    made: list[McpToolsets] = []

    def make(*args: Any, **kwargs: Any) -> McpToolsets:
        made.append(McpToolsets(*args, **kwargs))
        return made[-1]

    yield make
    for factory in made:
        await factory.aclose()


def probe_entry(tmp_path: Path, name: str = "probe") -> dict[str, Any]:
    """A catalog entry (MCP_CATALOG_FILE's form) for the probe server: the system Python (the sandbox shows
    /usr), the script's directory read-only, started by the grant `probe:use`."""
    script = tmp_path / "probe" / "probe_server.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(PROBE_SERVER)
    return {"command": "/usr/bin/python3", "args": ["-S", str(script)], "grants": ["probe:use"],
            "paths": [str(script.parent)]}


def catalog_of(**entries: dict[str, Any]) -> Catalog:
    return Catalog.parse(json.dumps({"servers": entries}))


@pytest.fixture
def secrets_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "github-pat").write_text(GITHUB_TOKEN)
    monkeypatch.setenv("BOTBURROW_PLANTED", PLANTED)  # in the runner's own env: must reach no server
    return {"SECRETS_DIR": str(secrets), "PATH": "/usr/bin:/bin", "BOTBURROW_PLANTED": PLANTED}


@needs_npm_package(FILESYSTEM_ENTRY)
async def test_filesystem_read_grant_is_read_only_and_confined(tmp_path: Path, toolsets: Toolsets) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("OUTSIDE-CONTENT")
    d = definition("reader", ["filesystem:read"], ["filesystem"])
    async with toolsets({}).open(context(d, {"filesystem:read"}, workspace)) as box:
        names = {spec.name for spec in box.specs()}
        assert "filesystem__read_text_file" in names
        assert not names & {"filesystem__write_file", "filesystem__edit_file", "filesystem__create_directory",
                            "filesystem__move_file"}
        inside = await box.call("filesystem__read_text_file", {"path": str(workspace / "notes.txt")})
        assert inside.content == "inside"
        outside = await box.call("filesystem__read_text_file", {"path": str(tmp_path / "outside.txt")})
        assert outside.is_error and "denied" in outside.content.lower()
        assert "OUTSIDE-CONTENT" not in outside.content
        write = await box.call("filesystem__write_file", {"path": str(workspace / "x.txt"), "content": "x"})
        assert write.is_error and write.server == "filesystem"
    assert not (workspace / "x.txt").exists()


@needs_npm_package(FILESYSTEM_ENTRY)
async def test_filesystem_write_grant_writes_only_inside_the_workspace(tmp_path: Path, toolsets: Toolsets) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    d = definition("writer", ["filesystem:read", "filesystem:write"], ["filesystem"])
    async with toolsets({}).open(context(d, {"filesystem:read", "filesystem:write"}, workspace)) as box:
        ok = await box.call("filesystem__write_file", {"path": str(workspace / "x.txt"), "content": "hello"})
        assert not ok.is_error, ok.content
        escape = await box.call("filesystem__write_file", {"path": str(tmp_path / "escape.txt"), "content": "x"})
        assert escape.is_error
    assert (workspace / "x.txt").read_text() == "hello" and not (tmp_path / "escape.txt").exists()


@pytest.mark.slow
async def test_github_token_reaches_the_github_server_and_nothing_else(
        fake_github: FakeGitHub, secrets_env: dict[str, str], tmp_path: Path, toolsets: Toolsets) -> None:
    grants = {"github:read", "filesystem:read", "probe:use"}
    d = definition("coder", sorted(grants), ["github", "filesystem", "probe"])
    recorder = Recorded()
    factory = toolsets(secrets_env, github_host=fake_github.url, catalog=catalog_of(probe=probe_entry(tmp_path)))
    async with factory.open(context(d, grants, tmp_path / "ws", recorder)) as box:
        assert box.servers == ["filesystem", "github", "probe"]
        me = await box.call("github__get_me", {})
        assert not me.is_error and "octo-fake" in me.content
        probe_env = json.loads((await box.call("probe__env", {})).content)
        specs = json.dumps([s.__dict__ for s in box.specs()])
    assert [r["headers"].get("authorization") for r in fake_github.seen if r["path"] == "/api/v3/user"] == \
        [f"Bearer {GITHUB_TOKEN}"]
    # Not another server (its env is built from nothing: no token, no planted runner variable) ...
    assert GITHUB_TOKEN not in json.dumps(probe_env) and PLANTED not in json.dumps(probe_env)
    assert set(probe_env) <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LC_CTYPE", "PWD"}
    # ... nor what the model sees, nor the events.
    assert GITHUB_TOKEN not in specs and GITHUB_TOKEN not in me.content
    assert recorder.tools == []


@pytest.mark.slow
async def test_policy_denying_github_write_gives_a_read_only_server(
        fake_github: FakeGitHub, secrets_env: dict[str, str], toolsets: Toolsets) -> None:
    d = definition("pusher", ["github:read", "github:write"], ["github"])
    resolver = PolicyGrantResolver(GrantPolicy.parse("default:\n  denied_grants: ['github:write']\n"))
    grants = resolver.resolve(d)
    assert grants == {"github:read"}
    async with toolsets(secrets_env, github_host=fake_github.url).open(context(d, grants)) as box:
        names = {s.name for s in box.specs()}
        host = box.hosts["github"]
        assert all(t.annotations and t.annotations.read_only_hint for t in host.tools)
        assert "github__get_me" in names and "github__create_issue" not in names
        denied = await box.call("github__create_issue", {"owner": "o", "repo": "r", "title": "t"})
        assert denied.is_error
    assert not [r for r in fake_github.seen if r["method"] != "GET"]


async def test_unknown_servers_are_logged_and_skipped(caplog: pytest.LogCaptureFixture, toolsets: Toolsets) -> None:
    d = definition("odd", ["hub:read"], ["kubernetes", "brave-search"])
    with caplog.at_level(logging.INFO):
        async with toolsets({}).open(context(d, {"kubernetes:read"})) as box:
            assert box.servers == [] and box.specs() == []
    records: list[Any] = caplog.records  # with the log call's `extra` fields as attributes
    skipped = [r for r in records if r.getMessage() == "mcp server skipped: not in the operator's catalog"]
    assert [r.server for r in skipped] == ["kubernetes"]
    assert any(r.getMessage() == "mcp server not started: no grant" and r.server == "brave" for r in records)


async def test_a_crashing_server_gives_error_results_not_a_hung_activation(tmp_path: Path, toolsets: Toolsets) -> None:
    ghost = {"command": str(tmp_path / "no-such-binary"), "grants": ["probe:use"]}
    catalog = catalog_of(probe=probe_entry(tmp_path), sleepy=probe_entry(tmp_path), ghost=ghost)
    d = definition("crashy", ["probe:use"], ["probe", "sleepy", "ghost"])
    recorder = Recorded()
    async with toolsets({}, call_timeout_s=0.5, catalog=catalog).open(context(d, {"probe:use"}, recorder=recorder)) \
            as box:
        # The server that never started is an error `tool` event; its tools are not offered.
        assert [(c.name, o.is_error, o.server) for c, o in recorder.tools] == [("ghost__start", True, "ghost")]
        assert box.servers == ["probe", "sleepy"]
        hung = await box.call("sleepy__hang", {})
        assert hung.is_error and "timed out" in hung.content
        crashed = await box.call("probe__crash", {})
        assert crashed.is_error and crashed.server == "probe"
        after = await box.call("probe__env", {})
        assert after.is_error and "probe" in after.content


async def test_hub_server_lists_and_calls_only_granted_tools() -> None:
    from mcp import MCPError

    from services.runner.mcp.hubserver import build_hub_server

    @dataclass
    class Backend:  # a stand-in for HubTools: records what reaches it
        calls: list[str] = field(default_factory=list)

        async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
            self.calls.append(name)
            return ToolOutcome(f"ok {name}")

    backend = Backend()
    async with Client(build_hub_server(backend, {"hub:read"})) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"get_thread", "search", "list_posts"}
        result = await client.call_tool("search", {"query": "rust"})
        assert text_of(result) == "ok hub__search"
        with pytest.raises(MCPError):
            await client.call_tool("create_comment", {"post_id": "p", "content": "c"})
    assert backend.calls == ["hub__search"]


@pytest.mark.slow
async def test_relay_forwards_only_the_filtered_tools_and_holds_no_secret(tmp_path: Path, toolsets: Toolsets) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_text("via relay")
    d = definition("cli", ["filesystem:read"], ["filesystem"])
    async with toolsets({}).open(context(d, {"filesystem:read"}, workspace)) as box:
        socket_path = await box.relay()
        relay = StdioServerParameters(command=sys.executable, args=["-m", "services.runner.mcp.relay", str(socket_path),
                                                                    "filesystem"], env={}, cwd=str(workspace))
        async with Client(relay) as client:
            tools = (await client.list_tools()).tools
            assert {t.name for t in tools} == {t.name for t in box.hosts["filesystem"].tools}
            assert all(t.annotations and t.annotations.read_only_hint for t in tools)
            read = await client.call_tool("read_text_file", {"path": str(workspace / "a.txt")})
            assert text_of(read) == "via relay" and not read.is_error
            write = await client.call_tool("write_file", {"path": str(workspace / "b.txt"), "content": "x"})
            assert write.is_error
    assert not (workspace / "b.txt").exists()


@needs_npm_package(FILESYSTEM_ENTRY)
async def test_idle_github_server_serves_only_the_same_agents_next_activation(
        secrets_env: dict[str, str], tmp_path: Path, toolsets: Toolsets) -> None:
    factory = toolsets(secrets_env)
    grants = {"github:read", "filesystem:read"}
    first, second = (definition(n, sorted(grants), ["github", "filesystem"]) for n in ("one", "two"))
    async with factory.open(context(first, grants, tmp_path / "a")) as box:
        github, filesystem = box.hosts["github"], box.hosts["filesystem"]
    async with factory.open(context(first, grants, tmp_path / "b")) as box:
        assert box.hosts["github"] is github  # same agent, same launch: reused
        assert box.hosts["filesystem"] is not filesystem  # rooted at the workspace: always fresh
    async with factory.open(context(second, grants, tmp_path / "c")) as box:
        assert box.hosts["github"] is not github  # never another agent's process
    async with factory.open(context(first, {"github:read", "github:write"}, tmp_path / "d")) as box:
        assert box.hosts["github"] is not github  # other grants, other launch (no --read-only)
    assert not filesystem.alive and github.alive
    await factory.aclose()
    assert not github.alive


async def test_a_skills_own_server_never_starts(tmp_path: Path, toolsets: Toolsets,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14: a skill's `mcp.server` (chosen by the words of a post) started with the runner's env."""
    from botburrow.definitions.parse import parse_skill

    entry = probe_entry(tmp_path)
    args = ", ".join(json.dumps(a) for a in entry["args"])
    skill = parse_skill("probing", f"""---
name: probing
description: Look at the environment
mcp:
  server:
    command: {entry["command"]}
    args: [{args}]
    env: {{PROBE_MODE: "1"}}
---
Use probing__env.
""".encode())
    d = parse_agent("skilled", json.dumps({"version": "1.0.0", "name": "skilled", "type": "native",
                                           "brain": {"model": "claude-sonnet-4-20250514"},
                                           "capabilities": {"skills": ["probing"]}}).encode(), b"x")
    factory = toolsets({}, skills=lambda: {"probing": skill}, catalog=catalog_of(probing=probe_entry(tmp_path)))
    with caplog.at_level(logging.WARNING):
        async with factory.open(context(d, {"probe:use"})) as box:
            assert box.servers == [] and box.specs() == []
    assert any("mcp server of a skill ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_hub_through_the_relay_uses_the_real_hub_tools(
        bus: Any, hub_emulator: Any, hub_client: Any, tmp_path: Path, toolsets: Toolsets) -> None:
    from schemas.agent import Limits
    from services.runner.posting import Poster

    key = hub_emulator.add_agent("relayer")
    note = hub_emulator.mention("relayer", "thread text for the relay")
    d = definition("relayer", ["hub:read"], [])
    poster = Poster(bus, hub_client, "relayer", key, Limits())
    ctx = ToolContext(definition=d, agent_key=key, grants={"hub:read"}, activation_id="act-relay", poster=poster,
                      hub=hub_client)
    async with toolsets({}).open(ctx) as box:
        assert box.servers == ["hub"]
        socket_path = await box.relay()
        relay = StdioServerParameters(command=sys.executable, args=["-m", "services.runner.mcp.relay", str(socket_path),
                                                                    "hub"], env={})
        async with Client(relay) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"get_thread", "search", "list_posts"}
            thread = await client.call_tool("get_thread", {"post_id": note.post_id})
            assert "thread text for the relay" in text_of(thread) and not thread.is_error
            denied = await client.call_tool("create_comment", {"post_id": note.post_id, "content": "x"})
            assert denied.is_error
    assert key not in json.dumps(thread.model_dump(mode="json"))

"""The real coding-agent CLIs, end to end: an activation through the runner's `Activation` with
`Deps(thinkers=cli_thinkers(...))`, the CLI talking to the strict scripted LLM (SSE) through the
model gateway, an MCP server on the runner side that alone holds its credential (reached from the
CLI's MCP config through a stdio relay over a unix socket), and the reply landing on the Hub emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from botburrow.cli.ops import load_run
from botburrow.definitions.parse import parse_agent
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.hub import HubClient
from botburrow.runtime.bus import Bus
from botburrow.settings import BY_NAME
from botburrow.tools import tools_dir
from schemas.agent import AgentDefinition
from schemas.events import ActivationMetrics, ActivationRequested
from services.runner import sandbox
from services.runner.activation import Activation, Deps
from services.runner.config import RunnerConfig, SandboxConfig
from services.runner.executors import (
    Completed,
    DirectRunner,
    McpEntry,
    SandboxRunner,
    cli_thinkers,
    find_binary,
)
from services.runner.executors.process import runner_for
from services.runner.gateway import ModelGateway
from services.runner.mcp.catalog import Catalog
from services.runner.mcptools import McpToolsets
from services.runner.modelaccess import ModelAccess
from services.runner.pricing import PriceTable
from services.runner.runlog import RunLog
from services.runner.sandbox.docker import DockerSandbox

pytestmark = pytest.mark.slow

CREDENTIAL = "facts-credential-" + uuid.uuid4().hex
FINGERPRINT = hashlib.sha256(CREDENTIAL.encode()).hexdigest()[:16]

# The runner-side MCP server: its credential comes from its own environment, which only it receives.
FACTS_SERVER = textwrap.dedent("""
    import hashlib, os
    from mcp.server import MCPServer
    srv = MCPServer("facts")
    @srv.tool()
    def lookup(topic: str) -> str:
        \"\"\"Look up a fact about a topic.\"\"\"
        fingerprint = hashlib.sha256(os.environ["FACTS_TOKEN"].encode()).hexdigest()[:16]
        return f"{topic} hold hands while sleeping (auth {fingerprint})"
    srv.run()
""")

# A `custom` executor: calls the gateway (OpenAI SSE with usage) and prints the answer; or misbehaves.
CUSTOM = textwrap.dedent("""
    import json, os, subprocess, sys, time, urllib.request
    prompt, mode = sys.argv[1], os.environ["MODE"]
    if mode == "crash":
        sys.exit("boom: custom executor crashed")
    if mode == "hang":
        child = subprocess.Popen(["sleep", "300"])
        open(os.environ["PID_FILE"], "w").write(str(child.pid))
        time.sleep(300)
    system = open(os.environ["BOTBURROW_SYSTEM_PROMPT_FILE"]).read()
    body = {"model": os.environ["BOTBURROW_MODEL"], "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}]}
    request = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", json.dumps(body).encode(),
                                     {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
    text = []
    with urllib.request.urlopen(request) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: {"):
                text += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
    if mode == "spend":
        time.sleep(300)  # the gateway's token budget is spent: the runner must stop us
    print("".join(text))
""")

# A `custom` executor that is a Node script: the sandbox must show the interpreter its `#!` line names
# (the docker base image has no node). Calls the gateway (OpenAI SSE) like CUSTOM.
NODE_AGENT = textwrap.dedent("""\
    #!/usr/bin/env node
    const body = {model: process.env.BOTBURROW_MODEL, stream: true, stream_options: {include_usage: true},
                  messages: [{role: "user", content: process.argv[2]}]};
    fetch(process.env.OPENAI_BASE_URL + "/chat/completions", {method: "POST", body: JSON.stringify(body),
          headers: {"Authorization": "Bearer " + process.env.OPENAI_API_KEY, "Content-Type": "application/json"}})
      .then(response => response.text())
      .then(text => {
        const parts = text.split("\\n").filter(line => line.startsWith("data: {"))
          .flatMap(line => JSON.parse(line.slice(6)).choices.map(c => c.delta.content || ""));
        console.log(parts.join(""));
      });
""")


class RecordingRunner:
    """The direct runner, noting each CLI's argv, environment and run directory files before it starts."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner or DirectRunner()
        self.seen: list[str] = []

    async def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float,
                  stop: asyncio.Event | None = None, binds: Sequence[Path] = (), label: str = "",
                  ports: Sequence[int] = ()) -> Completed:
        def snapshot() -> str:
            run_dir = binds[0]  # the CLI's run directory: its configs and HOME
            files = {str(p): p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file()}
            return json.dumps({"argv": list(argv), "env": dict(env), "files": files})

        self.seen.append(await asyncio.to_thread(snapshot))
        return await self.inner.run(argv, env=env, cwd=cwd, timeout_s=timeout_s, stop=stop, binds=binds,
                                    label=label, ports=ports)


class Definitions:
    def __init__(self) -> None:
        self.agents: dict[str, AgentDefinition] = {}

    def get(self, name: str) -> AgentDefinition | None:
        return self.agents.get(name)

    def skills(self) -> dict[str, Any]:
        return {}


def agent_yaml(name: str, type_: str, model: str, provider: str = "anthropic", extra: str = "",
               mcp: str = "[]") -> bytes:
    """`extra`: more top-level YAML (e.g. a custom `executor:` block)."""
    brain = f"provider: {provider}\n  model: {model}"
    if provider == "openai":
        brain += "\n  api_base: https://example.invalid/v1\n  api_key_env: OPENAI_API_KEY"
    return (f"name: {name}\ntype: {type_}\nbrain:\n  {brain}\n"
            f"capabilities:\n  grants: [hub:read, hub:write, facts:read]\n  mcp_servers: {mcp}\n{extra}"
            "behavior:\n  max_iterations: 6\n  limits:\n    min_interval_seconds: 0\n").encode()


class CliRig:
    def __init__(self, bus: Bus, hub: HubEmulator, llm: ScriptedLLM, root: Path) -> None:
        self.bus, self.hub, self.llm, self.root = bus, hub, llm, root
        # In a folder of its own: a sandbox shows the command's folder, and tmp_path is private (0700).
        (root / "bin").mkdir()
        (root / "bin" / "custom.py").write_text(CUSTOM)
        self.definitions = Definitions()
        self.keys: dict[str, str] = {}
        (root / "server.py").write_text(FACTS_SERVER)
        # `facts` comes from the operator's catalog (a config only names it); its credential is its secret.
        facts = {"command": sys.executable, "args": [str(root / "server.py")], "secret": "facts-token",
                 "grants": ["facts:read"], "paths": [str(root), sys.prefix, sys.base_prefix]}
        self.toolsets = McpToolsets({"PATH": os.environ["PATH"], "FACTS_TOKEN": CREDENTIAL},
                                    catalog=Catalog.parse(json.dumps({"servers": {"facts": facts}})))
        self.runner = RecordingRunner()
        self.gateway = ModelGateway()
        self.environ: dict[str, str] = {"PATH": os.environ["PATH"], "MODEL_BASE_URL_OVERRIDE": llm.url}
        self.client = HubClient(hub.url, system_key=hub.system_key)
        self.logs: pytest.LogCaptureFixture | None = None

    def add_agent(self, name: str, type_: str, model: str, *, facts: bool = True, **options: Any) -> None:
        """An agent with the `hub` server (hub:write too: it posts its answer) and the catalog's `facts`
        server, which alone holds CREDENTIAL."""
        self.keys[name] = self.hub.add_agent(name)
        yaml_text = agent_yaml(name, type_, model, mcp=json.dumps(["facts"] if facts else []), **options)
        self.definitions.agents[name] = parse_agent(name, yaml_text, b"You are {{name}}. Answer in one sentence.")

    def add_node_agent(self, name: str) -> None:
        script = self.root / "bin" / "agent.js"
        script.write_text(NODE_AGENT)
        script.chmod(0o755)
        executor = f"executor:\n  command: {script}\n  args: ['${{PROMPT}}']\n"
        self.add_agent(name, "custom", f"{name}-model", facts=False, provider="openai", extra=executor)

    def add_custom(self, name: str, mode: str) -> None:
        script = self.root / "bin" / "custom.py"
        executor = (f"executor:\n  command: {sys.executable}\n  args: [{script}, '${{PROMPT}}']\n"
                    f"  env: {{MODE: {mode}, PID_FILE: {self.root / 'pid'}}}\n")
        self.add_agent(name, "custom", f"{name}-model", facts=False, provider="openai", extra=executor)

    async def activate(self, agent: str, note: Any, *, timeout_s: float = 120, max_tokens: int = 200_000,
                       thinkers: Mapping[str, Any] | None = None) -> tuple[ActivationMetrics, list[Any]]:
        # The runner's config, as its stage builds it from these settings.
        config = RunnerConfig(timeout_s=timeout_s, max_tokens=max_tokens, tools_dir=tools_dir(self.environ),
                              access=ModelAccess(base_url_override=self.environ["MODEL_BASE_URL_OVERRIDE"]),
                              search_path=self.environ["PATH"])
        deps = Deps(bus=self.bus, hub=self.client, definitions=self.definitions, keys=self.keys,
                    prices=PriceTable.load(None), config=config, secrets=self.environ, runner_id="test-runner",
                    toolsets=self.toolsets,
                    thinkers=thinkers or cli_thinkers(SandboxConfig(), gateway=self.gateway, runner=self.runner))
        request = ActivationRequested(activation_id=f"act-{uuid.uuid4().hex[:10]}", agent=agent,
                                      kind="notification", priority="high", notifications=[note])
        metrics = await Activation(deps, request, RunLog(self.bus, request, 1, uuid.uuid4().hex)).run()
        return metrics, await load_run(self.bus, request.activation_id)

    async def close(self) -> None:
        await self.toolsets.aclose()
        await self.gateway.stop()
        await self.client.aclose()


@pytest.fixture
async def cli_rig(bus: Bus, hub_emulator: HubEmulator, scripted_llm: ScriptedLLM, tmp_path: Path,
                  caplog: pytest.LogCaptureFixture) -> AsyncIterator[CliRig]:
    caplog.set_level(logging.DEBUG)
    rig = CliRig(bus, hub_emulator, scripted_llm, tmp_path)
    rig.logs = caplog
    try:
        yield rig
    finally:
        await rig.close()


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for a reaper counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


def needs(binary: str) -> None:
    if find_binary(binary, tools_dir(), os.environ.get("PATH")) is None:
        pytest.skip(f"{binary} is not installed (./setup.sh installs it under tools/)")


def tool_script(tool_name: str, final: str) -> list[dict[str, Any]]:
    return [
        {"tool_calls": [{"name": tool_name, "arguments": {"topic": "otters"}}],
         "expect": {"tool_results": False}},
        {"text": final, "expect": {"tool_results": True, "contains": FINGERPRINT}},
    ]


def assert_clean(rig: CliRig, events: list[Any]) -> None:
    """The credential went to the MCP server only: not in the CLI's argv, environment or files, not in its
    model requests, not in the events. Nor did any agent's Hub key reach the CLI."""
    assert rig.runner.seen
    for seen in rig.runner.seen:
        assert CREDENTIAL not in seen
        assert not any(key in seen for key in rig.keys.values())
    assert CREDENTIAL not in json.dumps([msgspec.to_builtins(e) for e in events])
    assert CREDENTIAL not in json.dumps([msgspec.to_builtins(r) for r in rig.llm.requests])
    assert rig.logs is not None and CREDENTIAL not in rig.logs.text
    assert not rig.llm.violations, rig.llm.violations


def assert_posted(rig: CliRig, agent: str, note: Any, metrics: ActivationMetrics, events: list[Any],
                  text: str) -> None:
    assert metrics.outcome == "posted", metrics.error
    assert [c.content for c in rig.hub.comments_on(note.post_id) if c.author_name == agent] == [text]
    assert metrics.tokens_input > 0 and metrics.tokens_output > 0
    llm_events = [e for e in events if type(e).__name__ == "LlmTurn"]
    assert sum(e.input_tokens for e in llm_events) == metrics.tokens_input


async def test_claude_code_end_to_end(cli_rig: CliRig) -> None:
    needs("claude")
    cli_rig.add_agent("claudia", "claude-code", "cc-model")
    note = cli_rig.hub.mention("claudia", "tell me about otters")
    cli_rig.llm.set_script(tool_script("mcp__facts__lookup", "Otters hold hands."), key="cc-model")
    metrics, events = await cli_rig.activate("claudia", note)

    assert_posted(cli_rig, "claudia", note, metrics, events, "Otters hold hands.")
    (tool,) = [e for e in events if type(e).__name__ == "ToolCalled"]
    assert tool.name == "mcp__facts__lookup" and tool.server == "facts" and FINGERPRINT in tool.result
    assert_clean(cli_rig, events)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_goose_end_to_end(cli_rig: CliRig, provider: str) -> None:
    needs("goose")
    model = f"goose-{provider}-model"
    cli_rig.add_agent("gander", "goose", model, provider=provider)
    note = cli_rig.hub.mention("gander", "tell me about otters")
    cli_rig.llm.set_script(tool_script("facts__lookup", "Otters hold hands, says goose."), key=model)
    metrics, events = await cli_rig.activate("gander", note)

    assert_posted(cli_rig, "gander", note, metrics, events, "Otters hold hands, says goose.")
    (tool,) = [e for e in events if type(e).__name__ == "ToolCalled"]
    assert tool.name == "facts__lookup" and tool.server == "facts" and FINGERPRINT in tool.result
    assert_clean(cli_rig, events)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_opencode_end_to_end(cli_rig: CliRig, provider: str) -> None:
    needs("opencode")
    model = f"oc-{provider}-model"
    cli_rig.add_agent("coder", "opencode", model, provider=provider)
    note = cli_rig.hub.mention("coder", "tell me about otters")
    cli_rig.llm.set_script(tool_script("facts_lookup", "Otters hold hands, says opencode."), key=model)
    metrics, events = await cli_rig.activate("coder", note)

    assert_posted(cli_rig, "coder", note, metrics, events, "Otters hold hands, says opencode.")
    (tool,) = [e for e in events if type(e).__name__ == "ToolCalled"]
    assert tool.name == "facts_lookup" and FINGERPRINT in tool.result
    assert_clean(cli_rig, events)


async def test_aider_end_to_end_without_mcp(cli_rig: CliRig) -> None:
    needs("aider")
    cli_rig.add_agent("aidan", "aider", "aider-model", provider="openai")
    note = cli_rig.hub.mention("aidan", "tell me about otters")
    cli_rig.llm.set_script([{"text": "Otters hold hands, says aider.", "expect": {"contains": "otters"}}],
                           key="aider-model")
    metrics, events = await cli_rig.activate("aidan", note)

    assert_posted(cli_rig, "aidan", note, metrics, events, "Otters hold hands, says aider.")
    assert not [e for e in events if type(e).__name__ == "ToolCalled"]
    assert_clean(cli_rig, events)


async def test_custom_executor_gets_the_prompt_and_the_gateway(cli_rig: CliRig) -> None:
    cli_rig.add_custom("handmade", "answer")
    note = cli_rig.hub.mention("handmade", "tell me about otters")
    cli_rig.llm.set_script([{"text": "Custom otters.", "expect": {"contains": "Answer in one sentence."}}],
                           key="handmade-model")
    metrics, events = await cli_rig.activate("handmade", note)

    assert_posted(cli_rig, "handmade", note, metrics, events, "Custom otters.")
    assert "tell me about otters" in json.loads(cli_rig.runner.seen[0])["argv"][2]
    assert_clean(cli_rig, events)


async def test_a_missing_cli_fails_with_a_clear_reason(cli_rig: CliRig, tmp_path: Path) -> None:
    cli_rig.environ |= {"BOTBURROW_TOOLS_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"}
    cli_rig.add_agent("ghost", "claude-code", "ghost-model")
    metrics, _ = await cli_rig.activate("ghost", cli_rig.hub.mention("ghost", "hello"))
    assert metrics.outcome == "failed"
    assert metrics.error == "executor 'claude-code' is not available: CLI 'claude' is not installed here"


async def test_a_crash_fails_with_its_exit_code_and_stderr(cli_rig: CliRig) -> None:
    cli_rig.add_custom("crasher", "crash")
    metrics, _ = await cli_rig.activate("crasher", cli_rig.hub.mention("crasher", "hello"))
    assert metrics.outcome == "failed"
    assert metrics.error == "custom: exited with 1: boom: custom executor crashed"


async def test_a_hang_is_killed_with_its_whole_process_group(cli_rig: CliRig) -> None:
    cli_rig.add_custom("sleeper", "hang")
    metrics, _ = await cli_rig.activate("sleeper", cli_rig.hub.mention("sleeper", "hello"), timeout_s=10)
    assert (metrics.outcome, metrics.error) == ("failed", "timeout")
    assert await asyncio.to_thread(gone, int((cli_rig.root / "pid").read_text()))


async def test_spending_the_token_budget_stops_the_cli(cli_rig: CliRig) -> None:
    cli_rig.add_custom("spender", "spend")
    cli_rig.llm.set_script([{"text": "expensive", "usage": {"input_tokens": 900, "output_tokens": 200}}],
                           key="spender-model")
    metrics, events = await cli_rig.activate("spender", cli_rig.hub.mention("spender", "hello"), max_tokens=1000)
    assert (metrics.outcome, metrics.error, metrics.tokens_input) == ("failed", "max_tokens", 900)
    assert [type(e).__name__ for e in events] == ["RunStarted", "LlmTurn", "RunFailed"]


async def test_claude_code_api_error_fails_the_activation(cli_rig: CliRig) -> None:
    needs("claude")
    cli_rig.add_agent("unlucky", "claude-code", "unlucky-model")
    cli_rig.llm.set_script([{"error": {"status": 401, "message": "key rejected upstream"}}], key="unlucky-model")
    metrics, _ = await cli_rig.activate("unlucky", cli_rig.hub.mention("unlucky", "hello"), timeout_s=60)
    # Claude Code retries even a 401 (then meets the end of the script): it fails on an API error either way.
    assert metrics.error is not None, metrics.outcome
    assert metrics.outcome == "failed" and metrics.error.startswith("claude-code: "), metrics.error
    assert "API Error" in metrics.error


async def test_goose_server_error_with_exit_zero_still_fails(cli_rig: CliRig) -> None:
    needs("goose")
    cli_rig.add_agent("unlucky", "goose", "unlucky-model")
    cli_rig.llm.set_script([{"error": {"status": 500, "message": "upstream broke"}}], key="unlucky-model")
    metrics, _ = await cli_rig.activate("unlucky", cli_rig.hub.mention("unlucky", "hello"), timeout_s=60)
    # Goose exits 0 here, with the error as its answer text and no tokens.
    assert metrics.error is not None, metrics.outcome
    assert metrics.outcome == "failed" and metrics.error.startswith("goose: Ran into this error"), metrics.error
    assert "500" in metrics.error and "bbgw-" not in metrics.error


class BrokenRelay:
    """MCP wiring whose one server exits at once (as a relay that never comes up would)."""

    @contextlib.asynccontextmanager
    async def open(self, request: Any) -> AsyncIterator[list[McpEntry]]:
        yield [McpEntry("broken", "/bin/false")]


async def test_goose_without_its_mcp_server_fails_with_the_reason(cli_rig: CliRig) -> None:
    # Goose carries on without an extension that did not start (also one slower than its ~10 s start-up
    # window, as a relay on a loaded host can be): the agent must not act silently without its tools.
    needs("goose")
    cli_rig.add_agent("unlucky", "goose", "unlucky-model", facts=False)
    cli_rig.llm.set_script([{"text": "I had no tools."}], key="unlucky-model")
    thinkers = cli_thinkers(SandboxConfig(), gateway=cli_rig.gateway, runner=cli_rig.runner, mcp=BrokenRelay())
    metrics, _ = await cli_rig.activate("unlucky", cli_rig.hub.mention("unlucky", "hello"), thinkers=thinkers)
    assert metrics.outcome == "failed"
    assert metrics.error is not None
    assert metrics.error.startswith("goose: MCP server 'broken' did not start: "), metrics.error


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Any:
    """The sandbox backend named by the test's parameter (sync: it may set up the async docker fixtures)."""
    name = request.param
    if name == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if name == "docker":
        return request.getfixturevalue("docker_sandbox")
    return sandbox.create(name)


@pytest.mark.parametrize(("backend", "agent_type"), [
    ("none", "custom"), ("none", "claude-code"), ("bwrap", "custom"), ("bwrap", "claude-code"), ("bwrap", "aider"),
    ("bwrap", "node-script"), ("docker", "custom"), ("docker", "node-script"), ("docker", "claude-code"),
    ("docker", "goose"), ("docker", "opencode"), ("docker", "aider")], indirect=["backend"])
async def test_in_a_sandbox(cli_rig: CliRig, agent_type: str, backend: Any) -> None:
    """The same activation with the CLI run by a `services.runner.sandbox` backend; bwrap and docker have no
    network, so the gateway port is carried in over a unix socket (executors/loopback.py). Docker runs
    the debootstrap base image with the runner's toolchain shown read-only at its own paths."""
    cli_rig.runner = RecordingRunner(SandboxRunner(backend))
    if agent_type == "custom":
        cli_rig.add_custom("boxed", "answer")
        cli_rig.llm.set_script([{"text": "Boxed otters."}], key="boxed-model")
    elif agent_type == "node-script":
        needs("node")
        cli_rig.add_node_agent("boxed")
        cli_rig.llm.set_script([{"text": "Boxed otters."}], key="boxed-model")
    elif agent_type == "aider":
        needs("aider")
        cli_rig.add_agent("boxed", "aider", "boxed-model", provider="openai")
        cli_rig.llm.set_script([{"text": "Boxed otters."}], key="boxed-model")
    elif agent_type == "goose":
        needs("goose")
        cli_rig.add_agent("boxed", "goose", "boxed-model")
        cli_rig.llm.set_script(tool_script("facts__lookup", "Boxed otters."), key="boxed-model")
    elif agent_type == "opencode":
        needs("opencode")
        cli_rig.add_agent("boxed", "opencode", "boxed-model", provider="openai")
        cli_rig.llm.set_script(tool_script("facts_lookup", "Boxed otters."), key="boxed-model")
    else:
        needs("claude")
        cli_rig.add_agent("boxed", "claude-code", "boxed-model")
        cli_rig.llm.set_script(tool_script("mcp__facts__lookup", "Boxed otters."), key="boxed-model")
    note = cli_rig.hub.mention("boxed", "tell me about otters")
    metrics, events = await cli_rig.activate("boxed", note)
    await backend.close()

    assert_posted(cli_rig, "boxed", note, metrics, events, "Boxed otters.")
    assert_clean(cli_rig, events)


def test_sandbox_backend_docker_gets_a_docker_sandbox_runner() -> None:
    runner = runner_for(SandboxConfig(backend="docker", docker_host="unix:///nowhere/docker.sock"))
    assert isinstance(runner, SandboxRunner) and isinstance(runner.sandbox, DockerSandbox)
    assert runner.sandbox.image == BY_NAME["SANDBOX_IMAGE"].default
    assert runner.sandbox.docker_host == "unix:///nowhere/docker.sock"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
async def test_sandbox_memory_mb_bounds_a_cli_sandbox(tmp_path: Path) -> None:
    hog = [sys.executable, "-c", "b = bytearray(300 << 20); print('allocated')"]
    outcomes = {}
    for memory_mb in ("128", "1024"):
        runner = runner_for(SandboxConfig(backend="bwrap", memory_mb=int(memory_mb)))
        try:
            done = await runner.run(hog, env={"PATH": os.environ["PATH"]}, cwd=tmp_path, timeout_s=60,
                                    binds=[Path(sys.prefix), Path(sys.base_prefix)])
        finally:
            await runner.sandbox.close()
        outcomes[memory_mb] = (done.returncode, done.stdout.decode().strip())
    assert outcomes["1024"] == (0, "allocated")
    assert outcomes["128"][0] != 0 and outcomes["128"][1] == ""

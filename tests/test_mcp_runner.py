"""MCP tools inside real activations: the runner in-process (its Deps built here with the policy
resolver and the MCP toolset), real NATS, the Hub emulator, the scripted LLM, real MCP servers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from botburrow.cli.ops import load_run
from botburrow.cli.read import read_all
from botburrow.definitions import bucket
from botburrow.definitions.directory import AgentDirectory
from botburrow.definitions.parse import parse_agent, parse_skill
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.grants import GrantPolicy, PolicyGrantResolver
from botburrow.hub.client import HubClient
from botburrow.logs import JsonFormatter
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import StageContext, run_stage
from botburrow.secrets import AgentKeys
from schemas.events import ActivationRequested
from services.runner.activation import Deps
from services.runner.config import RunnerConfig
from services.runner.mcp.catalog import Catalog
from services.runner.mcptools import McpToolsets
from services.runner.modelaccess import ModelAccess
from services.runner.pricing import PriceTable
from services.runner.stage import Runner
from streams import subjects
from tests.test_mcp_servers import GITHUB_TOKEN, FakeGitHub, catalog_of, probe_entry, running_fake_github

END_TIMEOUT_S = 30.0
SKILLS_DIR = Path(__file__).parent / "data" / "published-agent-definitions" / "skills"


@pytest.fixture
async def fake_github() -> AsyncIterator[FakeGitHub]:
    async with running_fake_github() as fake:
        yield fake


def published_skills() -> list[Any]:
    return [parse_skill(folder.name, (folder / "SKILL.md").read_bytes()) for folder in sorted(SKILLS_DIR.iterdir())]


class McpRig:
    """Like tests/fixtures/runner.py's Rig, but the stage body builds Deps with our grants and toolsets."""

    def __init__(self, bus: Bus, nats_url: str, hub: HubEmulator, llm: ScriptedLLM, tmp_path: Path) -> None:
        self.bus, self.nats_url, self.hub, self.llm, self.tmp_path = bus, nats_url, hub, llm, tmp_path
        self.keys: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def add_agent(self, name: str, capabilities: dict[str, Any]) -> None:
        self.keys[name] = self.hub.add_agent(name)
        config = {"version": "1.0.0", "name": name, "type": "native",
                  "brain": {"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                  "capabilities": capabilities,
                  "behavior": {"respond_to_mentions": True, "max_iterations": 6, "limits": {"min_interval_seconds": 0}}}
        definition = parse_agent(name, json.dumps(config).encode(), b"You are {{name}}.")
        kv = await self.bus.kv(bucket.BUCKET)
        await kv.put(bucket.key("agent", name), bucket.encode(definition))

    async def add_published_skills(self) -> None:
        kv = await self.bus.kv(bucket.BUCKET)
        for skill in await asyncio.to_thread(published_skills):
            await kv.put(bucket.key("skill", skill.name), bucket.encode(skill))

    async def add_skill(self, name: str, text: str) -> None:
        kv = await self.bus.kv(bucket.BUCKET)
        await kv.put(bucket.key("skill", name), bucket.encode(parse_skill(name, text.encode())))

    async def start(self, policy: str | None, github_host: str | None, catalog: Catalog | None = None) -> None:
        secrets = self.tmp_path / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "github-pat").write_text(GITHUB_TOKEN)
        environ = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
                   "NATS_URL": self.nats_url, "HUB_URL": self.hub.url, "HUB_API_KEY": self.hub.system_key,
                   "BOTBURROW_AGENT_KEYS": json.dumps(self.keys), "SECRETS_DIR": str(secrets),
                   "MODEL_BASE_URL_OVERRIDE": self.llm.url, "METRICS_PORT": "0", "RUNNER_CONCURRENCY": "2"}
        resolver = PolicyGrantResolver(GrantPolicy.parse(policy) if policy else None)

        async def body(ctx: StageContext) -> None:
            hub = HubClient(ctx.settings.hub_url, system_key=ctx.environ["HUB_API_KEY"])
            directory = await AgentDirectory.open(ctx.bus)
            toolsets = McpToolsets(ctx.environ, github_host=github_host, catalog=catalog)
            deps = Deps(bus=ctx.bus, hub=hub, definitions=directory, keys=AgentKeys(ctx.environ),
                        prices=PriceTable.load(None), secrets=ctx.environ,
                        config=RunnerConfig(timeout_s=60, access=ModelAccess(base_url_override=self.llm.url)),
                        runner_id=f"{socket.gethostname()}-t",
                        grants=resolver, toolsets=toolsets)
            try:
                await Runner(ctx, deps).run()
            finally:
                await toolsets.aclose()
                await directory.close()
                await hub.aclose()

        self.task = asyncio.create_task(run_stage("runner", body, environ=environ, stop=self.stop))

    async def activate(self, agent: str, note: Any) -> tuple[str, list[Any]]:
        activation_id = f"act-{uuid.uuid4().hex[:10]}"
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Any) -> None:
            end = msg.subject.rsplit(".", 1)[-1]
            if end in ("completed", "failed") and not done.done():
                done.set_result(end)

        sub = await self.bus.nc.subscribe(f"agents.run.{subjects.token(agent)}.{subjects.token(activation_id)}.*",
                                          cb=on_msg)
        request = ActivationRequested(activation_id=activation_id, agent=agent, kind="notification",
                                      priority="high", notifications=[note])
        await self.bus.publish(subjects.activation("high", agent), request, msg_id=f"act:{activation_id}")
        try:
            end = await asyncio.wait_for(done, END_TIMEOUT_S)
        finally:
            await sub.unsubscribe()
        return end, await load_run(self.bus, activation_id)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 20)


@pytest.fixture
async def rig(bus: Bus, nats_url: str, hub_emulator: HubEmulator, scripted_llm: ScriptedLLM,
              tmp_path: Path) -> AsyncIterator[McpRig]:
    r = McpRig(bus, nats_url, hub_emulator, scripted_llm, tmp_path)
    try:
        yield r
    finally:
        await r.close()


def event_dump(events: list[Any]) -> str:
    import msgspec

    return "\n".join(msgspec.json.encode(e).decode() for e in events)


@pytest.mark.slow
async def test_mcp_tools_in_an_activation_never_leak_the_token(
        rig: McpRig, fake_github: FakeGitHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await rig.add_agent("mcp-coder", {"grants": ["hub:read", "hub:write", "github:read", "github:write", "probe:use"],
                                  "mcp_servers": ["github", "probe"]})
    note = rig.hub.mention("mcp-coder", "who are you on github?")
    rig.llm.set_script([
        {"tool_calls": [{"name": "github__get_me", "arguments": {}},
                        {"name": "github__create_issue", "arguments": {"owner": "o", "repo": "r", "title": "t"}}]},
        {"tool_calls": [{"name": "probe__env", "arguments": {}}, {"name": "probe__crash", "arguments": {}}]},
        {"tool_calls": [{"name": "probe__env", "arguments": {}}]},
        {"text": "I am octo-fake."},
    ])
    # The policy takes github:write away: the server runs --read-only and create_issue is not offered.
    await rig.start("default:\n  denied_grants: ['github:write']\n", fake_github.url,
                    catalog_of(probe=probe_entry(tmp_path)))
    with caplog.at_level(logging.DEBUG):
        end, events = await rig.activate("mcp-coder", note)

    assert end == "completed", events[-1]
    tools = [(e.name, e.server, e.error is not None) for e in events if type(e).__name__ == "ToolCalled"]
    assert tools == [("github__get_me", "github", False), ("github__create_issue", "", True),
                     ("probe__env", "probe", False), ("probe__crash", "probe", True), ("probe__env", "probe", True)]
    assert "octo-fake" in next(e.result for e in events if getattr(e, "name", "") == "github__get_me")
    assert [c.content for c in rig.hub.comments_on(note.post_id) if c.author_name == "mcp-coder"] == ["I am octo-fake."]
    def calls(server: str, status: str) -> float:
        labels = {"agent_id": "mcp-coder", "server": server, "status": status}
        return REGISTRY.get_sample_value("botburrow_mcp_calls_total", labels) or 0.0

    assert (calls("github", "ok"), calls("probe", "ok")) == (1.0, 1.0)
    assert calls("probe", "error") + calls("probe", "unavailable") == 2.0
    # The token reached the fake GitHub API ...
    assert {r["headers"].get("authorization") for r in fake_github.seen} == {f"Bearer {GITHUB_TOKEN}"}
    # ... and nothing else: model requests, events, logs as written, DLQ, the Hub.
    requests = json.dumps([r.body for r in rig.llm.requests])
    offered = [tool["name"] for tool in rig.llm.requests[0].body["tools"]]
    assert "github__get_me" in offered and "github__create_issue" not in offered
    formatter = JsonFormatter("runner")
    logs = "\n".join(formatter.format(r) for r in caplog.records)
    dlq = "\n".join(m.data.decode() for m in await read_all(rig.bus, "DLQ", "agents.dlq.*"))
    hub_text = json.dumps([c.content for c in rig.hub.comments_on(note.post_id)])
    for name, text in {"model requests": requests, "events": event_dump(events), "logs": logs, "dlq": dlq,
                       "hub": hub_text}.items():
        assert GITHUB_TOKEN not in text, name


async def test_a_skill_text_reaches_the_model_request(rig: McpRig) -> None:
    await rig.add_published_skills()
    await rig.add_agent("poster", {"grants": ["hub:read", "hub:write"], "skills": ["hub-search"]})
    note = rig.hub.mention("poster", "please publish a summary")  # `publish` triggers hub-post
    rig.llm.set_script([{"text": "SKIP"}])
    await rig.start(None, None)
    end, _ = await rig.activate("poster", note)

    assert end == "completed"
    system = json.dumps(rig.llm.requests[0].body["system"])
    assert "## Available Skills" in system and "### hub-search" in system and "### hub-post" in system
    assert "This skill teaches you how to create posts and comments in Botburrow Hub." in system
    assert "### budget-check" not in system


async def test_a_trigger_word_in_a_post_starts_no_server(rig: McpRig, tmp_path: Path) -> None:
    """Issue 14: a skill's server started because a notification contained its trigger word. Now the skill
    is chosen (its text reaches the model) and its server, even one the catalog knows, never starts."""
    marker = tmp_path / "skill-server-ran"
    await rig.add_skill("trapdoor", f"""---
name: trapdoor
description: Opens the trapdoor
triggers:
  keywords: [trapdoor]
mcp:
  server:
    command: /bin/sh
    args: ["-c", "touch {marker}"]
---
The trapdoor skill.
""")
    await rig.add_agent("chooser", {"grants": ["hub:read", "hub:write", "probe:use"]})
    note = rig.hub.mention("chooser", "please open the trapdoor")
    rig.llm.set_script([{"text": "SKIP"}])
    await rig.start(None, None, catalog_of(trapdoor=probe_entry(tmp_path)))
    end, _ = await rig.activate("chooser", note)

    assert end == "completed"
    assert "### trapdoor" in json.dumps(rig.llm.requests[0].body["system"])
    offered = [tool["name"] for tool in rig.llm.requests[0].body.get("tools", [])]
    assert not [name for name in offered if name.startswith("trapdoor__")] and not marker.exists()

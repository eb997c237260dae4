"""Agent memory end to end (issue 19): the runner on real NATS, SeaweedFS, the Hub emulator and the scripted
LLM. ron tells a memory agent a fact in one thread; in a new thread the agent's model request contains it.
Not for an agent without memory; across a runner restart; with two runners; the secret ron pasted is never
stored; memory.enabled false writes nothing; a missing bucket costs the activation nothing but memory."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from botburrow.cli import timeline
from botburrow.cli.ops import load_run
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.tools import tools_dir
from schemas.agent import AgentDefinition
from schemas.events import ActivationRequested, MemoryUsed
from services.runner.activation import Activation, Deps
from services.runner.config import RunnerConfig, SandboxConfig
from services.runner.executors import cli_thinkers
from services.runner.memory.service import AgentMemory
from services.runner.memory.store import S3Store
from services.runner.modelaccess import ModelAccess
from services.runner.offline import rerun_offline
from services.runner.pricing import PriceTable
from services.runner.recorded import recording_from
from services.runner.runlog import RunLog
from tests.fixtures.runner import Rig, agent_yaml
from tests.fixtures.s3 import S3Server
from tests.test_executors import CliRig, cli_rig, needs  # noqa: F401  (cli_rig: the fixture)

pytestmark = pytest.mark.slow  # SeaweedFS, and a runner per phase

FACT = "the staging database is called marmot-7"
PLANTED = "ghp_" + "Z9" * 14  # a GitHub token shape the runner never read: redacted by pattern
MEMORY_BLOCK = """memory:
  enabled: {enabled}
  remember:
    conversations_with: [ron]
    decisions_made: true
  max_size_mb: 1
  retrieval:
    strategy: {strategy}
    max_context_items: 5
    relevance_threshold: {threshold}
"""


async def add_memory_agent(rig: Rig, name: str, *, enabled: bool = True, strategy: str = "keyword",
                           threshold: float = 0.0) -> None:
    rig.keys[name] = rig.hub.add_agent(name)
    block = MEMORY_BLOCK.format(enabled=str(enabled).lower(), strategy=strategy, threshold=threshold)
    config = agent_yaml(name) + block.encode()
    definition = parse_agent(name, config, b"You are {{name}}. Be brief.")
    kv = await rig.bus.kv(bucket.BUCKET)
    await kv.put(bucket.key("agent", name), bucket.encode(definition))


def memory_env(s3: S3Server, prefix: str) -> dict[str, str]:
    return {"MEMORY_STORE": f"s3://{s3.bucket}/{prefix.rstrip('/')}", "MEMORY_S3_ENDPOINT": s3.endpoint,
            "MEMORY_ACCESS_KEY": s3.access_key, "MEMORY_SECRET_KEY": s3.secret_key}


def bodies(rig: Rig) -> list[str]:
    return [json.dumps(r.body) for r in rig.llm.requests]


def memory_events(events: list[Any], op: str) -> list[MemoryUsed]:
    return [e for e in events if isinstance(e, MemoryUsed) and e.op == op]


def stored(s3: S3Server, prefix: str, agent: str) -> dict[str, str]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}memory/{agent}/").get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read().decode() for o in listed}


async def tell_then_ask(rig: Rig, agent: str) -> tuple[list[Any], list[Any]]:
    """ron states the fact in one thread, then asks in a new one; the events of both activations."""
    told = rig.hub.mention(agent, f"remember this: {FACT}. My token is {PLANTED}", sender="ron")
    _, end, first = await rig.activate(agent, [told])
    assert end == "completed"
    asked = rig.hub.mention(agent, "what is the staging database called?", sender="ron")
    _, end, second = await rig.activate(agent, [asked])
    assert end == "completed"
    return first, second


async def test_a_fact_told_in_one_thread_is_in_the_next_threads_request(rig: Rig, s3: S3Server) -> None:
    prefix = s3.new_prefix()
    await add_memory_agent(rig, "mem-agent")
    rig.llm.set_script([
        {"text": "Noted."},
        {"text": '{"kind": "decision", "text": "ron decided staging uses marmot-7"}'},  # the extraction call
        {"text": "It is marmot-7."},
        {"text": "NONE"},
    ])
    await rig.start(None, **memory_env(s3, prefix))
    first, second = await tell_then_ask(rig, "mem-agent")
    (write,) = memory_events(first, "write")
    assert {i.kind for i in write.items} == {"conversation", "decision"} and write.input_tokens > 0
    # The extraction's tokens are the activation's: its metrics count both calls.
    assert first[-1].metrics.iterations == 2
    (retrieve,) = memory_events(second, "retrieve")
    assert any(FACT in i.text for i in retrieve.items) and retrieve.reason is None
    shown = timeline.render(second, whole=True)  # `botburrow show`
    assert "memory     retrieve 2 (keyword), best 1.00" in shown, shown
    third_request = bodies(rig)[2]
    assert "What you remember" in third_request and FACT in third_request
    # The memory is in the user message (the variable part), not in the cached system prompt.
    assert FACT not in json.dumps(rig.llm.requests[2].body.get("system"))
    # The cached prefix (tools, then the system prompt) is the same bytes with memories as without them.
    first_prefix, third_prefix = (json.dumps([r.body.get("tools"), r.body.get("system")])
                                  for r in (rig.llm.requests[0], rig.llm.requests[2]))
    assert first_prefix == third_prefix
    objects = stored(s3, prefix, "mem-agent")
    assert len(objects) >= 2 and all(PLANTED not in text for text in objects.values())
    assert any("[REDACTED:github-token]" in text for text in objects.values())
    assert all(PLANTED not in b for b in bodies(rig)[2:])
    # Offline, the recorded retrieval is given again (no store is read); a shadow `memory` block with the
    # threshold at 1.0 would have been given only the best keyword match of them.
    recording = recording_from(second)
    definition = parse_agent("mem-agent", agent_yaml("mem-agent") + MEMORY_BLOCK.format(
        enabled="true", strategy="keyword", threshold=0.0).encode(), b"You are {{name}}. Be brief.")
    report = await rerun_offline(recording, definition, {})
    given = len(memory_events(second, "retrieve")[0].items)
    assert report.followed and any("memory: the recorded retrieval" in n and f"takes {given} of them" in n
                                   for n in report.notes), report.notes
    stricter = parse_agent("mem-agent", agent_yaml("mem-agent") + MEMORY_BLOCK.format(
        enabled="true", strategy="keyword", threshold=1.0).encode(), b"You are {{name}}. Be brief.")
    shadow = await rerun_offline(recording, stricter, {}, baseline=definition, shadow=True)
    assert any("takes 1 of them" in n for n in shadow.notes)  # the best keyword match is 1.0: still kept


async def test_no_memory_without_the_block_nor_when_disabled(rig: Rig, s3: S3Server) -> None:
    prefix = s3.new_prefix()
    await rig.add_agent("plain-agent")
    await add_memory_agent(rig, "off-agent", enabled=False)
    rig.llm.set_script([{"text": "Noted."}, {"text": "No idea."}, {"text": "Noted."}, {"text": "No idea."}])
    await rig.start(None, **memory_env(s3, prefix))
    for agent in ("plain-agent", "off-agent"):
        first, second = await tell_then_ask(rig, agent)
        assert not memory_events(first + second, "write") and not memory_events(first + second, "retrieve")
        assert stored(s3, prefix, agent) == {}
    assert all(FACT not in b for b in (bodies(rig)[1], bodies(rig)[3]))


async def test_memory_survives_a_runner_restart_and_is_shared_by_two_runners(rig: Rig, s3: S3Server) -> None:
    prefix = s3.new_prefix()
    await add_memory_agent(rig, "mem-restart", strategy="embedding_search", threshold=0.6)
    rig.llm.set_script([{"text": "Noted."}, {"text": "NONE"}])
    await rig.start(None, **memory_env(s3, prefix))
    told = rig.hub.mention("mem-restart", f"remember this: {FACT}", sender="ron")
    await rig.activate("mem-restart", [told])
    await rig.close()
    # A new runner process state (and a second runner beside it): both read what the first one wrote.
    second = Rig(rig.bus, rig.nats_url, rig.hub, rig.llm)
    second.keys = dict(rig.keys)
    rig.stop.clear()
    rig.llm.set_script([{"text": "marmot-7"}, {"text": "NONE"}, {"text": "marmot-7"}, {"text": "NONE"}])
    try:
        await rig.start(None, **memory_env(s3, prefix))
        await second.start(None, **memory_env(s3, prefix))
        for _ in range(2):
            asked = rig.hub.mention("mem-restart", "what is the staging database called?", sender="ron")
            _, _, events = await rig.activate("mem-restart", [asked])
            (retrieve,) = memory_events(events, "retrieve")
            assert any(FACT in i.text for i in retrieve.items), retrieve
        assert sum(FACT in b for b in bodies(rig)[2:]) == 2
    finally:
        await second.close()


async def test_a_missing_bucket_means_no_memory_and_a_reason(rig: Rig, s3: S3Server) -> None:
    await add_memory_agent(rig, "mem-nobucket")
    rig.llm.set_script([{"text": "Noted."}, {"text": "NONE"}])
    env = memory_env(s3, "x/") | {"MEMORY_STORE": "s3://no-such-bucket-here"}
    await rig.start(None, **env)
    told = rig.hub.mention("mem-nobucket", f"remember this: {FACT}", sender="ron")
    _, end, events = await rig.activate("mem-nobucket", [told])
    assert end == "completed" and rig.replies_by("mem-nobucket", told.post_id)
    (retrieve,) = memory_events(events, "retrieve")
    assert retrieve.reason and "store unavailable" in retrieve.reason and not retrieve.items
    (write,) = memory_events(events, "write")
    assert write.reason and not write.items


PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions" / "agents" / "claude-coder-1"


def claude_coder_1() -> AgentDefinition:
    """The published claude-coder-1 (claude-code, its brain and its `memory` block as published), without what
    this machine cannot start for it: the github and filesystem MCP servers, shell, and skills not loaded here."""
    config = yaml.safe_load((PUBLISHED / "config.yaml").read_text())
    config["capabilities"].pop("mcp_servers", None)
    config["capabilities"].pop("shell", None)
    config["capabilities"].pop("skills", None)
    config["behavior"]["limits"]["min_interval_seconds"] = 0
    config["memory"]["retrieval"]["strategy"] = "keyword"  # ranked by terms: the test asks with the fact's words
    return parse_agent("claude-coder-1", yaml.safe_dump(config).encode(), (PUBLISHED / "system-prompt.md").read_bytes())


async def test_claude_coder_1_remembers_through_the_real_claude_code_cli(cli_rig: CliRig,  # noqa: F811
                                                                        s3: S3Server) -> None:
    needs("claude")
    definition = claude_coder_1()
    assert definition.config.type == "claude-code" and definition.config.memory is not None
    cli_rig.keys[definition.name] = cli_rig.hub.add_agent(definition.name)
    cli_rig.definitions.agents[definition.name] = definition
    model = definition.config.brain.model
    # Claude Code's calls and the runner's extraction call both use the agent's model: one script, in turn.
    cli_rig.llm.set_script([{"text": "Noted, marmot-7."}, {"text": "NONE"}, {"text": "It is marmot-7."},
                            {"text": "NONE"}], key=model)
    prefix = s3.new_prefix()
    store = S3Store(s3.bucket, prefix, endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key,
                    region="us-east-1")
    memory = AgentMemory(store, open_model=_scripted_model(cli_rig), retriever=None)
    try:
        told = cli_rig.hub.mention(definition.name, f"remember this: {FACT}", sender="ron")
        first = await _activate_cli(cli_rig, definition.name, told, memory)
        assert first[0].outcome == "posted", first[0].error
        assert [i.kind for i in memory_events(first[1], "write")[0].items] == ["conversation"]
        asked = cli_rig.hub.mention(definition.name, "what is the staging database called?", sender="ron")
        second = await _activate_cli(cli_rig, definition.name, asked, memory)
        assert second[0].outcome == "posted", second[0].error
        (retrieve,) = memory_events(second[1], "retrieve")
        assert any(FACT in i.text for i in retrieve.items)
        cli_requests = [json.dumps(r.body) for r in cli_rig.llm.requests if r.model == model]
        assert sum(FACT in b and "What you remember" in b for b in cli_requests) >= 1
    finally:
        await memory.aclose()


def _scripted_model(rig: CliRig) -> Any:
    async def open_model(definition: AgentDefinition) -> Any:
        from services.runner.seams import load_providers

        providers = await load_providers()
        return providers.model_for(definition.config.brain, ModelAccess(base_url_override=rig.llm.url), rig.environ,
                                   timeout_s=30)

    return open_model


async def _activate_cli(rig: CliRig, agent: str, note: Any, memory: AgentMemory) -> tuple[Any, list[Any]]:
    config = RunnerConfig(timeout_s=120, max_tokens=200_000, tools_dir=tools_dir(rig.environ),
                          access=ModelAccess(base_url_override=rig.environ["MODEL_BASE_URL_OVERRIDE"]),
                          search_path=rig.environ["PATH"])
    deps = Deps(bus=rig.bus, hub=rig.client, definitions=rig.definitions, keys=rig.keys, prices=PriceTable.load(None),
                config=config, secrets=rig.environ, runner_id="test-runner", toolsets=rig.toolsets,
                thinkers=cli_thinkers(SandboxConfig(), gateway=rig.gateway, runner=rig.runner), memory=memory)
    request = ActivationRequested(activation_id=f"act-{uuid.uuid4().hex[:10]}", agent=agent, kind="notification",
                                  priority="high", notifications=[note])
    metrics = await Activation(deps, request, RunLog(rig.bus, request, 1, uuid.uuid4().hex)).run()
    return metrics, await load_run(rig.bus, request.activation_id)

"""Prompt caching end to end (issue 18): the native loop's stable prefix and its cache breakpoints, the
usage of both providers normalised (`tokens_input` uncached, cache writes and reads beside it) and priced,
and a CLI's cached requests through the gateway, all against the scripted LLM's cache model."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from botburrow.cli.timeline import render
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent, parse_skill
from botburrow.doubles.scripted_llm import ScriptedLLM
from schemas.agent import Brain
from schemas.events import ActivationMetrics, LlmTurn
from services.metrics.reporter import observe
from services.runner import context
from services.runner.gateway import ModelGateway
from services.runner.loop import Budget, ToolOutcome
from services.runner.modelaccess import ModelAccess
from services.runner.pricing import PriceTable
from services.runner.providers import AnthropicModel
from services.runner.transcript import AssistantTurn, ModelReply, ToolCall, ToolResult, ToolResults, ToolSpec, UserText
from tests.fixtures.runner import OPENAI_BRAIN, Rig, agent_yaml, metrics_of
from tests.test_executors import CliRig, cli_rig, needs, tool_script  # noqa: F401 (cli_rig: a fixture)
from tests.test_executors import agent_yaml as cli_agent_yaml

# ~6,000 characters: about 1,500 estimated tokens, past Anthropic's 1,024-token minimum.
LONG_PROMPT = "You are {{name}}, a careful reviewer of pull requests. Explain what you check and why. " * 70
SONNET = "claude-sonnet-4-20250514"


async def add_long_agent(rig: Rig, name: str, **options: Any) -> None:
    rig.keys[name] = rig.hub.add_agent(name)
    definition = parse_agent(name, agent_yaml(name, **options), LONG_PROMPT.encode())
    kv = await rig.bus.kv(bucket.BUCKET)
    await kv.put(bucket.key("agent", name), bucket.encode(definition))


def prefix_of(body: dict[str, Any]) -> str:
    """The request's stable prefix as sent: tools and system (Anthropic) or the system message (OpenAI)."""
    if "system" in body:
        return json.dumps([body.get("tools"), body["system"]], sort_keys=True)
    return json.dumps([body.get("tools"), body["messages"][0]], sort_keys=True)


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where the request marks `cache_control`: "tool:<name>", "system", "message:<index>"."""
    out = [f"tool:{t['name']}" for t in body.get("tools") or [] if "cache_control" in t]
    out += ["system" for block in body.get("system") or [] if "cache_control" in block]
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        out += [f"message:{index}" for block in (content if isinstance(content, list) else [])
                if "cache_control" in block]
    return out


def llm_turns(events: list[Any]) -> list[LlmTurn]:
    return [e for e in events if isinstance(e, LlmTurn)]


async def test_an_agent_s_prefix_is_byte_identical_and_cached_across_activations(rig: Rig) -> None:
    await add_long_agent(rig, "reviewer")
    first_note = rig.hub.mention("reviewer", "please look at my change")
    second_note = rig.hub.mention("reviewer", "and another, different question")
    rig.llm.set_script([
        {"tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": first_note.post_id}}]},
        {"text": "Looks fine."},
        {"text": "Also fine."},
    ])
    await rig.start()
    _, end1, events1 = await rig.activate("reviewer", [first_note])
    _, end2, events2 = await rig.activate("reviewer", [second_note])
    assert (end1, end2) == ("completed", "completed"), (metrics_of(events1).error, metrics_of(events2).error)

    bodies = [r.body for r in rig.llm.requests]
    assert len(bodies) == 3 and not rig.llm.violations
    # The prefix (tools sorted by name, then the system prompt) is the same bytes in every request of the agent.
    assert len({prefix_of(b) for b in bodies}) == 1
    names = [t["name"] for t in bodies[0]["tools"]]
    assert names == sorted(names)
    last_tool = f"tool:{names[-1]}"
    assert breakpoints(bodies[0]) == [last_tool, "system", "message:0"]
    assert breakpoints(bodies[1]) == [last_tool, "system", "message:2"]  # the conversation's end moves on

    turn1, turn2 = llm_turns(events1)
    assert turn1.cache_write_tokens > 1024 and turn1.cache_read_tokens == 0
    assert turn2.cache_read_tokens >= turn1.cache_write_tokens  # the second turn reads the first turn's prefix
    (turn3,) = llm_turns(events2)
    assert turn3.cache_read_tokens > 1024  # the next activation reads tools + system prompt from the cache

    prices = PriceTable.load(None)
    for events in (events1, events2):
        metrics, turns = metrics_of(events), llm_turns(events)
        assert metrics.tokens_input == sum(t.input_tokens for t in turns) > 0
        assert metrics.tokens_cache_write == sum(t.cache_write_tokens for t in turns)
        assert metrics.tokens_cache_read == sum(t.cache_read_tokens for t in turns)
        assert metrics.estimated_cost_usd == prices.cost_usd(SONNET, metrics.tokens_input, metrics.tokens_output,
                                                             metrics.tokens_cache_write, metrics.tokens_cache_read)
    # Cached, the second activation's input costs a fraction of the same tokens uncached.
    m2 = metrics_of(events2)
    uncached = prices.cost_usd(SONNET, m2.tokens_input + m2.tokens_cache_write + m2.tokens_cache_read, 0)
    cached = prices.cost_usd(SONNET, m2.tokens_input, 0, m2.tokens_cache_write, m2.tokens_cache_read)
    assert cached < 0.5 * uncached


async def test_openai_cached_tokens_are_taken_out_of_the_uncached_input(rig: Rig) -> None:
    await add_long_agent(rig, "oai-reviewer", brain=OPENAI_BRAIN)
    notes = [rig.hub.mention("oai-reviewer", text) for text in ("first question", "second question")]
    rig.llm.set_script([{"text": "One."}, {"text": "Two."}])
    await rig.start()
    runs = [await rig.activate("oai-reviewer", [note]) for note in notes]
    assert [end for _, end, _ in runs] == ["completed", "completed"]
    bodies = [r.body for r in rig.llm.requests]
    assert prefix_of(bodies[0]) == prefix_of(bodies[1]) and not any(breakpoints(b) for b in bodies)
    first, second = (llm_turns(events)[0] for _, _, events in runs)
    assert first.cache_read_tokens == 0 and first.cache_write_tokens == 0
    # prompt_tokens counts the cached ones: the same prompt size, split into uncached and cached.
    assert second.cache_read_tokens >= 1024 and second.input_tokens < first.input_tokens
    assert abs((second.input_tokens + second.cache_read_tokens) - first.input_tokens) < 20
    assert metrics_of(runs[1][2]).tokens_cache_read == second.cache_read_tokens


def skill(name: str, keyword: str) -> Any:
    front = f"---\nname: {name}\ndescription: {name}\ntriggers:\n  keywords: [{keyword}]\n---\n"
    return parse_skill(name, (front + f"How to {name}.").encode())


def test_the_system_prompt_orders_skills_the_same_whatever_the_directory_order() -> None:
    definition = parse_agent("agent-a", agent_yaml("agent-a"), b"You are a.")
    skills = {s.name: s for s in (skill("zeta", "deploy"), skill("alpha", "deploy"), skill("mid", "deploy"))}
    reversed_skills = dict(reversed(list(skills.items())))
    prompts = {context.system_prompt(definition, context.select_skills(definition, table, set(), "deploy it", None))
               for table in (skills, reversed_skills)}
    assert len(prompts) == 1
    (prompt,) = prompts
    assert prompt.index("### alpha") < prompt.index("### mid") < prompt.index("### zeta")


def test_the_anthropic_request_keeps_within_four_breakpoints_on_a_long_conversation() -> None:
    model = AnthropicModel(Brain(model=SONNET), base_url="http://127.0.0.1:9", api_key="k", timeout_s=1)
    tools = [ToolSpec("b", "B", {"type": "object"}), ToolSpec("a", "A", {"type": "object"})]
    transcript: list[Any] = [UserText("task")]
    for n in range(6):
        transcript += [AssistantTurn("", [ToolCall(f"c{n}", "a", {})]), ToolResults([ToolResult(f"c{n}", "ok")])]
    marked = breakpoints(model.request("system", transcript, tools))
    assert marked == ["tool:a", "system", f"message:{len(transcript) - 1}"]


# --- a CLI's requests through the gateway ------------------------------------------------------------------

GATEWAY_KEY = "sk-upstream-key-for-the-cache-test"


class Recorder:
    def __init__(self) -> None:
        self.turns: list[ModelReply] = []

    async def llm(self, turn: int, reply: ModelReply, duration_ms: float, provider: str) -> None:
        self.turns.append(reply)

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None:
        raise AssertionError("the gateway records no tool events")


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedLLM]:
    async with ScriptedLLM(api_key=GATEWAY_KEY, strict=False) as server:
        yield server


@pytest.fixture
async def gateway() -> AsyncIterator[ModelGateway]:
    gw = ModelGateway()
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def cli_request(question: str) -> dict[str, Any]:
    """Shaped as Claude Code sends it: cached system blocks and tools, the conversation's end marked."""
    ephemeral = {"type": "ephemeral"}
    return {"model": SONNET, "max_tokens": 1000, "stream": True,
            "system": [{"type": "text", "text": "You are a CLI agent."},
                       {"type": "text", "text": LONG_PROMPT, "cache_control": ephemeral}],
            "tools": [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object"},
                       "cache_control": ephemeral}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": question, "cache_control": ephemeral}]}]}


@pytest.mark.parametrize("stream", [True, False])
async def test_a_cli_s_cached_requests_pass_the_gateway_intact_and_are_counted(
        gateway: ModelGateway, upstream: ScriptedLLM, stream: bool) -> None:
    recorder = Recorder()
    budget = Budget(max_iterations=10, max_tokens=100_000, deadline=time.monotonic() + 60)
    env = {"MODEL_BASE_URL_OVERRIDE": upstream.url, "ANTHROPIC_API_KEY": GATEWAY_KEY}
    async with gateway.session(activation_id="cli-1", brain=Brain(model=SONNET), recorder=recorder, budget=budget,
                               access=ModelAccess(base_url_override=upstream.url), secret_env=env) as session:
        for question in ("first", "second"):
            body = {**cli_request(question), "stream": stream}
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{session.base_url}/v1/messages", json=body,
                                           headers={"x-api-key": session.token, "anthropic-version": "2023-06-01",
                                                    "anthropic-beta": "prompt-caching-2024-07-31"})
                assert response.status_code == 200
    sent = [r.body for r in upstream.requests]
    for request in sent:  # cache_control reached the model as the CLI wrote it
        assert request["system"][1]["cache_control"] == {"type": "ephemeral"}
        assert request["tools"][0]["cache_control"] == {"type": "ephemeral"}
        assert request["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert upstream.requests[0].headers.get("anthropic-beta") == "prompt-caching-2024-07-31"
    first, second = recorder.turns
    assert first.cache_write_tokens > 1024 and first.cache_read_tokens == 0
    assert second.cache_read_tokens > 1024 and second.input_tokens < 100
    assert budget.cache_read_tokens == second.cache_read_tokens
    assert budget.input_tokens == first.input_tokens + second.input_tokens
    assert not upstream.violations


async def test_openai_cached_tokens_through_the_gateway(gateway: ModelGateway, upstream: ScriptedLLM) -> None:
    recorder = Recorder()
    budget = Budget(max_iterations=10, max_tokens=100_000, deadline=time.monotonic() + 60)
    env = {"MODEL_BASE_URL_OVERRIDE": upstream.url, "OPENAI_API_KEY": GATEWAY_KEY}
    brain = Brain(model="gpt-4o", provider="openai")
    async with gateway.session(activation_id="cli-2", brain=brain, recorder=recorder, budget=budget,
                               access=ModelAccess(base_url_override=upstream.url), secret_env=env) as session, \
            httpx.AsyncClient() as http:
        for question, stream in (("first", False), ("second", True)):
            body = {"model": "gpt-4o", "stream": stream, "stream_options": {"include_usage": True} if stream else None,
                    "messages": [{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": question}]}
            if not stream:
                del body["stream_options"]
            response = await http.post(f"{session.base_url}/v1/chat/completions", json=body,
                                       headers={"authorization": f"Bearer {session.token}"})
            assert response.status_code == 200
    first, second = recorder.turns
    assert first.cache_read_tokens == 0 and second.cache_read_tokens >= 1024
    assert abs(second.input_tokens + second.cache_read_tokens - first.input_tokens) < 20


def test_the_metrics_stage_counts_cache_writes_and_reads_apart_from_the_uncached_input() -> None:
    labels = {"agent_id": "cache-counted", "tool_type": "native"}

    def sample(direction: str) -> float:
        return REGISTRY.get_sample_value("botburrow_tokens_total", {**labels, "direction": direction}) or 0.0

    observe(ActivationMetrics(activation_id="a1", agent_id="cache-counted", tool_type="native", model=SONNET,
                              task_type="notification", task_priority="high", tokens_input=120, tokens_output=30,
                              tokens_cache_write=2_000, tokens_cache_read=9_000, outcome="posted",
                              started_at="2026-01-01T00:00:00Z", ended_at="2026-01-01T00:00:01Z"))
    assert [sample(d) for d in ("input", "output", "cache_write", "cache_read")] == [120, 30, 2_000, 9_000]


def test_the_timeline_shows_and_prices_the_cached_input() -> None:
    turn = LlmTurn(activation_id="a1", agent="reviewer", at="2026-01-01T00:00:00.000Z", turn=1, model=SONNET,
                   input_tokens=120, output_tokens=30, cache_write_tokens=2_000, cache_read_tokens=9_000)
    out = render([turn], whole=True)
    cost = PriceTable.load(None).cost_usd(SONNET, 120, 30, 2_000, 9_000)
    assert "turn 1: 120 in (+2000 cache write, 9000 cache read) / 30 out" in out and f"~${cost:.6f}" in out
    assert "tokens 120 in (+2000 cache write, 9000 cache read) / 30 out" in out


@pytest.mark.slow
async def test_claude_code_s_own_cache_breakpoints_pass_the_gateway_and_its_cache_reads_are_counted(
        cli_rig: CliRig) -> None:  # noqa: F811 (the fixture imported above)
    needs("claude")
    cli_rig.add_agent("cached-claude", "claude-code", "cc-cached-model")
    cli_rig.definitions.agents["cached-claude"] = parse_agent(
        "cached-claude", cli_agent_yaml("cached-claude", "claude-code", "cc-cached-model", mcp=json.dumps(["facts"])),
        LONG_PROMPT.encode())
    note = cli_rig.hub.mention("cached-claude", "tell me about otters")
    cli_rig.llm.set_script(tool_script("mcp__facts__lookup", "Otters hold hands."), key="cc-cached-model")
    metrics, events = await cli_rig.activate("cached-claude", note)

    assert metrics.outcome == "posted", metrics.error
    bodies = [r.body for r in cli_rig.llm.requests if r.path.endswith("/v1/messages")]
    assert len(bodies) == 2 and all(0 < json.dumps(b).count("cache_control") <= 4 for b in bodies)
    first, second = llm_turns(events)
    assert first.cache_write_tokens > 1024 and second.cache_read_tokens >= first.cache_write_tokens
    assert metrics.tokens_cache_read == second.cache_read_tokens
    assert metrics.tokens_input == first.input_tokens + second.input_tokens

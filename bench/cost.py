"""What prompt caching saves on the model bill (issue 18): `python -m bench cost`.

One agent with a realistic prefix (a 6,000-character system prompt, three skills, the Hub tools and the
51 tools the GitHub MCP server lists, started here as the runner starts it) answers 100 notifications,
each in two model turns (a Hub read, then the answer), spread over 5 minutes of the scripted LLM's clock
(a virtual clock: the cache's 5-minute TTL is what is exercised, the bench does not wait).

Measured, each beside its baseline in the same run, against the scripted LLM's cache model
(botburrow/doubles/scripted_llm/cache.py), billed at services/runner/prices.yaml:
- native, Anthropic: the native loop's own requests (`run_loop` with `AnthropicModel`: the bytes the
  runner sends), then the same without `cache_control` (the baseline: every input token at the base price);
- native, OpenAI-compatible: the same loop with `OpenAIModel` (automatic prefix caching), baseline: the
  same tokens all billed uncached;
- a CLI agent through the model gateway: requests shaped as Claude Code sends them (cached system and
  tool blocks, the conversation's end marked) through `ModelGateway` sessions, counted from the usage the
  gateway records; baseline: the same requests without `cache_control`.
The cost compared is the billed input (uncached input, cache writes, cache reads); output is the same
with and without caching.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx

from botburrow.definitions.parse import parse_agent, parse_skill
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.hub.client import HubClient
from schemas.agent import AgentDefinition, Brain, SkillDefinition
from schemas.hub import Author, Notification
from services.runner import context
from services.runner.gateway import ModelGateway
from services.runner.hubtools import HubTools
from services.runner.loop import Budget, ToolOutcome, run_loop
from services.runner.mcptools import McpToolsets
from services.runner.modelaccess import ModelAccess
from services.runner.pricing import PriceTable
from services.runner.providers import AnthropicModel, OpenAIModel
from services.runner.seams import Posting, ToolContext
from services.runner.transcript import ModelReply, ToolCall, ToolSpec, UserText

ACTIVATIONS = 100
SPREAD_S = 300.0  # the activations' span on the scripted LLM's clock
GOAL_RATIO = 0.3
ANTHROPIC_MODEL = "claude-sonnet-4-20250514"
OPENAI_MODEL = "gpt-4o"
KEY = "bench-key"
PROMPT = ("You are the reviewer of the botburrow-agents repository. You read pull requests and issues, "
          "check them against the project's rules and answer in a few short sentences, citing the file. ")
SKILL_BODY = "Steps: read the thread, find the files it names, check each against the rule, answer briefly. "


def definition() -> tuple[AgentDefinition, list[SkillDefinition]]:
    prompt = (PROMPT * (6000 // len(PROMPT) + 1))[:6000]
    config = ("version: \"1.0.0\"\nname: bench-reviewer\ntype: native\nbrain:\n  provider: anthropic\n"
              f"  model: {ANTHROPIC_MODEL}\ncapabilities:\n  grants: [hub:read, hub:write, github:read]\n"
              "  skills: [code-review, triage, release-notes]\n  mcp_servers: [github]\n")
    skills = [parse_skill(name, (f"---\nname: {name}\ndescription: {name}\n---\n" + SKILL_BODY * 12).encode())
              for name in ("code-review", "triage", "release-notes")]
    return parse_agent("bench-reviewer", config.encode(), prompt.encode()), skills


async def tool_specs(agent: AgentDefinition, workspace: Path) -> list[ToolSpec]:
    """The Hub tools and the GitHub MCP server's tools, as an activation of the agent lists them."""
    hub_tools = HubTools(cast(HubClient, None), KEY, {"hub:read", "hub:write"}, cast(Posting, None), "bench")
    environ = {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_bench_dummy_token"}  # listing tools uses no credential
    factory = McpToolsets(environ, reuse_idle_s=0)
    ctx = ToolContext(definition=agent, agent_key=KEY, grants={"github:read"}, activation_id="bench", poster=None,
                      hub=None, workspace=workspace)
    try:
        async with factory.open(ctx) as box:
            return [*hub_tools.specs(), *box.specs()]
    finally:
        await factory.aclose()


class Toolbox:
    def __init__(self, specs: list[ToolSpec]) -> None:
        self._specs = specs

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    async def call(self, name: str, arguments: dict[str, object]) -> ToolOutcome:
        return ToolOutcome("Post [p1] by alice: the change renames a setting.\n\n(no comments yet)", server="hub")


class Turns:
    """A recorder keeping each turn's usage (what the llm events would carry)."""

    def __init__(self) -> None:
        self.replies: list[ModelReply] = []

    async def llm(self, turn: int, reply: ModelReply, duration_ms: float, provider: str) -> None:
        self.replies.append(reply)

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None:
        pass


def task(n: int) -> str:
    note = Notification(id=f"ntf-{n}", type="mention", post_id=f"post-{n}", comment_id=f"c-{n}",
                        content=f"@bench-reviewer could you look at change #{n}?", from_=Author(name=f"user{n % 7}"))
    return context.notification_task([(note, f"Post [post-{n}] in m/dev by user{n % 7}: change #{n}\nDetails.")])


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def script() -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for n in range(ACTIVATIONS):
        steps += [{"tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": f"post-{n}"}}]},
                  {"text": f"Reviewed change #{n}: it follows the rules."}]
    return steps


def billed(model: str, replies: list[ModelReply], prices: PriceTable) -> dict[str, Any]:
    sums = {"tokens_input": sum(r.input_tokens for r in replies),
            "tokens_cache_write": sum(r.cache_write_tokens for r in replies),
            "tokens_cache_read": sum(r.cache_read_tokens for r in replies)}
    cost = prices.cost_usd(model, sums["tokens_input"], 0, sums["tokens_cache_write"], sums["tokens_cache_read"])
    return {**sums, "turns": len(replies), "input_cost_usd": round(cost, 6)}


class UncachedAnthropic(AnthropicModel):
    """The baseline: the same requests without a single `cache_control`."""

    def request(self, system: str, transcript: Any, tools: list[ToolSpec]) -> dict[str, Any]:
        body = super().request(system, transcript, tools)
        for block in [*body["system"], *body.get("tools", []), *body["messages"][-1]["content"]]:
            block.pop("cache_control", None)
        return body


async def native(llm: ScriptedLLM, clock: Clock, make: Callable[[], Any], system: str,
                 specs: list[ToolSpec]) -> list[ModelReply]:
    llm.reset()
    llm.set_script(script())
    turns = Turns()
    model = make()
    try:
        for n in range(ACTIVATIONS):
            clock.now_s = n * SPREAD_S / ACTIVATIONS
            budget = Budget(max_iterations=5, max_tokens=10_000_000, deadline=time.monotonic() + 60)
            await run_loop(model, system, [UserText(task(n))], Toolbox(specs), budget, turns)
    finally:
        await model.aclose()
    return turns.replies


def anthropic_tools(specs: list[ToolSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "description": s.description, "input_schema": s.input_schema} for s in specs]


def cli_turns(n: int, system: str, specs: list[ToolSpec], cached: bool) -> list[dict[str, Any]]:
    """Claude Code's two requests for one notification: its own preamble, the prompt and tools cached."""
    mark = {"cache_control": {"type": "ephemeral"}} if cached else {}
    tools = anthropic_tools(sorted(specs, key=lambda s: s.name))
    tools[-1].update(mark)
    head = {"model": ANTHROPIC_MODEL, "max_tokens": 4096, "stream": True, "tools": tools,
            "system": [{"type": "text", "text": "You are Claude Code, a CLI agent."},
                       {"type": "text", "text": system, **mark}]}
    use = {"type": "tool_use", "id": f"toolu_{n}", "name": "hub__get_thread", "input": {"post_id": f"post-{n}"}}
    result = {"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": "ok"}
    # One conversation breakpoint, on the last block (as Claude Code marks it); none at all uncached.
    first = [{"role": "user", "content": [{"type": "text", "text": task(n), **mark}]}]
    second = [{"role": "user", "content": [{"type": "text", "text": task(n)}]},
              {"role": "assistant", "content": [use]}, {"role": "user", "content": [{**result, **mark}]}]
    return [{**head, "messages": first}, {**head, "messages": second}]


async def cli(llm: ScriptedLLM, clock: Clock, gateway: ModelGateway, system: str, specs: list[ToolSpec],
              cached: bool) -> list[ModelReply]:
    llm.reset()
    llm.set_script(script())
    turns = Turns()
    env = {"MODEL_BASE_URL_OVERRIDE": llm.url, "ANTHROPIC_API_KEY": KEY}
    async with httpx.AsyncClient(timeout=60) as http:
        for n in range(ACTIVATIONS):
            clock.now_s = n * SPREAD_S / ACTIVATIONS
            budget = Budget(max_iterations=5, max_tokens=10_000_000, deadline=time.monotonic() + 60)
            async with gateway.session(activation_id=f"cli-{n}", brain=Brain(model=ANTHROPIC_MODEL), recorder=turns,
                                       budget=budget, access=ModelAccess(base_url_override=llm.url),
                                       secret_env=env) as session:
                for body in cli_turns(n, system, specs, cached):
                    response = await http.post(f"{session.base_url}/v1/messages", json=body,
                                               headers={"x-api-key": session.token, "anthropic-version": "2023-06-01"})
                    response.raise_for_status()
    return turns.replies


def compare(model: str, cached: list[ModelReply], baseline: list[ModelReply], prices: PriceTable) -> dict[str, Any]:
    with_cache, without = billed(model, cached, prices), billed(model, baseline, prices)
    ratio = with_cache["input_cost_usd"] / without["input_cost_usd"]
    price = prices.price(model)
    # No caching can bill less than every input token read from the cache: the model's cache-read discount.
    floor = (price.cache_read if price.cache_read is not None else price.input) / price.input
    return {"model": model, "with_cache": with_cache, "without_cache": without, "ratio": round(ratio, 3),
            "floor_ratio": round(floor, 3), "goal_ratio_max": GOAL_RATIO, "goal_met": ratio <= GOAL_RATIO}


async def main(results_dir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    agent, skills = definition()
    system = context.system_prompt(agent, skills)
    specs = await tool_specs(agent, Path(tempfile.mkdtemp(prefix="bench-cost-")))
    prices, clock = PriceTable.load(None), Clock()
    llm, gateway = ScriptedLLM(strict=True, clock=clock), ModelGateway()
    await llm.start()
    await gateway.start()
    try:
        def brain(model: str, provider: str) -> Brain:
            return Brain(model=model, provider=provider)  # type: ignore[arg-type]

        def make(kind: type[AnthropicModel] | type[OpenAIModel], model: str, provider: str) -> Callable[[], Any]:
            url = llm.url if kind is not OpenAIModel else f"{llm.url}/v1"
            return lambda: kind(brain(model, provider), base_url=url, api_key=KEY, timeout_s=60)

        anthropic_cached = await native(llm, clock, make(AnthropicModel, ANTHROPIC_MODEL, "anthropic"), system, specs)
        anthropic_plain = await native(llm, clock, make(UncachedAnthropic, ANTHROPIC_MODEL, "anthropic"), system, specs)
        openai_cached = await native(llm, clock, make(OpenAIModel, OPENAI_MODEL, "openai"), system, specs)
        # OpenAI caches on its own: the baseline is the same tokens, none of them read from the cache.
        openai_plain = [ModelReply(text="", tool_calls=[], stop_reason=None, model=r.model, output_tokens=0,
                                   input_tokens=r.prompt_tokens) for r in openai_cached]
        cli_cached = await cli(llm, clock, gateway, system, specs, cached=True)
        cli_plain = await cli(llm, clock, gateway, system, specs, cached=False)
        github = [s for s in specs if s.name.startswith("github")]
        return {
            "activations": ACTIVATIONS, "turns_per_activation": 2, "spread_s_on_the_model_clock": SPREAD_S,
            "prefix": {"system_prompt_chars": len(agent.system_prompt), "skills": len(skills),
                       "system_with_skills_chars": len(system), "tools": len(specs), "github_tools": len(github)},
            "native_anthropic": compare(ANTHROPIC_MODEL, anthropic_cached, anthropic_plain, prices),
            "native_openai": compare(OPENAI_MODEL, openai_cached, openai_plain, prices),
            "cli_through_gateway": compare(ANTHROPIC_MODEL, cli_cached, cli_plain, prices),
            "violations": len(llm.violations),
            "tokens": "the scripted LLM's estimate, about 4 characters a token (cache.py)",
            "cpus": len(os.sched_getaffinity(0)),
            "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        }
    finally:
        await gateway.stop()
        await llm.stop()

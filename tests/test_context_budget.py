"""Context within a budget (issue 18): each prompt part (thread, memories, skills, tools) has a token budget,
counted by an estimator calibrated on the input tokens the provider reports; the run log says what was cut
and why; the cached prefix (tools, system prompt) stays byte-identical while the thread varies."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping

import pytest

from botburrow.cli.ops import load_run
from botburrow.definitions.parse import parse_agent, parse_skill
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.hub import HubClient
from botburrow.runtime.bus import Bus
from schemas.agent import AgentDefinition, SkillDefinition
from schemas.events import ActivationRequested, LlmTurn
from services.runner.activation import Activation, Deps
from services.runner.config import RunnerConfig
from services.runner.context import ContextBudget, ContextLedger, TokenEstimator, request_chars
from services.runner.modelaccess import ModelAccess
from services.runner.pricing import PriceTable
from services.runner.runlog import RunLog
from services.runner.transcript import ToolSpec, UserText
from tests.fixtures.runner import agent_yaml

MODEL = "claude-sonnet-4-20250514"


def skill(name: str, body_chars: int) -> SkillDefinition:
    text = f"---\nname: {name}\ndescription: {name} skill\n---\n{'word ' * (body_chars // 5)}\n"
    return parse_skill(name, text.encode())


def tool(name: str, description_chars: int) -> ToolSpec:
    return ToolSpec(name, "d" * description_chars, {"type": "object", "properties": {}})


# -- the estimator and the ledger --------------------------------------------------------------------------

def test_the_estimator_learns_each_models_ratio_from_reported_tokens() -> None:
    estimator = TokenEstimator()
    assert estimator.tokens(3500, "m") == 1000 and not estimator.calibrated("m")
    estimator.observe("m", chars=4000, tokens=1000)
    assert estimator.chars_per_token("m") == 4.0 and estimator.calibrated("m")
    for _ in range(40):  # the provider keeps saying 2 chars a token: the ratio follows, step by step
        estimator.observe("m", chars=2000, tokens=1000)
    assert abs(estimator.chars_per_token("m") - 2.0) < 0.01
    estimator.observe("m", chars=10, tokens=3)  # too small to say anything (the provider's own framing)
    assert abs(estimator.chars_per_token("m") - 2.0) < 0.01
    assert estimator.chars_per_token("other") == 3.5  # per model


def test_a_thread_past_its_budget_is_cut_at_its_end_and_the_cut_is_recorded() -> None:
    ledger = ContextLedger(ContextBudget(thread_tokens=100), TokenEstimator(4.0), MODEL)
    short, long_ = "a short thread", "x" * 1000
    kept = ledger.fit_threads([("p-1", short), ("p-2", long_), ("p-3", None)])

    assert kept[0] == short and kept[2] is None  # two threads: 50 tokens (200 chars) each
    assert kept[1] is not None and kept[1].startswith("x" * 200) and "[cut: the thread's last 800 characters" in kept[1]
    (cut,) = ledger.cuts
    assert (cut.part, cut.what, cut.tokens) == ("thread", "post p-2: the thread's last 800 characters", 200)
    assert "thread budget 100 tokens" in cut.reason
    report = ledger.report()
    assert report.budgets == {"thread": 100, "memories": 2000, "skills": 12000, "tools": 40000}
    assert report.tokens["memories"] == 0 and report.cuts == [cut]


def test_skills_and_tools_are_dropped_whole_in_a_fixed_order() -> None:
    budget = ContextBudget(skills_tokens=300, tools_tokens=100)
    skills = [skill("first", 800), skill("huge", 4000), skill("second", 300)]
    tools = [tool("zeta__x", 200), tool("alpha__y", 200), tool("hub__post", 100)]
    runs = []
    for _ in range(2):
        ledger = ContextLedger(budget, TokenEstimator(4.0), MODEL)
        runs.append(([s.name for s in ledger.fit_skills(skills)], [t.name for t in ledger.fit_tools(tools)],
                     [(c.part, c.what) for c in ledger.cuts]))
    assert runs[0] == runs[1]  # the same inputs, the same prefix
    kept_skills, kept_tools, cuts = runs[0]
    assert kept_skills == ["first", "second"]  # the one that does not fit is left out; the next still fits
    assert kept_tools == ["hub__post", "alpha__y"]  # the Hub's tools first, then by name
    assert cuts == [("skills", "skill huge"), ("tools", "tool zeta__x")]


def test_request_chars_count_system_turns_and_tool_schemas() -> None:
    spec = tool("hub__post", 10)
    assert request_chars("sys", [UserText("hello")], [spec]) == 3 + 5 + len("hub__post") + 10 + len(
        '{"type":"object","properties":{}}')


# -- an activation against real NATS, the Hub emulator and the scripted LLM ------------------------------

class Directory:
    def __init__(self) -> None:
        self.agents: dict[str, AgentDefinition] = {}

    def get(self, name: str) -> AgentDefinition | None:
        return self.agents.get(name)

    def skills(self) -> Mapping[str, SkillDefinition]:
        return {}


@pytest.fixture
async def hub_client(hub_emulator: HubEmulator) -> AsyncIterator[HubClient]:
    client = HubClient(hub_emulator.url, system_key=hub_emulator.system_key)
    try:
        yield client
    finally:
        await client.aclose()


async def activate(deps: Deps, bus: Bus, agent: str, note: object) -> list[object]:
    request = ActivationRequested(activation_id=f"act-{uuid.uuid4().hex[:10]}", agent=agent, kind="notification",
                                  priority="high", notifications=[note])  # type: ignore[list-item]
    metrics = await Activation(deps, request, RunLog(bus, request, 1, uuid.uuid4().hex)).run()
    assert metrics.outcome == "posted", metrics.error
    return await load_run(bus, request.activation_id)


async def test_the_thread_is_cut_in_the_task_the_prefix_stays_and_the_ratio_is_learnt(
        bus: Bus, hub_emulator: HubEmulator, scripted_llm: ScriptedLLM, hub_client: HubClient) -> None:
    directory = Directory()
    directory.agents["reader"] = parse_agent("reader", agent_yaml("reader"), b"You are reader. Be brief.")
    keys = {"reader": hub_emulator.add_agent("reader")}
    config = RunnerConfig(access=ModelAccess(base_url_override=scripted_llm.url))
    deps = Deps(bus=bus, hub=hub_client, definitions=directory, keys=keys, prices=PriceTable.load(None),
                config=config, secrets={}, runner_id="test", context_budget=ContextBudget(thread_tokens=300))
    small = hub_emulator.mention("reader", "a short question")
    post = hub_emulator.add_post("A long thread", "body")
    for n in range(30):
        hub_emulator.add_comment(post.id, f"comment {n}: " + "long words here " * 20)
    long_ = hub_emulator.mention("reader", "and this one?", post_id=post.id)
    scripted_llm.set_script([{"text": "One."}, {"text": "Two."}])

    first = [e for e in await activate(deps, bus, "reader", small) if isinstance(e, LlmTurn)]
    second = [e for e in await activate(deps, bus, "reader", long_) if isinstance(e, LlmTurn)]

    before, after = first[0].context, second[0].context
    assert before is not None and after is not None
    assert not before.cuts and not before.calibrated and before.chars_per_token == 3.5
    # The first activation's reported input tokens taught the estimator this model's ratio.
    assert after.calibrated and after.chars_per_token != 3.5
    (cut,) = after.cuts
    assert cut.part == "thread" and cut.what.startswith(f"post {post.id}: the thread's last")
    assert after.tokens["thread"] <= 300 + 60  # within the budget, give or take its marker line
    requests = scripted_llm.requests
    task = requests[1].body["messages"][0]["content"][0]["text"]
    assert "[cut: the thread's last" in task and 0 < task.count(": comment ") < 30  # its end left out
    # The cut went into the task: the cached prefix (system prompt and tools) is the same bytes.
    assert requests[0].body["system"] == requests[1].body["system"]
    assert requests[0].body["tools"] == requests[1].body["tools"]

"""The runner stage in-process against real NATS, the Hub emulator and the strict scripted LLM.

Each test writes agent definitions into the `configs` bucket, starts `run_stage("runner", ...)`,
publishes ActivationRequested payloads itself and awaits the run's end event on core NATS.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js.kv import KV_DEL, KV_PURGE

from botburrow.cli.ops import load_run
from botburrow.cli.read import read_all
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from botburrow.schemas.codec import decode_subject
from botburrow.schemas.events import ActivationRequested, DeadLetter
from botburrow.schemas.hub import Notification
from botburrow.services.hub_emulator import HubEmulator
from botburrow.services.runner.stage import run as runner_body
from botburrow.services.scripted_llm import ScriptedLLM
from botburrow.streams import subjects

END_TIMEOUT_S = 15.0

ANTHROPIC_BRAIN = "provider: anthropic\n  model: claude-sonnet-4-20250514"
OPENAI_BRAIN = ("provider: openai\n  model: gpt-4o-mini\n  api_base: https://example.invalid/v1\n"
                "  api_key_env: OPENAI_API_KEY")


def agent_yaml(name: str, *, type_: str = "native", brain: str = ANTHROPIC_BRAIN, max_iterations: int = 5,
               shell: str = "") -> bytes:
    return f"""\
version: "1.0.0"
name: {name}
type: {type_}
brain:
  {brain}
capabilities:
  grants: [hub:read, hub:write]
{shell}behavior:
  respond_to_mentions: true
  max_iterations: {max_iterations}
  limits:
    min_interval_seconds: 0
""".encode()


class Rig:
    """The runner under test and what it talks to."""

    def __init__(self, bus: Bus, nats_url: str, hub: HubEmulator, llm: ScriptedLLM) -> None:
        self.bus, self.nats_url, self.hub, self.llm = bus, nats_url, hub, llm
        self.keys: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def add_agent(self, name: str, **options: Any) -> None:
        self.keys[name] = self.hub.add_agent(name)
        definition = parse_agent(name, agent_yaml(name, **options), b"You are {{name}}. Be brief.")
        kv = await self.bus.kv(bucket.BUCKET)
        await kv.put(bucket.key("agent", name), bucket.encode(definition))

    async def start(self, key_overrides: dict[str, str] | None = None, **extra_env: str) -> None:
        environ = {
            "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
            "NATS_URL": self.nats_url,
            "HUB_URL": self.hub.url, "HUB_API_KEY": self.hub.system_key,
            "BOTBURROW_AGENT_KEYS": json.dumps({**self.keys, **(key_overrides or {})}),
            "MODEL_BASE_URL_OVERRIDE": self.llm.url, "METRICS_PORT": "0", "RUNNER_CONCURRENCY": "4",
            **extra_env,
        }
        self.task = asyncio.create_task(run_stage("runner", runner_body, environ=environ, stop=self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 20)

    async def ends_of(self, agent: str, activation_id: str, count: int = 1) -> Callable[[], Awaitable[list[str]]]:
        """Subscribe (before publishing) to the activation's end events; the result awaits `count` of them."""
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        done: asyncio.Future[list[str]] = loop.create_future()

        async def on_msg(msg: Any) -> None:
            if msg.subject.rsplit(".", 1)[-1] in ("completed", "failed"):
                seen.append(msg.subject.rsplit(".", 1)[-1])
                if len(seen) >= count and not done.done():
                    done.set_result(list(seen))

        sub = await self.bus.nc.subscribe(f"agents.run.{subjects.token(agent)}.{subjects.token(activation_id)}.*",
                                          cb=on_msg)

        async def wait() -> list[str]:
            try:
                return await asyncio.wait_for(done, END_TIMEOUT_S)
            finally:
                await sub.unsubscribe()

        return wait

    async def publish(self, agent: str, activation_id: str, notifications: list[Notification],
                      *, msg_id: str | None = None) -> None:
        request = ActivationRequested(activation_id=activation_id, agent=agent, kind="notification",
                                      priority="high", notifications=notifications)
        await self.bus.publish(subjects.activation("high", agent), request, msg_id=msg_id or f"act:{activation_id}")

    async def activate(self, agent: str, notifications: list[Notification],
                       activation_id: str | None = None) -> tuple[str, str, list[Any]]:
        """Publish one activation and await its end: (activation id, end event name, its events)."""
        activation_id = activation_id or f"act-{uuid.uuid4().hex[:10]}"
        wait = await self.ends_of(agent, activation_id)
        await self.publish(agent, activation_id, notifications)
        (end,) = await wait()
        return activation_id, end, await load_run(self.bus, activation_id)

    def replies_by(self, agent: str, post_id: str) -> list[Any]:
        return [c for c in self.hub.comments_on(post_id) if c.author_name == agent]


@pytest.fixture
async def rig(bus: Bus, nats_url: str, hub_emulator: HubEmulator, scripted_llm: ScriptedLLM) -> AsyncIterator[Rig]:
    r = Rig(bus, nats_url, hub_emulator, scripted_llm)
    try:
        yield r
    finally:
        await r.close()


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def metrics_of(events: list[Any]) -> Any:
    return events[-1].metrics


async def lease_released(bus: Bus, agent: str) -> None:
    """Wait (on a KV watch, not a timer) until nobody holds the agent's lease."""
    kv = await bus.kv("leases")
    watcher = await kv.watch(subjects.token(agent))
    try:
        async with asyncio.timeout(END_TIMEOUT_S):
            held = False
            async for entry in watcher:
                if entry is None:  # end of the current values
                    if not held:
                        return
                    continue
                held = entry.operation not in (KV_DEL, KV_PURGE)
                if not held:
                    return
    finally:
        await watcher.stop()


async def dead_letters(bus: Bus) -> list[DeadLetter]:
    return [decode_subject(m.subject, m.data) for m in await read_all(bus, "DLQ", "agents.dlq.*")]


async def test_tool_round_trip_on_anthropic_posts_one_reply(rig: Rig) -> None:
    await rig.add_agent("anthro")
    note = rig.hub.mention("anthro", "what is this thread about?")
    rig.llm.set_script([
        {"text": "Let me look.", "tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": note.post_id}}],
         "usage": {"input_tokens": 100, "output_tokens": 10}},
        {"text": "It is about a question for me.", "usage": {"input_tokens": 200, "output_tokens": 20}},
    ])
    await rig.start()
    _, end, events = await rig.activate("anthro", [note])

    assert end == "completed"
    assert kinds(events) == ["RunStarted", "LlmTurn", "ToolCalled", "LlmTurn", "Posted", "RunCompleted"]
    tool = events[2]
    assert tool.name == "hub__get_thread" and tool.error is None and "what is this thread about?" in tool.result
    replies = rig.replies_by("anthro", note.post_id)
    assert [(c.content, c.parent_id) for c in replies] == [("It is about a question for me.", note.comment_id)]
    assert events[4].hub_id == replies[0].id and not events[4].already_posted
    metrics = metrics_of(events)
    assert (metrics.outcome, metrics.iterations, metrics.tokens_input, metrics.tokens_output) == ("posted", 2, 300, 30)
    assert len(rig.llm.requests) == 2 and not rig.llm.violations


async def test_tool_round_trip_on_openai_provider(rig: Rig) -> None:
    await rig.add_agent("oai", brain=OPENAI_BRAIN)
    note = rig.hub.mention("oai", "summarise please")
    rig.llm.set_script([
        {"tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": note.post_id}}]},
        {"text": "Summary: a question."},
    ])
    await rig.start()
    _, end, events = await rig.activate("oai", [note])

    assert end == "completed", metrics_of(events).error
    assert kinds(events) == ["RunStarted", "LlmTurn", "ToolCalled", "LlmTurn", "Posted", "RunCompleted"]
    assert [r.path for r in rig.llm.requests] == ["/v1/chat/completions"] * 2
    second = rig.llm.requests[1].body["messages"]
    assert second[-1]["role"] == "tool" and "summarise please" in second[-1]["content"]
    assert events[1].provider == "openai"
    replies = rig.replies_by("oai", note.post_id)
    assert [(c.content, c.parent_id) for c in replies] == [("Summary: a question.", note.comment_id)]
    assert not rig.llm.violations


async def test_bad_tool_calls_are_answered_with_errors_and_the_loop_goes_on(rig: Rig) -> None:
    await rig.add_agent("clumsy")
    note = rig.hub.mention("clumsy", "hello")
    rig.llm.set_script([
        {"tool_calls": [{"name": "hub__no_such_tool", "arguments": {}},
                        {"name": "hub__get_thread", "arguments": {"wrong": "x"}}]},
        {"text": "Sorry, answering anyway."},
    ])
    await rig.start()
    _, end, events = await rig.activate("clumsy", [note])

    assert end == "completed"
    assert kinds(events) == ["RunStarted", "LlmTurn", "ToolCalled", "ToolCalled", "LlmTurn", "Posted",
                             "RunCompleted"]
    assert "unknown tool" in events[2].error and "bad arguments" in events[3].error
    results = rig.llm.requests[1].body["messages"][-1]["content"]
    assert [(b["type"], b["is_error"]) for b in results] == [("tool_result", True), ("tool_result", True)]
    assert [c.content for c in rig.replies_by("clumsy", note.post_id)] == ["Sorry, answering anyway."]
    assert not rig.llm.violations


async def test_skip_posts_nothing(rig: Rig) -> None:
    await rig.add_agent("quiet")
    note = rig.hub.mention("quiet", "anyone?")
    rig.llm.set_script([{"text": "SKIP"}])
    await rig.start()
    _, end, events = await rig.activate("quiet", [note])

    assert end == "completed"
    assert kinds(events) == ["RunStarted", "LlmTurn", "RunCompleted"]
    assert metrics_of(events).outcome == "skipped"
    assert rig.replies_by("quiet", note.post_id) == []


async def test_max_iterations_fails_without_posting(rig: Rig) -> None:
    await rig.add_agent("loopy", max_iterations=2)
    note = rig.hub.mention("loopy", "go")
    call = {"tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": note.post_id}}]}
    rig.llm.set_script([call, call])
    await rig.start()
    _, end, events = await rig.activate("loopy", [note])

    assert end == "failed"
    assert "Posted" not in kinds(events)
    metrics = metrics_of(events)
    assert (metrics.outcome, metrics.error, metrics.iterations) == ("failed", "max_iterations", 2)
    assert rig.replies_by("loopy", note.post_id) == []
    assert not rig.llm.violations


async def test_unavailable_executor_fails_and_is_dead_lettered(rig: Rig, tmp_path: Path) -> None:
    await rig.add_agent("coder", type_="claude-code")
    note = rig.hub.mention("coder", "fix my bug")
    await rig.start(BOTBURROW_TOOLS_DIR=str(tmp_path))  # a runner without the Claude Code CLI
    activation_id, end, events = await rig.activate("coder", [note])

    assert end == "failed"
    assert kinds(events) == ["RunStarted", "RunFailed"]
    error = metrics_of(events).error
    assert "claude-code" in error and "not available" in error
    letters = [d for d in await dead_letters(rig.bus) if activation_id in d.payload]
    assert [(d.stage, d.reason) for d in letters] == [("runner", error)]
    assert rig.llm.requests == [] and rig.replies_by("coder", note.post_id) == []


async def test_a_refused_key_fails_one_agent_not_the_other(rig: Rig) -> None:
    await rig.add_agent("locked")
    await rig.add_agent("fine")
    locked_note, fine_note = rig.hub.mention("locked", "hi"), rig.hub.mention("fine", "hi")
    rig.llm.set_script([{"text": "Hello from fine."}])
    await rig.start(key_overrides={"locked": "not-the-right-key"})
    (_, locked_end, locked_events), (_, fine_end, _) = await asyncio.gather(
        rig.activate("locked", [locked_note]), rig.activate("fine", [fine_note]))

    assert (locked_end, fine_end) == ("failed", "completed")
    assert "401" in metrics_of(locked_events).error
    assert "not-the-right-key" not in json.dumps(msgspec.to_builtins(locked_events))
    assert rig.replies_by("locked", locked_note.post_id) == []
    assert [c.content for c in rig.replies_by("fine", fine_note.post_id)] == ["Hello from fine."]


async def test_the_same_activation_twice_posts_once(rig: Rig) -> None:
    await rig.add_agent("once")
    note = rig.hub.mention("once", "answer me")
    rig.llm.set_script([{"text": "My one answer."}])
    await rig.start()
    activation_id, end, _ = await rig.activate("once", [note])
    assert end == "completed"
    await lease_released(rig.bus, "once")

    wait = await rig.ends_of("once", activation_id)
    await rig.publish("once", activation_id, [note], msg_id=f"act:{activation_id}:again")
    assert await wait() == ["completed"]

    assert [c.content for c in rig.replies_by("once", note.post_id)] == ["My one answer."]
    assert len(rig.llm.requests) == 1 and not rig.llm.violations


async def test_an_invalid_payload_is_dead_lettered_and_the_runner_goes_on(rig: Rig) -> None:
    await rig.add_agent("after")
    note = rig.hub.mention("after", "still there?")
    rig.llm.set_script([{"text": "Still here."}])
    await rig.start()
    got_letter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_letter(msg: Any) -> None:
        if not got_letter.done():
            got_letter.set_result(None)

    sub = await rig.bus.nc.subscribe(subjects.dlq("runner"), cb=on_letter)
    await rig.bus.js.publish("agents.sched.activation.high.x", b'{"activation_id": 7}')
    await asyncio.wait_for(got_letter, END_TIMEOUT_S)
    await sub.unsubscribe()

    (letter,) = await dead_letters(rig.bus)
    assert letter.stage == "runner" and letter.subject == "agents.sched.activation.high.x"
    assert letter.reason.startswith("invalid payload") and letter.payload == '{"activation_id": 7}'
    _, end, _ = await rig.activate("after", [note])
    assert end == "completed"
    assert [c.content for c in rig.replies_by("after", note.post_id)] == ["Still here."]

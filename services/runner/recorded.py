"""A recorded activation and the seams that play it back (used by `offline`): nothing leaves the process.

`Recording` is one delivery of an activation as its run events tell it (`recording_from` picks it and
checks it is whole). The seams `Activation` is driven through, recorded:

- `RecordedModels` / `RecordedModel`: each model turn answered with the recorded `llm` event, in order;
- `RecordedToolsets` / `RecordedToolbox`: tool calls served from the recorded `tool` events, every Hub
  write captured instead of sent;
- `RecordedHubReads`: the Hub content read before thinking (threads were not recorded: none);
- `CapturingPoster`: the final answers captured where the activation posts them, no limit applied;
- `CollectingRecorder`: the re-run's own turns and calls, kept in memory;
- `stand_in`: a definition for an agent that is gone, from what the recording shows.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.agent import AgentConfig, AgentDefinition, Behavior, Brain, Capabilities, Retrieval, SkillDefinition
from schemas.events import (
    ActivationMetrics,
    ActivationRequested,
    LlmTurn,
    MemoryRef,
    MemoryUsed,
    Posted,
    RunCompleted,
    RunFailed,
    RunStarted,
    ToolCalled,
)
from schemas.hub import Notification, Post
from services.runner.context import Cuts
from services.runner.loop import ToolOutcome
from services.runner.memory.service import section as memory_section
from services.runner.posting import PostOutcome, PostResult, Target, Usage
from services.runner.seams import ThinkRequest, ToolContext
from services.runner.transcript import Entry, ModelError, ModelReply, ToolCall, ToolResults, ToolSpec

Progress = Callable[[str], None]
KIND_WORDS = {"tool": "another tool", "arguments": "other arguments", "result": "another tool result",
              "final_text": "another final text", "turns": "another model turn", "outcome": "another outcome",
              "posts": "other replies"}


@dataclass
class Recording:
    """One attempt of an activation, as its run events tell it."""

    request: ActivationRequested
    attempt: int
    turns: list[LlmTurn]
    tools: list[ToolCalled]
    posted: list[Posted]
    end: RunCompleted | RunFailed | None = None
    tool_type: str = "native"
    memories: list[MemoryUsed] = field(default_factory=list)  # its `memory` events (retrievals, writes)

    @property
    def final_text(self) -> str | None:
        last = self.turns[-1] if self.turns else None
        return last.text if last is not None and not last.tool_calls else None

    @property
    def outcome(self) -> str:
        if self.end is None:
            return "unfinished"
        m = self.end.metrics
        return m.outcome + (f" ({m.error})" if m.error else "")


@dataclass(frozen=True)
class Divergence:
    step: str  # "turn 2, call 1", "final answer", "definition", ...
    kind: str  # tool | arguments | result | final_text | turns | outcome | posts | system_prompt | tools | ...
    recorded: str
    now: str

    def describe(self) -> str:
        what = KIND_WORDS.get(self.kind, f"{self.kind} differs")
        return f"{self.step}: {what}: recorded {self.recorded}; re-run {self.now}"


@dataclass(frozen=True)
class CapturedWrite:
    """A Hub write the re-run would have made (never sent)."""

    via: str  # the tool name, or "final answer"
    target: str
    content: str


def canonical(value: Any) -> bytes:
    # Sorted keys: the same arguments compare equal whatever order the model wrote them in.
    return msgspec.json.encode(value, order="sorted")


def short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else canonical(value).decode()
    flat = " ".join(text[: width * 4].split())  # cut first: results can be 64 KiB
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class RecordedModel:
    """`Model` that answers with the recorded `llm` events, in order, and checks what it is fed."""

    def __init__(self, recording: Recording, progress: Progress | None = None) -> None:
        self.turns = recording.turns
        self.provider = recording.turns[0].provider if recording.turns else "anthropic"
        self.model = recording.turns[0].model if recording.turns else "recorded"
        self._results = {t.call_id: t for t in recording.tools}
        self.calls = 0
        self.offered: list[str] = []
        self.system = ""
        self.fed: list[Divergence] = []  # results fed to a turn that differ from the recorded ones
        self._progress = progress

    async def complete(self, system: str, transcript: list[Entry], tools: list[ToolSpec]) -> ModelReply:
        if self.calls == 0:
            self.system, self.offered = system, [t.name for t in tools]
        index, self.calls = self.calls, self.calls + 1
        self._check_fed(index, transcript)
        if self._progress is not None:
            self._progress(f"model turn {index + 1}/{len(self.turns)}")
        if index >= len(self.turns):
            # Not retryable: the loop fails with this as its reason, which the report explains.
            raise ModelError(f"the recording ends after {len(self.turns)} model turn(s)")
        turn = self.turns[index]
        calls = [ToolCall(c.id, c.name, c.arguments if c.arguments is not None else {}) for c in turn.tool_calls]
        return ModelReply(text=turn.text, tool_calls=calls, stop_reason=turn.stop_reason,
                          input_tokens=turn.input_tokens, output_tokens=turn.output_tokens, model=turn.model,
                          cache_write_tokens=turn.cache_write_tokens, cache_read_tokens=turn.cache_read_tokens)

    async def aclose(self) -> None:
        return None

    def _check_fed(self, index: int, transcript: list[Entry]) -> None:
        last = transcript[-1] if transcript else None
        if index == 0 or not isinstance(last, ToolResults):
            return
        for result in last.results:
            recorded = self._results.get(result.call_id)
            if recorded is None or recorded.result == result.content:
                continue
            self.fed.append(Divergence(
                step=f"turn {index + 1}", kind="input",
                recorded=f"{recorded.name} returned {short(recorded.result)}",
                now=f"it returned {short(result.content)}: the recorded answer of turn {index + 1} "
                    f"was the model's reaction to the recorded result"))


class RecordedToolbox:
    """`Toolbox` serving recorded results; Hub writes are captured, never sent."""

    def __init__(self, specs: list[ToolSpec], write_tools: set[str], recorded: list[ToolCalled], *,
                 commented: set[tuple[str, str | None]] | None = None,
                 captured: list[CapturedWrite] | None = None) -> None:
        self._specs, self.write_tools = specs, write_tools
        self._unused = list(recorded)
        self.captured: list[CapturedWrite] = [] if captured is None else captured
        # Threads answered through a tool (the activation's ToolContext.commented): it posts no answer there.
        self.commented: set[tuple[str, str | None]] = set() if commented is None else commented

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    def _take(self, name: str, arguments: dict[str, object]) -> ToolCalled | None:
        wanted = canonical(arguments)
        for exact in (True, False):
            for i, event in enumerate(self._unused):
                if event.name == name and (not exact or canonical(event.arguments) == wanted):
                    return self._unused.pop(i) if exact else None
        return None

    async def call(self, name: str, arguments: dict[str, object]) -> ToolOutcome:
        recorded = self._take(name, arguments)
        if name in self.write_tools:
            self._capture(name, arguments)
            if recorded is None:
                return ToolOutcome(json.dumps({"status": "captured offline, not sent"}), server="hub")
        if recorded is None:
            return ToolOutcome(f"offline: no recorded result for {name} with these arguments", is_error=True)
        return ToolOutcome(recorded.result, is_error=recorded.error is not None, server=recorded.server)

    def _capture(self, name: str, args: dict[str, object]) -> None:
        if name == "hub__create_comment":
            parent = str(args["parent_id"]) if args.get("parent_id") else None
            self.commented.add((str(args.get("post_id")), parent))
            target = f"comment on post {args.get('post_id')}" + (f" / comment {parent}" if parent else "")
        elif name == "hub__create_post":
            target = f"post in {args.get('community')}: {args.get('title')}"
        else:
            target = name
        self.captured.append(CapturedWrite(via=name, target=target, content=str(args.get("content", ""))))


class CollectingRecorder:
    """`EventLog` keeping the re-run's own turns, tool calls and ending in memory."""

    attempt = 1

    def __init__(self) -> None:
        self.turns: list[tuple[int, ModelReply]] = []
        self.tools: list[tuple[int, ToolCall, ToolOutcome]] = []
        self.metrics: ActivationMetrics | None = None
        self.memories: list[dict[str, Any]] = []  # the re-run's `memory` events, as fields

    async def started(self, tool_type: str, model: str, runner: str) -> None:
        return None

    async def posted(self, **fields: Any) -> None:
        return None

    async def memory(self, **fields: Any) -> None:
        self.memories.append(fields)

    async def finished(self, metrics: ActivationMetrics) -> None:
        self.metrics = metrics

    def note_context(self, ledger: Any) -> None:
        return None  # a re-run compares answers, not context sizes

    async def llm(self, turn: int, reply: ModelReply, duration_ms: float, provider: str) -> None:
        self.turns.append((turn, reply))

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None:
        self.tools.append((turn, call, outcome))


class RecordedModels:
    """`Models`: the recorded model, whatever the brain."""

    def __init__(self, model: RecordedModel) -> None:
        self.model = model

    async def open(self, request: ThinkRequest) -> RecordedModel:
        return self.model


@dataclass
class RecordedToolsets:
    """`ToolsetFactory`: the tools `specs` (what the definition offers), played from the recording."""

    specs: list[ToolSpec]
    write_tools: set[str]
    recorded: list[ToolCalled]
    captured: list[CapturedWrite] = field(default_factory=list)  # the Hub writes of every toolbox opened

    @contextlib.asynccontextmanager
    async def open(self, ctx: ToolContext) -> AsyncIterator[RecordedToolbox]:
        yield RecordedToolbox(self.specs, self.write_tools, self.recorded, commented=ctx.commented,
                              captured=self.captured)


class RecordedHubReads:
    """`HubReads` from a recording. The threads the model saw were not recorded: none is shown. Nor were an
    exploration's candidates: they are the posts the recording answered or its model turns named."""

    def __init__(self, recording: Recording) -> None:
        named = [t.text.partition("\n")[0].strip()[5:].strip() for t in recording.turns
                 if t.text.strip().upper().startswith("POST ")]
        ids = [p.post_id for p in recording.posted if p.post_id] + [n for n in named if n]
        self.posts = [Post(id=i) for i in dict.fromkeys(ids)]

    async def thread(self, key: str, notification: Notification, cuts: Cuts) -> tuple[str | None, str | None]:
        return None, None

    async def candidates(self, definition: AgentDefinition, key: str) -> list[Post]:
        return list(self.posts)


class RecordedMemory:
    """`Memories` from a recording: the recorded retrieval is given again, nothing is written. With another
    `memory` block (a shadow run) the recorded memories are filtered by its `max_context_items` and, for the
    same strategy, its `relevance_threshold`: what it would have retrieved of what was retrieved then (a
    memory the recording did not retrieve cannot be shown offline). No recorded retrieval: none."""

    def __init__(self, recording: Recording) -> None:
        self.retrieved = next((e for e in recording.memories if e.op == "retrieve"), None)
        self.given: list[MemoryRef] = []

    async def recall(self, definition: AgentDefinition, notifications: Any, ledger: Any, budget_tokens: int,
                     recorder: Any) -> str:
        memory = definition.config.memory
        if memory is None or not memory.enabled or self.retrieved is None:
            return ""
        retrieval = memory.retrieval or Retrieval()
        items = list(self.retrieved.items)
        if retrieval.strategy == self.retrieved.strategy:
            items = [i for i in items if i.relevance >= retrieval.relevance_threshold]
        self.given = items[:retrieval.max_context_items]
        await recorder.memory(op="retrieve", strategy=self.retrieved.strategy, items=self.given,
                              reason="offline: the recorded retrieval")
        return memory_section(self.given)

    async def remember(self, *args: Any) -> None:
        return None  # offline nothing is written

    async def aclose(self) -> None:
        return None


def _where(target: Target) -> str:
    if target.kind == "dm":
        return f"dm {target.dm_id}"
    return f"comment on post {target.post_id}" + (f" / comment {target.parent_id}" if target.parent_id else "")


class CapturingPoster:
    """`Posters` and `Posting`: every answer captured (never sent), no limit applied, nothing posted before."""

    def __init__(self) -> None:
        self.captured: list[CapturedWrite] = []

    def for_agent(self, definition: AgentDefinition, key: str) -> CapturingPoster:
        return self

    async def already_posted(self, idempotency_key: str) -> bool:
        return False

    async def usage(self) -> Usage:
        return Usage()

    async def refusal(self, usage: Usage, target: Target) -> str | None:
        return None

    async def publish(self, idempotency_key: str, target: Target, text: str) -> PostResult:
        self.captured.append(CapturedWrite("final answer", _where(target), text))
        return PostResult(PostOutcome.POSTED, hub_id="offline")


@dataclass(frozen=True)
class RecordedDirectory:
    """The definitions an offline re-run sees: one agent and the skills."""

    definition: AgentDefinition
    skill_set: Mapping[str, SkillDefinition]

    def get(self, name: str) -> AgentDefinition | None:
        return self.definition if name == self.definition.name else None

    def skills(self) -> Mapping[str, SkillDefinition]:
        return self.skill_set


def stand_in(recording: Recording) -> AgentDefinition:
    """A definition for an agent no longer defined: the recorded model, Hub grants, as many turns as recorded."""
    first = recording.turns[0] if recording.turns else None
    provider = first.provider if first is not None and first.provider in ("anthropic", "openai") else "anthropic"
    brain = Brain(model=first.model if first is not None else "unknown", provider=provider)  # type: ignore[arg-type]
    config = AgentConfig(name=recording.request.agent, type="native", brain=brain,
                         capabilities=Capabilities(grants=["hub:read", "hub:write"]),
                         behavior=Behavior(max_iterations=max(len(recording.turns), 1)))
    return AgentDefinition(name=recording.request.agent, hash="", config=config, system_prompt="")


class RecordingError(Exception):
    """The run events cannot be re-run (truncated, or from an older schema); the message says why."""


def delivery_key(msg_id: str | None, attempt: int) -> str:
    """Which delivery of the request wrote an event: from its `Nats-Msg-Id`
    (`run:<activation>:<delivery>:<event>:<n>`), else its attempt. A redriven request starts at attempt 1
    again, so the attempt alone does not tell two deliveries apart."""
    parts = (msg_id or "").rsplit(":", 3)
    return parts[1] if len(parts) == 4 and parts[0].startswith("run:") else str(attempt)


def _deliveries(events: list[Any], keys: list[str] | None) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}  # in order of first appearance in RUNS
    for i, event in enumerate(events):
        groups.setdefault(keys[i] if keys else str(event.attempt), []).append(event)
    return groups


def _chosen(events: list[Any], keys: list[str] | None) -> tuple[RunStarted, list[Any]]:
    """The delivery to re-run: the latest with a `started` event and model turns, else the latest started."""
    started = [(next(e for e in group if isinstance(e, RunStarted)), group)
               for group in _deliveries(events, keys).values() if any(isinstance(e, RunStarted) for e in group)]
    if not started:
        first = events[0] if events else None
        what = f"`{type(first).__name__}`" if first is not None else "nothing"
        raise RecordingError(f"the log is truncated: it has no `started` event (it begins with {what}); the "
                             "start has aged out of RUNS, so the original request is gone and it cannot be re-run")
    turned = [pair for pair in started if any(isinstance(e, LlmTurn) for e in pair[1])]
    start, group = (turned or started)[-1]
    if start.request is None:
        raise RecordingError("this recording comes from an older version that did not keep the request in its "
                             "`started` event; it can be shown but not re-run")
    return start, group


def request_of(events: list[Any], keys: list[str] | None = None) -> ActivationRequested:
    """The recorded request (what a live re-run publishes again)."""
    start, _ = _chosen(events, keys)
    assert start.request is not None
    return start.request


def recording_from(events: list[Any], keys: list[str] | None = None) -> Recording:
    """The delivery to re-run, checked for missing model turns; `keys[i]` is event i's `delivery_key`."""
    start, mine = _chosen(events, keys)
    assert start.request is not None
    turns = sorted((e for e in mine if isinstance(e, LlmTurn)), key=lambda e: e.turn)
    numbers = [t.turn for t in turns]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RecordingError(f"the log is truncated: attempt {start.attempt} has model turns {numbers}, "
                             "some are missing")
    ends = [e for e in mine if isinstance(e, RunCompleted | RunFailed)]
    return Recording(request=start.request, attempt=start.attempt, turns=turns,
                     tools=[e for e in mine if isinstance(e, ToolCalled)],
                     posted=[e for e in mine if isinstance(e, Posted)], end=ends[-1] if ends else None,
                     tool_type=start.tool_type, memories=[e for e in mine if isinstance(e, MemoryUsed)])

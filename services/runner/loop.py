"""The native agent loop (contract §4 step 3): a small state machine over a neutral transcript.

    call model -> (no tool calls) done
               -> run each tool call, answer each with its result -> call model again
    stop at max_iterations (fail), the token budget (fail), or the deadline: one `Budget`, which the
    model gateway charges too

Model errors that may pass (429, 529, 5xx, connection) are retried with backoff as long as the
activation's deadline allows. Every model turn and tool call is recorded through `Recorder`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Protocol

from services.runner.transcript import (
    AssistantTurn,
    Entry,
    Model,
    ModelError,
    ModelReply,
    ToolCall,
    ToolResult,
    ToolResults,
    ToolSpec,
)

MAX_BACKOFF_S = 30.0


class LoopFailed(Exception):
    """The loop ended without an answer; `reason` is the activation's failure reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False
    server: str = ""


class Toolbox(Protocol):
    def specs(self) -> list[ToolSpec]: ...

    async def call(self, name: str, arguments: dict[str, object]) -> ToolOutcome: ...


class Recorder(Protocol):
    async def llm(self, turn: int, reply: ModelReply, duration_ms: float, provider: str) -> None: ...

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None: ...


@dataclass
class Budget:
    """One activation's budget and what it spent: turns, tokens (input and output of every turn together) and
    a deadline. The native loop and the model gateway (the CLIs) both charge it: the token limit is here."""

    max_iterations: int
    max_tokens: int
    deadline: float  # time.monotonic() value
    call_timeout_s: float = 120.0
    iterations: int = 0
    input_tokens: int = 0  # uncached input
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def charge(self, reply: ModelReply) -> None:
        """One answered model call: a turn and its tokens."""
        self.iterations += 1
        self.input_tokens += reply.input_tokens
        self.output_tokens += reply.output_tokens
        self.cache_write_tokens += reply.cache_write_tokens
        self.cache_read_tokens += reply.cache_read_tokens

    def remaining_tokens(self) -> int:
        # The limit counts every token the model read, cached or not: caching lowers the bill, not the work.
        spent = self.input_tokens + self.cache_write_tokens + self.cache_read_tokens + self.output_tokens
        return self.max_tokens - spent

    def over_tokens(self) -> bool:
        """More tokens spent than the limit allows: the activation fails with "max_tokens"."""
        return self.remaining_tokens() < 0

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> str | None:
        """Why no further model call may be made ("timeout", "max_tokens"), or None."""
        if self.remaining_s() <= 0:
            return "timeout"
        return "max_tokens" if self.over_tokens() else None


async def _call_model(model: Model, system: str, transcript: list[Entry], tools: list[ToolSpec],
                      budget: Budget) -> ModelReply:
    # Retry as long as the activation's deadline allows: an overloaded model is the common case, and
    # giving up after a fixed count fails activations that a short wait would have saved.
    for attempt in itertools.count(1):
        remaining_s = budget.remaining_s()
        if remaining_s <= 0:
            raise LoopFailed("timeout")
        try:
            return await asyncio.wait_for(model.complete(system, transcript, tools),
                                          min(budget.call_timeout_s, remaining_s))
        except TimeoutError:
            error = ModelError("model call timed out", retry_after_s=0.5)
        except ModelError as exc:
            error = exc
        if error.retry_after_s is None:
            raise LoopFailed(f"model error: {error}")
        backoff_s = min(MAX_BACKOFF_S, max(error.retry_after_s, 0.25 * 2 ** (attempt - 1))) * random.uniform(1.0, 1.25)
        if backoff_s >= budget.remaining_s():
            raise LoopFailed(f"timeout (last model error: {error})")
        await asyncio.sleep(backoff_s)
    raise AssertionError("unreachable")


async def _run_tool(call: ToolCall, toolbox: Toolbox, known: set[str]) -> ToolOutcome:
    if call.name not in known:
        return ToolOutcome(f"unknown tool {call.name!r}; available: {', '.join(sorted(known))}", is_error=True)
    if not isinstance(call.arguments, dict):
        return ToolOutcome(f"arguments for {call.name} are not a JSON object: {str(call.arguments)[:200]}",
                           is_error=True)
    try:
        return await toolbox.call(call.name, call.arguments)
    except Exception as exc:  # a tool's failure is the model's information, never the loop's end
        return ToolOutcome(f"{call.name} failed: {type(exc).__name__}: {exc}", is_error=True)


async def run_loop(model: Model, system: str, transcript: list[Entry], toolbox: Toolbox, budget: Budget,
                   recorder: Recorder) -> str:
    """Run to a final answer (returned); `budget` holds what was spent, so it survives a LoopFailed.

    Each request is a stable prefix, the tools sorted by name and `system` (the same bytes from one
    activation of an agent to the next, so the provider's prompt cache serves it), then the transcript."""
    tools = sorted(toolbox.specs(), key=lambda spec: spec.name)
    known = {tool.name for tool in tools}
    for turn in range(1, budget.max_iterations + 1):
        started = time.monotonic()
        reply = await _call_model(model, system, transcript, tools, budget)
        budget.charge(reply)
        await recorder.llm(turn, reply, (time.monotonic() - started) * 1000, model.provider)
        if budget.over_tokens():
            raise LoopFailed("max_tokens")
        if not reply.tool_calls:
            return reply.text
        transcript.append(AssistantTurn(reply.text, reply.tool_calls))
        answers = []
        for call in reply.tool_calls:
            started = time.monotonic()
            outcome = await _run_tool(call, toolbox, known)
            await recorder.tool(turn, call, outcome, (time.monotonic() - started) * 1000)
            answers.append(ToolResult(call.id, outcome.content, outcome.is_error))
        transcript.append(ToolResults(answers))
    raise LoopFailed("max_iterations")


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)

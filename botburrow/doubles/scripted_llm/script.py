"""Scripts for the scripted LLM: steps, keyed cursors, the answer a step gives, records and violations."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec

from botburrow.doubles.scripted_llm import demo

StopReason = Literal["end_turn", "tool_use", "max_tokens"]
ViolationKind = Literal["past_end", "sequence", "expect", "auth", "bad_request"]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    # Left out, the provider module makes one (`toolu_...` for Anthropic, `call_...` for OpenAI).
    id: str | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A step's usage as scripted (the prompt cache's own counts are then not used): Anthropic's meaning,
    `input_tokens` the uncached input; OpenAI's `prompt_tokens` is their sum."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class StepError(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    status: int
    message: str = "scripted error"
    retry_after_s: float | None = None


class Expect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # True: the request's last message must carry tool results; False: it must not.
    tool_results: bool | None = None
    # Must appear inside one string of the request body (a message, a tool result, the system prompt...).
    contains: str | None = None


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The answer to one model request."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    delay_s: float = 0.0
    error: StepError | None = None
    expect: Expect | None = None
    # Default: `tool_use` when the step calls tools, else `end_turn`.
    stop_reason: StopReason | None = None


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider module renders, as JSON or as its SSE stream."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    stop_reason: StopReason
    input_tokens: int  # uncached (Anthropic's meaning); before the prompt cache is applied, the whole input
    output_tokens: int
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    usage_scripted: bool = False  # the step set its usage: the prompt cache does not change it


class RecordedRequest(msgspec.Struct, kw_only=True):
    """One request as the server saw it; auth header values are replaced by `[redacted]`."""

    index: int
    method: str
    path: str
    query: str
    provider: str
    tag: str | None
    model: str | None
    stream: bool
    headers: dict[str, str]
    body: Any
    received_at_s: float
    key: str | None = None
    step: int | None = None
    status: int = 200
    answered_at_s: float | None = None


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    kind: ViolationKind
    message: str
    request_index: int
    at_s: float


def parse_steps(steps: Sequence[Step | Mapping[str, Any]]) -> list[Step]:
    parsed: list[Step] = []
    for index, item in enumerate(steps):
        if isinstance(item, Step):
            parsed.append(item)
            continue
        try:
            parsed.append(msgspec.convert(item, Step))
        except msgspec.ValidationError as exc:
            raise ValueError(f"script step {index}: {exc}") from exc
    return parsed


def parse_document(document: Any) -> dict[str | None, list[Step]]:
    """A script document: a list of steps (the default script), or `{"steps": [...], "key"?: str,
    "by_key"?: {key: [...]}}`. Returns steps per key; None is the default script."""
    if isinstance(document, list):
        return {None: parse_steps(document)}
    if not isinstance(document, dict):
        raise ValueError("a script is a list of steps or an object with `steps` and/or `by_key`")
    unknown = set(document) - {"steps", "key", "by_key"}
    if unknown:
        raise ValueError(f"unknown script field(s): {', '.join(sorted(unknown))}")
    scripts: dict[str | None, list[Step]] = {}
    if "steps" in document:
        scripts[document.get("key")] = parse_steps(document["steps"])
    for key, steps in (document.get("by_key") or {}).items():
        scripts[str(key)] = parse_steps(steps)
    return scripts


class Scripts:
    """Steps per key with a cursor each. None is the default script.

    A request is answered from the script of its path tag if one was set, else from the script of its
    model name if one was set, else from the default script. A key once set stays chosen after its
    steps run out (the next request there is past the end), so keyed callers never eat default steps.
    """

    def __init__(self) -> None:
        self._steps: dict[str | None, list[Step]] = {}
        self._next: dict[str | None, int] = {}

    def set(self, steps: list[Step], key: str | None = None) -> None:
        self._steps[key] = steps
        self._next[key] = 0

    def clear(self) -> None:
        self._steps.clear()
        self._next.clear()

    def choose_key(self, tag: str | None, model: str | None) -> str | None:
        for candidate in (tag, model):
            if candidate is not None and candidate in self._steps:
                return candidate
        return None

    def take(self, key: str | None) -> tuple[int, Step] | None:
        steps, index = self._steps.get(key, []), self._next.get(key, 0)
        if index >= len(steps):
            return None
        self._next[key] = index + 1
        return index, steps[index]

    def remaining(self, key: str | None = None) -> int:
        return len(self._steps.get(key, [])) - self._next.get(key, 0)

    def total(self, key: str | None = None) -> int:
        return len(self._steps.get(key, []))

    def summary(self) -> dict[str, Any]:
        return {
            "default": self.remaining(None),
            "by_key": {key: self.remaining(key) for key in self._steps if key is not None},
        }


def estimate_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return max(1, math.ceil(len(text) / 4))


def input_tokens_of(body: Mapping[str, Any]) -> int:
    parts = {name: body.get(name) for name in ("system", "messages", "tools")}
    return estimate_tokens(json.dumps(parts, sort_keys=True, ensure_ascii=False))


def output_tokens_of(text: str, tool_calls: Sequence[ToolCall]) -> int:
    calls = "".join(call.name + json.dumps(call.arguments, sort_keys=True) for call in tool_calls)
    return estimate_tokens(text + calls)


def answer_for(step: Step, body: Mapping[str, Any]) -> Answer:
    stop: StopReason = step.stop_reason or ("tool_use" if step.tool_calls else "end_turn")
    if step.usage is not None:
        usage = step.usage
        return Answer(text=step.text, tool_calls=step.tool_calls, stop_reason=stop, input_tokens=usage.input_tokens,
                      output_tokens=usage.output_tokens, cache_write_tokens=usage.cache_creation_input_tokens,
                      cache_read_tokens=usage.cache_read_input_tokens, usage_scripted=True)
    return Answer(
        text=step.text,
        tool_calls=step.tool_calls,
        stop_reason=stop,
        input_tokens=input_tokens_of(body),
        output_tokens=output_tokens_of(step.text, step.tool_calls),
    )


def demo_answer(last_user_text: str, body: Mapping[str, Any]) -> Answer:
    """The demo-mode reply when no step is left (`demo`): in the agent's voice, after one tool call."""
    text, calls = demo.reply(last_user_text, body)
    tool_calls = tuple(ToolCall(name=name, arguments=arguments) for name, arguments in calls)
    return Answer(
        text=text,
        tool_calls=tool_calls,
        stop_reason="tool_use" if tool_calls else "end_turn",
        input_tokens=input_tokens_of(body),
        output_tokens=output_tokens_of(text, tool_calls),
    )


def iter_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_strings(item)


def chunks(text: str, parts: int = 3) -> list[str]:
    """Split text into a few pieces so that clients must concatenate deltas, as with a real model."""
    if not text:
        return []
    size = max(1, math.ceil(len(text) / parts))
    return [text[i : i + size] for i in range(0, len(text), size)]

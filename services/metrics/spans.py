"""One ended activation's run events as OpenTelemetry spans, with the GenAI semantic conventions (issue 21).

Pure: events in, spans out (through a `tracing.Sink`, which builds them). The tree:

    invoke_agent <agent>           the attempt that ended (its id: the run events' `traceparent`),
    │                              child of the scheduling decision (`act:<id>`), or for a replay
    │                              linked to the original's decision instead
    ├── chat <model>               one per model turn: tokens (cache writes and reads apart), finish reason
    ├── execute_tool <name>        one per tool call: the tool, its error
    ├── memory <op>                retrieval, extraction, eviction
    └── hub.post <target>          the reply written to the Hub

Token counts are the consumption event's (`ActivationMetrics`) on the root, each turn's on its span.
`gen_ai.usage.input_tokens` is every input token (the convention's meaning: cached ones included), the
uncached share is `botburrow.usage.uncached_input_tokens`. Text (the notifications, the model's answer,
tool arguments and results) only with `capture_content`, and redacted (`tracing.text`) either way.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from botburrow import tracing
from botburrow.tracing import SpanRef
from schemas.events import (
    ActivationMetrics,
    LlmTurn,
    MemoryUsed,
    Posted,
    RunCompleted,
    RunFailed,
    RunStarted,
    ToolCalled,
)


class Recorded(NamedTuple):
    """A run event as read from RUNS, with what its headers said."""

    event: Any
    msg_id: str


def ns(at: str) -> int:
    """An RFC 3339 time in nanoseconds since the epoch (0 for an unreadable one)."""
    try:
        return int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


def _usage(input_uncached: int, output: int, cache_write: int, cache_read: int) -> dict[str, Any]:
    return {"gen_ai.usage.input_tokens": input_uncached + cache_write + cache_read,
            "gen_ai.usage.output_tokens": output,
            "gen_ai.usage.cache_creation.input_tokens": cache_write,
            "gen_ai.usage.cache_read.input_tokens": cache_read,
            "botburrow.usage.uncached_input_tokens": input_uncached}


def _json(value: Any) -> str:
    return tracing.text(value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False))


def root_attributes(started: RunStarted | None, metrics: ActivationMetrics, provider: str,
                    capture: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "openinference.span.kind": "AGENT", "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": metrics.agent_id,
        "gen_ai.agent.id": metrics.agent_id, "gen_ai.provider.name": provider, "gen_ai.request.model": metrics.model,
        "gen_ai.conversation.id": metrics.activation_id,
        **_usage(metrics.tokens_input, metrics.tokens_output, metrics.tokens_cache_write, metrics.tokens_cache_read),
        "botburrow.activation.id": metrics.activation_id, "botburrow.tool_type": metrics.tool_type,
        "botburrow.task_type": metrics.task_type, "botburrow.priority": metrics.task_priority,
        "botburrow.outcome": metrics.outcome, "botburrow.cost_usd": metrics.estimated_cost_usd,
        "botburrow.duration_s": metrics.duration_seconds, "botburrow.iterations": metrics.iterations,
    }
    if metrics.error is not None:
        attrs["error.type"] = tracing.text(metrics.error.split(":", 1)[0], 100)
    if started is not None:
        attrs["botburrow.notification.ids"] = started.notification_ids[:20]
        attrs["botburrow.runner"] = started.runner
        if capture and started.request is not None and started.request.notifications:
            attrs["gen_ai.input.messages"] = _json([
                {"role": "user", "parts": [{"type": "text", "content": n.content or ""}]}
                for n in started.request.notifications])
    return attrs


def turn_attributes(turn: LlmTurn, capture: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "openinference.span.kind": "LLM", "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": turn.provider, "gen_ai.request.model": turn.model,
        "gen_ai.response.model": turn.model, "botburrow.turn": turn.turn,
        **_usage(turn.input_tokens, turn.output_tokens, turn.cache_write_tokens, turn.cache_read_tokens),
    }
    if turn.stop_reason:
        attrs["gen_ai.response.finish_reasons"] = [turn.stop_reason]
    if turn.tool_calls:
        attrs["botburrow.tool_calls"] = [call.name for call in turn.tool_calls]
    if capture and turn.text:
        attrs["gen_ai.output.messages"] = _json([{"role": "assistant", "parts": [{"type": "text",
                                                                                  "content": turn.text}]}])
    return attrs


def tool_attributes(call: ToolCalled, capture: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "openinference.span.kind": "TOOL", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": call.call_id, "gen_ai.tool.type": "function",
        "botburrow.tool.server": call.server or None, "botburrow.turn": call.turn}
    if call.error is not None:
        attrs["error.type"] = tracing.text(call.error.split(":", 1)[0], 100)
    if capture:
        attrs["gen_ai.tool.call.arguments"] = _json(call.arguments)
        attrs["gen_ai.tool.call.result"] = tracing.text(call.result)
    return attrs


def build(sink: tracing.Sink, root: SpanRef, ending: RunCompleted | RunFailed, events: list[Recorded], *,
          parent: SpanRef | None, links: list[SpanRef], replay_of: str | None = None) -> list[Any]:
    """The spans of one ended attempt: `events` are its run events (the ending's attempt), in order."""
    capture = sink.capture_content
    started = next((r.event for r in events if isinstance(r.event, RunStarted)), None)
    turns = [r for r in events if isinstance(r.event, LlmTurn)]
    provider = turns[0].event.provider if turns else "unknown"
    metrics = ending.metrics
    start_ns = ns(started.at) if started else ns(metrics.started_at)
    spans = [sink.span(f"invoke_agent {ending.agent}", root, parent=parent, links=links, start_ns=start_ns,
                       end_ns=ns(ending.at), error=metrics.error if isinstance(ending, RunFailed) else None,
                       attributes={**root_attributes(started, metrics, provider, capture),
                                   "botburrow.replay_of": replay_of})]
    for recorded in events:
        spans.extend(_child(sink, root, recorded, capture))
    return spans


def _child(sink: tracing.Sink, root: SpanRef, recorded: Recorded, capture: bool) -> list[Any]:
    event = recorded.event
    ref = SpanRef(root.trace_id, tracing.span_id_of(recorded.msg_id))
    end_ns = ns(event.at)
    if isinstance(event, LlmTurn):
        return [sink.span(f"chat {event.model}", ref, parent=root, kind="CLIENT", end_ns=end_ns,
                          start_ns=end_ns - int(event.duration_ms * 1e6), attributes=turn_attributes(event, capture))]
    if isinstance(event, ToolCalled):
        return [sink.span(f"execute_tool {event.name}", ref, parent=root, end_ns=end_ns, error=event.error,
                          start_ns=end_ns - int(event.duration_ms * 1e6), attributes=tool_attributes(event, capture))]
    if isinstance(event, MemoryUsed):
        attrs = {"openinference.span.kind": "RETRIEVER" if event.op == "retrieve" else "CHAIN",
                 "botburrow.memory.op": event.op, "botburrow.memory.strategy": event.strategy,
                 "botburrow.memory.items": len(event.items), "gen_ai.request.model": event.model or None,
                 "gen_ai.usage.input_tokens": event.input_tokens, "gen_ai.usage.output_tokens": event.output_tokens,
                 "botburrow.memory.reason": tracing.text(event.reason, 300) if event.reason else None}
        return [sink.span(f"memory {event.op}", ref, parent=root, end_ns=end_ns,
                          start_ns=end_ns - int(event.duration_ms * 1e6), attributes=attrs)]
    if isinstance(event, Posted):
        attrs = {f"botburrow.hub.{k}": v for k, v in msgspec.structs.asdict(event).items()
                 if k in ("target", "post_id", "parent_id", "dm_id", "hub_id", "notification_id", "already_posted")}
        return [sink.span(f"hub.post {event.target}", ref, parent=root, kind="CLIENT", start_ns=end_ns,
                          end_ns=end_ns, attributes=attrs)]
    return []

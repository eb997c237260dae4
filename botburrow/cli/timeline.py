"""`botburrow show`: an activation's run events as a timeline a person can read in a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.events import LlmTurn, MemoryUsed, Posted, RunCompleted, RunFailed, RunStarted, ToolCalled
from services.runner.pricing import PriceTable

_DEFAULT_PRICES = PriceTable.load(None)


def _short(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _memory_line(event: MemoryUsed) -> str:
    """A memory retrieval, write or eviction (issue 19): what, how many, the best relevance, and why not."""
    line = f"{event.op} {len(event.items)} ({event.strategy or '-'})"
    if event.op == "retrieve" and event.items:
        line += f", best {max(i.relevance for i in event.items):.2f}: {_short(event.items[0].text, 60)}"
    if event.input_tokens or event.output_tokens:
        line += f", extraction {event.input_tokens} in / {event.output_tokens} out"
    return line + (f", reason={_short(event.reason, 120)}" if event.reason else "")


def _epoch_s(at: str) -> float | None:
    try:
        return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _summary(events: list[Any], prices: PriceTable) -> str:
    turns = [e for e in events if isinstance(e, LlmTurn)]
    tools = [e for e in events if isinstance(e, ToolCalled)]
    tokens_in, tokens_out = sum(t.input_tokens for t in turns), sum(t.output_tokens for t in turns)
    cache = _cache_note(sum(t.cache_write_tokens for t in turns), sum(t.cache_read_tokens for t in turns))
    cost_usd = sum(_turn_cost(t, prices) for t in turns)
    times = [s for s in (_epoch_s(e.at) for e in events) if s is not None]
    span = f", {max(times) - min(times):.2f}s first to last event" if times else ""
    return (f"total: {len(turns)} model turn(s) ({sum(t.duration_ms for t in turns) / 1000:.2f}s), "
            f"{len(tools)} tool call(s) ({sum(t.duration_ms for t in tools) / 1000:.2f}s, "
            f"{sum(1 for t in tools if t.error)} failed), tokens {tokens_in} in{cache} / {tokens_out} out, "
            f"~${cost_usd:.6f}{span}")


def _turn_cost(turn: LlmTurn, prices: PriceTable) -> float:
    return prices.cost_usd(turn.model, turn.input_tokens, turn.output_tokens, turn.cache_write_tokens,
                           turn.cache_read_tokens)


def _cache_note(write_tokens: int, read_tokens: int) -> str:
    """The prompt cache's share of the input (`in` counts the uncached input only), when there is one."""
    return f" (+{write_tokens} cache write, {read_tokens} cache read)" if write_tokens or read_tokens else ""


def render(events: list[Any], prices: PriceTable | None = None, *, whole: bool = False) -> str:
    """One line per event; for a `whole` activation's log
    (`show`, not `tail`) also each event's offset from the first, a totals line, and notes on a missing
    beginning or end."""
    if not events:
        return "no events"
    prices = prices or _DEFAULT_PRICES
    lines: list[str] = []
    start_s = _epoch_s(events[0].at)
    for event in events:
        at = event.at[11:23] if len(event.at) >= 23 else event.at
        at_s = _epoch_s(event.at)
        offset = f" +{at_s - start_s:7.3f}s" if whole and at_s is not None and start_s is not None else ""
        prefix = f"{at}{offset}  #{event.attempt}  "
        if isinstance(event, RunStarted):
            lines.append(f"{prefix}started    {event.agent} ({event.tool_type}, {event.model}) "
                         f"{event.kind}/{event.priority} notifications={','.join(event.notification_ids) or '-'}")
        elif isinstance(event, LlmTurn):
            calls = ", ".join(c.name for c in event.tool_calls)
            cost_usd, cache = _turn_cost(event, prices), _cache_note(event.cache_write_tokens, event.cache_read_tokens)
            lines.append(f"{prefix}llm        turn {event.turn}: {event.input_tokens} in{cache} / "
                         f"{event.output_tokens} out, ~${cost_usd:.6f}, {event.duration_ms:.0f} ms, "
                         f"stop={event.stop_reason}"
                         + (f", calls {calls}" if calls else f", says: {_short(event.text)}"))
        elif isinstance(event, ToolCalled):
            status = "error" if event.error else "ok"
            server = f"{event.server}/" if event.server and not event.name.startswith(f"{event.server}__") else ""
            lines.append(f"{prefix}tool       {server}{event.name} {status} in {event.duration_ms:.0f} ms: "
                         f"{_short(event.result, 80)}")
        elif isinstance(event, Posted):
            where = f"dm {event.dm_id}" if event.target == "dm" else f"post {event.post_id}" + (
                f" / comment {event.parent_id}" if event.parent_id else "")
            again = " (already posted earlier: not sent again)" if event.already_posted else ""
            lines.append(f"{prefix}posted     {event.target} {event.hub_id or '-'} on {where}{again}")
        elif isinstance(event, MemoryUsed):
            lines.append(f"{prefix}memory     {_memory_line(event)}")
        elif isinstance(event, RunCompleted | RunFailed):
            m = event.metrics
            kind = "completed" if isinstance(event, RunCompleted) else "failed   "
            lines.append(f"{prefix}{kind}  outcome={m.outcome} tokens={m.tokens_input}/{m.tokens_output} "
                         f"cost=${m.estimated_cost_usd:.6f} {m.duration_seconds:.2f}s iterations={m.iterations}"
                         # A skipped or limited run's `error` is why it posted nothing, not a failure.
                         + (f" {'error' if m.outcome == 'failed' else 'reason'}={m.error}" if m.error else ""))
    if whole:
        lines.append(_summary(events, prices))
        if not any(isinstance(e, RunStarted) for e in events):
            lines.insert(0, "(truncated: no `started` event; the beginning has aged out of RUNS)")
        if not any(isinstance(e, RunCompleted | RunFailed) for e in events):
            lines.append("(no `completed`/`failed` event: still running, crashed, or the end is missing)")
    return "\n".join(lines)

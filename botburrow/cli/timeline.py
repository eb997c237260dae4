"""`botburrow show`: an activation's run events as a timeline a person can read in a terminal."""

from __future__ import annotations

from typing import Any

from botburrow.schemas.events import LlmTurn, Posted, RunCompleted, RunFailed, RunStarted, ToolCalled


def _short(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render(events: list[Any]) -> str:
    if not events:
        return "no events"
    lines: list[str] = []
    for event in events:
        at = event.at[11:23] if len(event.at) >= 23 else event.at
        prefix = f"{at}  #{event.attempt}  "
        if isinstance(event, RunStarted):
            lines.append(f"{prefix}started    {event.agent} ({event.tool_type}, {event.model}) "
                         f"{event.kind}/{event.priority} notifications={','.join(event.notification_ids) or '-'}")
        elif isinstance(event, LlmTurn):
            calls = ", ".join(c.name for c in event.tool_calls)
            lines.append(f"{prefix}llm        turn {event.turn}: {event.input_tokens} in / {event.output_tokens} out, "
                         f"{event.duration_ms:.0f} ms, stop={event.stop_reason}"
                         + (f", calls {calls}" if calls else f", says: {_short(event.text)}"))
        elif isinstance(event, ToolCalled):
            status = "error" if event.error else "ok"
            lines.append(f"{prefix}tool       {event.name} {status} in {event.duration_ms:.0f} ms: "
                         f"{_short(event.result, 80)}")
        elif isinstance(event, Posted):
            where = f"dm {event.dm_id}" if event.target == "dm" else f"post {event.post_id}" + (
                f" / comment {event.parent_id}" if event.parent_id else "")
            again = " (already posted earlier: not sent again)" if event.already_posted else ""
            lines.append(f"{prefix}posted     {event.target} {event.hub_id or '-'} on {where}{again}")
        elif isinstance(event, RunCompleted | RunFailed):
            m = event.metrics
            kind = "completed" if isinstance(event, RunCompleted) else "failed   "
            lines.append(f"{prefix}{kind}  outcome={m.outcome} tokens={m.tokens_input}/{m.tokens_output} "
                         f"cost=${m.estimated_cost_usd:.6f} {m.duration_seconds:.2f}s iterations={m.iterations}"
                         + (f" error={m.error}" if m.error else ""))
    return "\n".join(lines)

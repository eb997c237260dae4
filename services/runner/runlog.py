"""The activation's event log (contract §5): every event on `agents.run.<agent>.<activation id>.<event>`.

Message ids are deterministic per delivery: `run:<activation>:<stream seq>.<attempt>:<event>:<n>`, where
the stream sequence is that of the request message and the attempt its delivery count. A retried
publish is deduplicated; a redelivery (new attempt) and a re-published request with the same
activation id (a redrive: new sequence, attempt 1 again) each leave their own record.
`earlier_end` reads those ids back, so a runner never ends one activation twice (issue 9).
Free text is redacted by value and capped at 64 KiB per field.

Events are pipelined (issue 18): `started`, `llm`, `tool` and `posted` are sent at once and their acks
collected later, at most ACK_WINDOW outstanding (the oldest is awaited before one more is sent). They keep
their order because they are sent in order on one connection, and the stream stores a connection's
messages in the order it sent them. `completed`/`failed` first settles every outstanding ack, then is
published with a confirmed ack: the end is the last event and is stored before the request is acknowledged.
A failed ack (a timeout, a server error: nats-py never resolves those futures, hence the bounded wait) is
answered by publishing that event and every one after it again, in order, with confirmed publishes
(`Bus.publish`, which rides out an election): the msg ids make a copy of one that did land harmless. Only
then can order differ from sending order: an event the server dropped is stored after the later ones it
kept. If even that fails, the error is raised (the request is handed back: `stage.handle`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.js.errors import NotFoundError

from botburrow.runtime.bus import Bus
from botburrow.secrets import redact
from botburrow.tracing import REPLAY_OF, TRACEPARENT, SpanRef, span_id_of, trace_id_of, traceparent
from schemas.events import (
    ActivationMetrics,
    ActivationRequested,
    LlmTurn,
    MemoryUsed,
    Posted,
    RunCompleted,
    RunFailed,
    RunStarted,
    ToolCalled,
    ToolCallRecord,
)
from services.runner.context import ContextLedger
from services.runner.loop import ToolOutcome, dumps
from services.runner.transcript import ModelReply, ToolCall
from streams import subjects
from streams.topology import RUNS

FIELD_CAP = 64 * 1024
ACK_WINDOW = 32  # run events of one activation in flight before the oldest ack is awaited
ACK_WAIT_S = 5.0  # as Bus.publish's timeout

log = logging.getLogger(__name__)


@dataclass
class _Sent:
    subject: str
    payload: Any
    msg_id: str
    ack: asyncio.Future[Any]


def now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def clean(text: str) -> str:
    text = redact(text)
    return text if len(text) <= FIELD_CAP else text[:FIELD_CAP] + "…[truncated]"


def clean_value(value: Any) -> Any:
    """Redact and cap a JSON-able value (tool arguments) without changing its shape."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {k: clean_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    return value


class RunLog:
    def __init__(self, bus: Bus, request: ActivationRequested, attempt: int, trace_id: str,
                 *, stream_seq: int = 0, replay_of: str | None = None) -> None:
        self.bus, self.request, self.attempt, self.trace_id = bus, request, attempt, trace_id
        self.stream_seq = stream_seq
        self.delivery = f"{stream_seq}.{attempt}"
        # The attempt's span (the root the metrics stage's trace exporter builds from these events): its
        # context rides on every run event, and on to the model and the Hub (botburrow/tracing.py).
        self.span = SpanRef(trace_id_of(trace_id), span_id_of(f"run:{request.activation_id}:{self.delivery}"))
        self.headers = {TRACEPARENT: traceparent(self.span), **({REPLAY_OF: replay_of[:200]} if replay_of else {})}
        self._counts: dict[str, int] = {}
        self._unacked: deque[_Sent] = deque()
        self._ledger: ContextLedger | None = None  # reported once, with the first model turn

    def note_context(self, ledger: ContextLedger) -> None:
        self._ledger = ledger

    def _common(self) -> dict[str, Any]:
        return {"activation_id": self.request.activation_id, "agent": self.request.agent,
                "attempt": self.attempt, "at": now_rfc3339()}

    def _next_id(self, event: str) -> tuple[str, str]:
        n = self._counts.get(event, 0) + 1
        self._counts[event] = n
        return (subjects.run_event(self.request.agent, self.request.activation_id, event),
                f"run:{self.request.activation_id}:{self.delivery}:{event}:{n}")

    async def _emit(self, event: str, payload: Any) -> None:
        """Send a run event now; its ack is collected later (`settle`), within ACK_WINDOW."""
        subject, msg_id = self._next_id(event)
        if len(self._unacked) >= ACK_WINDOW:
            await self._settle_oldest()
        try:
            ack = await self.bus.publish_async(subject, payload, msg_id=msg_id, trace_id=self.trace_id,
                                               headers=self.headers)
        except Exception:  # not even sent (disconnected, too many stalled): the confirmed way, in order
            await self.settle()
            await self.bus.publish(subject, payload, msg_id=msg_id, trace_id=self.trace_id,
                                   headers=self.headers)
            return
        self._unacked.append(_Sent(subject, payload, msg_id, ack))

    async def _emit_confirmed(self, event: str, payload: Any) -> None:
        """Every outstanding event stored first, then this one, its ack awaited (an activation's end)."""
        await self.settle()
        subject, msg_id = self._next_id(event)
        await self.bus.publish(subject, payload, msg_id=msg_id, trace_id=self.trace_id,
                               headers=self.headers)

    async def _settle_oldest(self) -> None:
        sent = self._unacked[0]
        try:
            await asyncio.wait_for(sent.ack, ACK_WAIT_S)
        except Exception as exc:
            log.info("run event ack failed: sending it and the later ones again",
                     extra={"activation_id": self.request.activation_id, "msg_id": sent.msg_id,
                            "error": repr(exc)[:200]})
            await self._resend_all()
            return
        self._unacked.popleft()

    async def _resend_all(self) -> None:
        """Every outstanding event again, in order, each confirmed (msg ids drop the copies that landed)."""
        while self._unacked:
            sent = self._unacked[0]
            sent.ack.cancel()
            await self.bus.publish(sent.subject, sent.payload, msg_id=sent.msg_id, trace_id=self.trace_id,
                                   headers=self.headers)
            self._unacked.popleft()

    async def settle(self) -> None:
        """Wait until every event sent so far is stored (re-sent if an ack failed); raise if one cannot be."""
        while self._unacked:
            await self._settle_oldest()

    def abandon(self) -> None:
        """Stop waiting for outstanding acks (the handling ended without `finished`, and settling failed)."""
        while self._unacked:
            self._unacked.popleft().ack.cancel()

    async def earlier_end(self) -> str | None:
        """`completed` or `failed` when an earlier handling already ended this activation, else None.

        Any `completed` ends it for good: a lost final ack (nats-server killed just after it) or a
        re-published request must not run it again. A `failed` counts only when this request message
        (or a later one) wrote it: a redrive from the DLQ is a new message and runs a failed activation
        again, which is what it is for. One direct get of the last message on each end subject.
        """
        if await self._last_end("completed") is not None:
            return "completed"
        failed_seq = await self._last_end("failed")
        return "failed" if failed_seq is not None and failed_seq >= self.stream_seq else None

    async def _last_end(self, event: str) -> int | None:
        """The request stream sequence in the msg id of the activation's last `event` (0: unreadable),
        or None when there is none."""
        subject = subjects.run_event(self.request.agent, self.request.activation_id, event)
        try:
            # Through the stream's leader: on a cluster a lagging replica answered a direct get without
            # the end it had not caught up on, and the activation ran (and posted) again.
            last = await self.bus.js.get_msg(RUNS.name, subject=subject, direct=False)
        except NotFoundError:
            return None
        return request_seq((last.headers or {}).get("Nats-Msg-Id", ""))

    async def started(self, tool_type: str, model: str, runner: str) -> None:
        r = self.request
        await self._emit("started", RunStarted(
            **self._common(), kind=r.kind, priority=r.priority, tool_type=tool_type, model=model,
            notification_ids=[n.id for n in r.notifications], runner=runner, request=r))

    async def llm(self, turn: int, reply: ModelReply, duration_ms: float, provider: str) -> None:
        report, self._ledger = (self._ledger.report() if self._ledger else None), None
        await self._emit("llm", LlmTurn(context=report,
            **self._common(), turn=turn, model=reply.model, provider=provider, stop_reason=reply.stop_reason,
            input_tokens=reply.input_tokens, output_tokens=reply.output_tokens,
            cache_write_tokens=reply.cache_write_tokens, cache_read_tokens=reply.cache_read_tokens,
            duration_ms=round(duration_ms, 2),
            text=clean(reply.text),
            tool_calls=[ToolCallRecord(id=c.id, name=c.name, arguments=clean_value(c.arguments))
                        for c in reply.tool_calls]))

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None:
        await self._emit("tool", ToolCalled(
            **self._common(), turn=turn, call_id=call.id, name=call.name, server=outcome.server,
            arguments=clean_value(call.arguments), result=clean(outcome.content),
            error=clean(outcome.content)[:1000] if outcome.is_error else None, duration_ms=round(duration_ms, 2)))

    async def posted(self, **fields: Any) -> None:
        await self._emit("posted", Posted(**self._common(), **fields))

    async def memory(self, **fields: Any) -> None:
        """A `memory` event (issue 19): a retrieval, a write or an eviction (services/runner/memory)."""
        await self._emit("memory", MemoryUsed(**self._common(), **fields))

    async def finished(self, metrics: ActivationMetrics) -> None:
        if metrics.outcome == "failed":
            await self._emit_confirmed("failed", RunFailed(**self._common(), metrics=metrics))
        else:
            await self._emit_confirmed("completed", RunCompleted(**self._common(), metrics=metrics))


def request_seq(msg_id: str) -> int:
    """The request's stream sequence in a run event id `run:<activation>:<seq>.<attempt>:<event>:<n>`
    (0 when it is not one: the activation id may hold colons, so count from the right)."""
    parts = msg_id.rsplit(":", 3)
    seq = parts[1].partition(".")[0] if len(parts) == 4 else ""
    return int(seq) if seq.isdigit() else 0


def tool_text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value)

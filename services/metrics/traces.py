"""The trace exporter: each ended activation's run log as one OpenTelemetry trace (issue 21).

It runs inside metrics, on its own durable `metrics-traces` on RUNS (`completed`/`failed`); without
OTEL_EXPORTER_OTLP_ENDPOINT it acknowledges them unread (the durable never lags: no lag alert). Inside
metrics because metrics already is the stage that turns run endings into what operators read
(Prometheus, the consumption report), and already may read RUNS by subject (its catch-up): no sixth
process, NATS user or manifest to run. On a durable of its own because a trace receiver that is down
must never hold back the consumption the Hub and the budgets depend on, nor a Hub outage the traces.

For each ending it reads that attempt's run events by direct gets (next by subject from the attempt's
`started`: no consumer on RUNS, which holds durables), builds the spans (`spans.build`) and sends them
before acknowledging. Live and replayed activations take the same path: a re-run (`botburrow replay
--rerun`, header `Replay-Of`) is a trace of its own, linked to the original's scheduling decision. A
receiver that does not take a batch has it redelivered (backoff) up to TRACE_ATTEMPTS times, then the
traces are dropped, counted and logged: never a dead letter, nothing else held up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js.errors import NotFoundError
from prometheus_client import Counter

from botburrow import tracing
from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import Item, Retry
from botburrow.tracing import SpanRef
from schemas.codec import DecodeError, decode_subject
from schemas.events import RunCompleted, RunFailed, RunStarted
from services.metrics.runsread import runs_between
from services.metrics.spans import Recorded, build
from streams import subjects
from streams.topology import RUNS

log = logging.getLogger(__name__)

EXPORTED = Counter("botburrow_traces_exported_total", "Activations exported as traces")
DROPPED = Counter("botburrow_traces_dropped_total", "Activations whose trace the receiver never took")
TRACE_ATTEMPTS = 3  # deliveries of an ending before its trace is given up (below the consumer's cap)
RETRY_S = 5.0
MAX_EVENTS = 2000  # run events read for one attempt: a runaway activation's trace is cut, not unbounded


async def attempt_events(bus: Bus, ending: RunCompleted | RunFailed, until_seq: int) -> list[Recorded]:
    """The run events of the ending's attempt, in order, up to the ending itself (excluded)."""
    try:
        last_start = await bus.js.get_msg(RUNS.name, subject=subjects.run_event(ending.agent, ending.activation_id,
                                                                                 "started"), direct=True)
        seq = last_start.seq or until_seq
    except NotFoundError:
        return []  # aged out, or never started (a request refused before it ran): the root alone
    found: list[Recorded] = []
    async for at, msg in runs_between(bus, subjects.run_events_of(ending.activation_id), seq, until_seq):
        if len(found) >= MAX_EVENTS:
            break
        try:
            event = decode_subject(msg.subject or "", msg.data or b"")
        except DecodeError:
            continue  # shown by `botburrow show`; its span is left out
        if event.attempt == ending.attempt:
            found.append(Recorded(event, (msg.headers or {}).get("Nats-Msg-Id") or f"seq:{at}"))
    return found


def _parent_and_links(started: RunStarted | None, replay_of: str | None, trace_id: str) -> tuple[
        SpanRef | None, list[SpanRef]]:
    """The scheduling decision this attempt followed; for a re-run, none, and a link to the original's."""
    if started is None:
        return None, []
    decision = tracing.span_id_of(f"act:{started.activation_id}")
    if not replay_of:
        return SpanRef(trace_id, decision), []
    notes = started.request.notifications if started.request else []
    original = tracing.trace_id_of(tracing.request_key(replay_of, [n.id for n in notes]))
    return None, [SpanRef(original, tracing.span_id_of(f"act:{replay_of}"))]


class TraceExporter:
    def __init__(self, bus: Bus, sink: tracing.Sink) -> None:
        self.bus, self.sink = bus, sink

    async def on_batch(self, items: list[Item]) -> None:
        """Batch handler for the `metrics-traces` consumer on RUNS (completed/failed)."""
        if not self.sink.enabled:
            return  # traces off: acknowledged unread (the durable stays current for when they are on)
        spans: list[Any] = []
        for item in items:
            if isinstance(item.payload, RunCompleted | RunFailed):
                spans.extend(await self.spans_of(item))
        if not spans or await asyncio.to_thread(self.sink.export, spans):
            EXPORTED.inc(len(items))
            return
        deliveries = min(item.deliveries for item in items)
        if deliveries < TRACE_ATTEMPTS:
            raise Retry(RETRY_S * deliveries, "trace receiver did not take the spans")
        DROPPED.inc(len(items))
        log.warning("trace receiver did not take the spans: dropped",
                    extra={"activations": len(items), "deliveries": deliveries})

    async def spans_of(self, item: Item) -> list[Any]:
        ending: RunCompleted | RunFailed = item.payload
        headers = item.msg.headers or {}
        root = tracing.of_message(headers) or SpanRef(tracing.trace_id_of(f"act:{ending.activation_id}"),
                                                      tracing.span_id_of(f"run:{ending.activation_id}"))
        events = await attempt_events(self.bus, ending, int(item.msg.metadata.sequence.stream))
        started = next((r.event for r in events if isinstance(r.event, RunStarted)), None)
        replay_of = headers.get(tracing.REPLAY_OF)
        parent, links = _parent_and_links(started, replay_of, root.trace_id)
        return build(self.sink, root, ending, events, parent=parent, links=links, replay_of=replay_of)

"""The trace exporter on a real nats-server (issue 21): the runner's run log (RunLog, as the runner writes
it) becomes the spans of its attempt, read back by direct gets, sent to a real OTLP/HTTP endpoint and
decoded there; a receiver that refuses them costs at most TRACE_ATTEMPTS deliveries, then the trace is
dropped: acknowledged, counted, never a dead letter; an ending with no run log before it is a root alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from botburrow import tracing
from botburrow.runtime.bus import Bus
from botburrow.runtime.http import RunningServer, serve
from botburrow.runtime.worker import Batches, Worker
from schemas.events import ActivationMetrics, ActivationRequested, RunCompleted
from schemas.hub import Notification
from services.metrics import traces
from services.metrics.traces import TraceExporter
from services.runner.runlog import RunLog
from services.runner.transcript import ModelReply
from streams import subjects
from streams.topology import TRACES_CONSUMER

AT = "2026-12-05T10:00:00.000Z"


class Receiver:
    """An OTLP/HTTP endpoint: each request decoded as the protobuf it is, or refused with a 400."""

    def __init__(self) -> None:
        self.refusing = False
        self.requests: list[ExportTraceServiceRequest] = []
        self.server: RunningServer | None = None

    async def traces(self, request: Request) -> Response:
        if self.refusing:
            return Response(status_code=400)
        self.requests.append(ExportTraceServiceRequest.FromString(await request.body()))
        return Response(b"", media_type="application/x-protobuf")

    def spans(self) -> list[Any]:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.server = await serve(Starlette(routes=[Route("/v1/traces", r.traces, methods=["POST"])]))
    try:
        yield r
    finally:
        await r.server.stop()


def metrics_of(activation_id: str) -> ActivationMetrics:
    return ActivationMetrics(activation_id=activation_id, agent_id="pirate", tool_type="native", model="m-1",
                             task_type="mention", task_priority="high", tokens_input=30, tokens_output=4,
                             tokens_cache_write=100, tokens_cache_read=0, outcome="posted", started_at=AT,
                             ended_at=AT)


async def exported(bus: Bus, receiver: Receiver) -> None:
    assert receiver.server is not None
    sink = tracing.Sink("metrics", receiver.server.url, batch=False)
    exporter = TraceExporter(bus, sink)
    await Worker.of(bus, "metrics", [TRACES_CONSUMER], Batches(batch=10, wait_s=0.1), exporter.on_batch,
                    batch_size=10).run_until_idle()


async def test_the_run_log_the_runner_writes_becomes_its_attempts_spans(bus: Bus, receiver: Receiver) -> None:
    request = ActivationRequested(activation_id="a-1", agent="pirate", kind="notification", priority="high",
                                  notifications=[Notification(id="n-1", type="mention")])
    trace_id = tracing.trace_id_of("ntf:n-1")
    runlog = RunLog(bus, request, 1, trace_id, stream_seq=7)
    await runlog.started("native", "m-1", "runner-1")
    reply = ModelReply(text="Arr.", tool_calls=[], stop_reason="end_turn", input_tokens=30, output_tokens=4,
                       model="m-1", cache_write_tokens=100)
    await runlog.llm(1, reply, 12.5, "anthropic")
    await runlog.posted(notification_id="n-1", post_id="p-1")
    await runlog.finished(metrics_of("a-1"))

    await exported(bus, receiver)

    spans = {s.name: s for s in receiver.spans()}
    assert set(spans) == {"invoke_agent pirate", "chat m-1", "hub.post comment"}
    root = spans["invoke_agent pirate"]
    assert root.trace_id.hex() == trace_id and root.span_id.hex() == runlog.span.span_id
    assert root.parent_span_id.hex() == tracing.span_id_of("act:a-1")  # the scheduling decision
    assert {s.parent_span_id.hex() for s in spans.values() if s is not root} == {runlog.span.span_id}
    chat = {a.key: a.value for a in spans["chat m-1"].attributes}
    assert chat["gen_ai.usage.input_tokens"].int_value == 130 and chat["gen_ai.usage.output_tokens"].int_value == 4
    assert chat["gen_ai.usage.cache_creation.input_tokens"].int_value == 100
    assert (await bus.js.stream_info("DLQ")).state.messages == 0


async def test_a_refusing_receiver_costs_bounded_deliveries_then_the_trace_is_dropped_not_dead_lettered(
        bus: Bus, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces, "RETRY_S", 0.05)  # the redelivery delay, not the behaviour
    receiver.refusing = True
    before = traces.DROPPED._value.get()
    # An ending with no run log before it (aged out, or written by hand): the root span alone.
    ending = RunCompleted(activation_id="a-2", agent="pirate", at=AT, metrics=metrics_of("a-2"))
    await bus.publish(subjects.run_event("pirate", "a-2", "completed"), ending, msg_id="run:a-2:completed",
                      trace_id="act:a-2")

    await exported(bus, receiver)

    assert traces.DROPPED._value.get() == before + 1
    info = await bus.js.consumer_info("RUNS", TRACES_CONSUMER.durable)
    assert info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.consumer_seq == traces.TRACE_ATTEMPTS
    assert (await bus.js.stream_info("DLQ")).state.messages == 0

    receiver.refusing = False  # the next ending goes through: the consumer went on
    again = RunCompleted(activation_id="a-3", agent="pirate", at=AT, metrics=metrics_of("a-3"))
    await bus.publish(subjects.run_event("pirate", "a-3", "completed"), again, msg_id="run:a-3:completed")
    await exported(bus, receiver)
    assert [s.name for s in receiver.spans()] == ["invoke_agent pirate"]


async def test_with_traces_off_the_durable_is_acknowledged_unread_so_it_never_lags(
        bus: Bus, receiver: Receiver) -> None:
    ending = RunCompleted(activation_id="a-4", agent="pirate", at=AT, metrics=metrics_of("a-4"))
    await bus.publish(subjects.run_event("pirate", "a-4", "completed"), ending, msg_id="run:a-4:completed")
    exporter = TraceExporter(bus, tracing.Sink("metrics", None))  # no OTEL_EXPORTER_OTLP_ENDPOINT
    await Worker.of(bus, "metrics", [TRACES_CONSUMER], Batches(batch=10, wait_s=0.1), exporter.on_batch,
                    batch_size=10).run_until_idle()
    info = await bus.js.consumer_info("RUNS", TRACES_CONSUMER.durable)
    assert (info.num_pending, info.num_ack_pending, info.delivered.consumer_seq) == (0, 0, 1)
    assert receiver.requests == [] and (await bus.js.stream_info("DLQ")).state.messages == 0

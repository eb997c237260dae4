"""Traces (issue 21): the W3C trace context on NATS messages, and spans sent as OTLP/HTTP.

Ids are derived, never drawn: a notification's trace id is a hash of `ntf:<id>`, a message's span id a
hash of its Nats-Msg-Id. So the stage that publishes a message (its span: the hash of the msg id), the
stage that reads it (a child of the `traceparent` it carries) and the metrics stage, which turns the run
log into spans long after, agree on every id without sharing any state; a retried publish or a
redelivered message names the same span again. `Trace-Id` (contract §5) holds the same 32 hex digits as
the `traceparent` header's trace id.

Spans are built whole (`span()`, start and end known) and handed to a `Sink`: a batching OTLP/HTTP
exporter to OTEL_EXPORTER_OTLP_ENDPOINT, or nothing when it is unset (then no span is even built).
Attribute text goes through `botburrow.secrets.redact`; prompt and completion text only when
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT is set.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

from botburrow.secrets import redact
from schemas.events import ActivationRequested
from schemas.hub import Notification

TRACE_ID_HEADER = "Trace-Id"
TRACEPARENT = "traceparent"
REPLAY_OF = "Replay-Of"
TRACES_PATH = "/v1/traces"  # what the OTel standard appends to OTEL_EXPORTER_OTLP_ENDPOINT
MAX_TEXT_CHARS = 4000  # one attribute's text, after redaction (Tempo and Phoenix keep far more; this is enough)

_HEX32 = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


class SpanRef(NamedTuple):
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits


def trace_id_of(key: str) -> str:
    """A trace id for `key` (`ntf:<notification id>`, `act:<activation id>`): itself when it already is one."""
    if _HEX32.fullmatch(key) and key != "0" * 32:
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def span_id_of(key: str) -> str:
    """The span id of what `key` names: a message (its Nats-Msg-Id), an activation's attempt, a turn."""
    digest = hashlib.sha256(b"span:" + key.encode()).hexdigest()
    return digest[:16] if digest[:16] != "0" * 16 else digest[16:32]


def traceparent(ref: SpanRef) -> str:
    return f"00-{ref.trace_id}-{ref.span_id}-01"


def parse_traceparent(value: str | None) -> SpanRef | None:
    """The context a `traceparent` header names; None for a missing or malformed one (never raises)."""
    found = _TRACEPARENT.fullmatch((value or "").strip().lower())
    if not found or found.group(1) == "0" * 32 or found.group(2) == "0" * 16:
        return None
    return SpanRef(found.group(1), found.group(2))


def message_headers(trace_key: str, msg_id: str | None) -> dict[str, str]:
    """`Trace-Id` and `traceparent` of a message: its trace, and as parent the span of its publish."""
    trace_id = trace_id_of(trace_key)
    return {TRACE_ID_HEADER: trace_id, TRACEPARENT: traceparent(SpanRef(trace_id, span_id_of(msg_id or trace_id)))}


def of_message(headers: Mapping[str, str] | None) -> SpanRef | None:
    """The context a message carries: its `traceparent`, else (older publishers) its `Trace-Id` alone."""
    headers = headers or {}
    if ref := parse_traceparent(headers.get(TRACEPARENT)):
        return ref
    if trace := headers.get(TRACE_ID_HEADER):
        trace_id = trace_id_of(trace)
        return SpanRef(trace_id, span_id_of(headers.get("Nats-Msg-Id") or trace_id))
    return None


# The activation attempt the current task works for (set by the runner): its Hub calls and the model calls
# the gateway relays carry it as `traceparent`, so a Hub or model provider that traces joins the trace.
CURRENT: ContextVar[SpanRef | None] = ContextVar("botburrow_trace", default=None)


def with_current(headers: dict[str, str], ref: SpanRef | None = None) -> dict[str, str]:
    """`headers` plus the `traceparent` of `ref` (default: the current task's attempt), if any."""
    if (ref := ref or CURRENT.get()) is not None:
        headers[TRACEPARENT] = traceparent(ref)
    return headers


def notification_key(notification_id: str) -> str:
    return f"ntf:{notification_id}"


def request_key(activation_id: str, notification_ids: Sequence[str]) -> str:
    """The trace of an activation: its first notification's (ingest, scheduling decision and activation
    form one trace), an exploration's own."""
    return notification_key(notification_ids[0]) if notification_ids else f"act:{activation_id}"


def text(value: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Text fit for an attribute: secrets redacted, then cut."""
    return redact(value)[:limit]


class Sink:
    """Where finished spans go. Disabled (no endpoint): `enabled` is False and nothing is built or sent."""

    def __init__(self, service: str, endpoint: str | None, *, capture_content: bool = False,
                 batch: bool = True) -> None:
        self.service, self.capture_content = service, capture_content
        self.enabled = bool(endpoint)
        self._processor: Any = None
        self._exporter: Any = None
        if not endpoint:
            return
        # Imported here: a process without an endpoint never loads the SDK (its import costs ~0.1 s).
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._resource = Resource.create({"service.name": f"botburrow-{service}", "service.namespace": "botburrow"})
        url = endpoint if endpoint.rstrip("/").endswith(TRACES_PATH) else endpoint.rstrip("/") + TRACES_PATH
        self._exporter = OTLPSpanExporter(endpoint=url)
        self._processor = BatchSpanProcessor(self._exporter) if batch else None

    def span(self, name: str, ref: SpanRef, *, parent: SpanRef | None = None, start_ns: int, end_ns: int,
             attributes: Mapping[str, Any] | None = None, kind: str = "INTERNAL", error: str | None = None,
             links: Iterable[SpanRef] = ()) -> Any:
        """A finished span (an SDK ReadableSpan). Attribute values of None are left out."""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        def context(of: SpanRef, remote: bool) -> trace.SpanContext:
            return trace.SpanContext(int(of.trace_id, 16), int(of.span_id, 16), is_remote=remote,
                                     trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))

        status = (trace.Status(trace.StatusCode.ERROR, text(error, 500)) if error is not None
                  else trace.Status(trace.StatusCode.OK))
        return ReadableSpan(
            name=name, context=context(ref, False), parent=context(parent, True) if parent else None,
            resource=self._resource, attributes={k: v for k, v in (attributes or {}).items() if v is not None},
            links=[trace.Link(context(link, True)) for link in links], kind=trace.SpanKind[kind], status=status,
            start_time=start_ns, end_time=max(start_ns, end_ns),
            instrumentation_scope=InstrumentationScope("botburrow.tracing"))

    def emit(self, spans: Iterable[Any]) -> None:
        """Queued for the batching exporter's thread: never blocks, never raises (a full queue drops)."""
        if self._processor is not None:
            for span in spans:
                self._processor.on_end(span)

    def export(self, spans: Sequence[Any]) -> bool:
        """Sent now (blocking: call it in a thread); False when the receiver did not take them."""
        if self._exporter is None or not spans:
            return True
        from opentelemetry.sdk.trace.export import SpanExportResult

        return bool(self._exporter.export(spans) == SpanExportResult.SUCCESS)

    def shutdown(self) -> None:
        if self._processor is not None:
            self._processor.shutdown()
        elif self._exporter is not None:
            self._exporter.shutdown()
        self._processor = self._exporter = None
        self.enabled = False


_SINKS: dict[str, Sink] = {}
_OFF = Sink("off", None)


def configure(service: str, endpoint: str | None, *, capture_content: bool = False) -> Sink:
    """The process's sink for `service` (a stage name): set once at the stage's start (runtime.service)."""
    if (old := _SINKS.pop(service, None)) is not None:
        old.shutdown()
    _SINKS[service] = sink = Sink(service, endpoint, capture_content=capture_content)
    return sink


def sink(service: str) -> Sink:
    """The sink configured for `service`, or a disabled one (tests and tools that configured none)."""
    return _SINKS.get(service, _OFF)


def close(service: str) -> None:
    if (old := _SINKS.pop(service, None)) is not None:
        old.shutdown()


# --- the spans of the stages before the run log (ingest, the scheduler): one call each ---------------


def now_ns() -> int:
    return time.time_ns()


def emit_notifications(service: str, agent: str, notifications: Iterable[Notification], start_ns: int) -> None:
    """Ingest: one span per notification published (read from the Hub, stored): each the root of its trace."""
    if not (out := sink(service)).enabled:
        return
    end_ns = now_ns()
    out.emit(out.span(f"notification {n.type}", SpanRef(trace_id_of(notification_key(n.id)),
                                                        span_id_of(notification_key(n.id))),
                      kind="PRODUCER", start_ns=start_ns, end_ns=end_ns,
                      attributes={"openinference.span.kind": "CHAIN", "botburrow.agent": agent,
                                  "botburrow.notification.id": n.id,
                                  "botburrow.notification.type": n.type, "botburrow.post.id": n.post_id,
                                  "messaging.system": "nats", "messaging.operation.type": "send"})
             for n in notifications)


def emit_poll(service: str, agent: str, notification_ids: Sequence[str], start_ns: int) -> None:
    """Ingest: a poll of an agent's notifications that found some, a trace of its own linked to each
    notification's span (each notification is the root of its own trace: one poll brings many)."""
    if not notification_ids or not (out := sink(service)).enabled:
        return
    ref = SpanRef(trace_id_of(f"poll:{agent}:{start_ns}"), span_id_of(f"poll:{agent}:{start_ns}"))
    links = [SpanRef(trace_id_of(notification_key(i)), span_id_of(notification_key(i))) for i in notification_ids[:100]]
    out.emit([out.span(f"poll {agent}", ref, links=links, kind="CONSUMER", start_ns=start_ns, end_ns=now_ns(),
                       attributes={"openinference.span.kind": "CHAIN", "botburrow.agent": agent,
                                   "botburrow.notifications": len(notification_ids),
                                   "messaging.system": "nats", "messaging.operation.type": "receive"})])


def emit_decisions(service: str, requests: Iterable[ActivationRequested], start_ns: int) -> None:
    """The scheduler: one span per activation it requested, child of its first notification's span (linked
    to the others it batched)."""
    if not (out := sink(service)).enabled:
        return
    end_ns = now_ns()
    spans = []
    for request in requests:
        ids = [n.id for n in request.notifications]
        trace_id = trace_id_of(request_key(request.activation_id, ids))
        parent = SpanRef(trace_id, span_id_of(notification_key(ids[0]))) if ids else None
        links = [SpanRef(trace_id_of(notification_key(i)), span_id_of(notification_key(i))) for i in ids[1:20]]
        attrs = {"openinference.span.kind": "CHAIN", "botburrow.agent": request.agent,
                 "botburrow.activation.id": request.activation_id,
                 "botburrow.activation.kind": request.kind, "botburrow.priority": request.priority,
                 "botburrow.notification.ids": ids[:20], "messaging.system": "nats"}
        ref = SpanRef(trace_id, span_id_of(f"act:{request.activation_id}"))
        spans.append(out.span(f"schedule {request.agent}", ref, parent=parent, links=links, kind="PRODUCER",
                              start_ns=start_ns, end_ns=end_ns, attributes=attrs))
    out.emit(spans)

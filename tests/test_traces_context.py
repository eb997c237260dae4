"""Traces, fast (issue 21): the trace context's ids and headers, the spans an ended activation becomes
(content off and on, redacted either way), a replay's link, and the context on the Hub calls.

The receiver round trip, with every stage, is tests/test_traces.py (slow); dev --traces and the browser,
tests/test_traces_view.py (slow).
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from botburrow import tracing
from botburrow.hub.client import HubClient
from botburrow.runtime.bus import _message
from botburrow.runtime.http import serve
from botburrow.secrets import remember
from botburrow.tracing import SpanRef
from schemas.events import (
    ActivationMetrics,
    ActivationRequested,
    LlmTurn,
    Posted,
    RunCompleted,
    RunStarted,
    ToolCalled,
    ToolCallRecord,
)
from schemas.hub import Notification
from services.metrics.spans import Recorded, build
from services.metrics.traces import _parent_and_links

SECRET = "sk-test-trace-secret-0123456789abcdef"
AT = "2026-12-05T10:00:00Z"


def test_ids_are_derived_and_the_same_wherever_they_are_computed() -> None:
    trace_id = tracing.trace_id_of("ntf:n-1")
    assert len(trace_id) == 32 and int(trace_id, 16) and trace_id == tracing.trace_id_of("ntf:n-1")
    assert trace_id != tracing.trace_id_of("ntf:n-2")
    assert tracing.trace_id_of(trace_id) == trace_id  # already an id: itself (the runner passes it on)
    span_id = tracing.span_id_of("act:a-1")
    assert len(span_id) == 16 and int(span_id, 16) and span_id != tracing.span_id_of("act:a-2")


@pytest.mark.parametrize("value", [None, "", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                                   "00-" + "1" * 32 + "-" + "0" * 16 + "-01", "00-" + "1" * 31 + "-" + "1" * 16 + "-01",
                                   "00-" + "g" * 32 + "-" + "1" * 16 + "-01", "x" * 10_000])
def test_a_malformed_traceparent_is_no_context(value: str | None) -> None:
    assert tracing.parse_traceparent(value) is None


def test_every_message_carries_trace_id_and_a_traceparent_naming_the_same_trace() -> None:
    _, headers = _message(b"{}", "ntf:n-1", "ntf:n-1", None)
    ref = tracing.parse_traceparent(headers["traceparent"])
    assert ref == SpanRef(headers["Trace-Id"], tracing.span_id_of("ntf:n-1"))
    assert headers["Trace-Id"] == tracing.trace_id_of("ntf:n-1")
    # A publisher's own traceparent (the runner's: its attempt's span) wins; the trace stays the same.
    mine = tracing.traceparent(SpanRef(headers["Trace-Id"], "1" * 16))
    _, headers = _message(b"{}", "run:a:1.1:llm:1", headers["Trace-Id"], {"traceparent": mine})
    assert headers["traceparent"] == mine and headers["Trace-Id"] == tracing.trace_id_of("ntf:n-1")
    assert tracing.of_message({"Trace-Id": "ntf:n-1", "Nats-Msg-Id": "ntf:n-1"}) == ref  # an older publisher


def _run(secret_text: str) -> tuple[RunCompleted, list[Recorded]]:
    note = Notification(id="n-1", type="mention", content=f"please use {secret_text}")
    request = ActivationRequested(activation_id="a-1", agent="pirate", kind="notification", priority="high",
                                  notifications=[note])
    common: dict[str, Any] = {"activation_id": "a-1", "agent": "pirate", "at": AT}
    metrics = ActivationMetrics(activation_id="a-1", agent_id="pirate", tool_type="native", model="m-1",
                                task_type="mention", task_priority="high", tokens_input=300, tokens_output=40,
                                tokens_cache_write=1200, tokens_cache_read=800, estimated_cost_usd=0.0123,
                                outcome="posted", started_at=AT, ended_at=AT)
    events = [
        Recorded(RunStarted(**common, kind="notification", priority="high", tool_type="native", model="m-1",
                            notification_ids=["n-1"], request=request), "run:a-1:7.1:started:1"),
        Recorded(LlmTurn(**common, turn=1, model="m-1", input_tokens=300, output_tokens=40,
                         cache_write_tokens=1200, cache_read_tokens=800, duration_ms=250.0,
                         text=f"the key is {secret_text}",
                         tool_calls=[ToolCallRecord(id="t1", name="hub_search", arguments={"q": secret_text})]),
                 "run:a-1:7.1:llm:1"),
        Recorded(ToolCalled(**common, turn=1, call_id="t1", name="hub_search", arguments={"q": secret_text},
                            result=f"found {secret_text}", error="HubError: 500"), "run:a-1:7.1:tool:1"),
        Recorded(Posted(**common, notification_id="n-1", post_id="p-1"), "run:a-1:7.1:posted:1"),
    ]
    return RunCompleted(**common, metrics=metrics), events


@pytest.mark.parametrize("capture", [False, True])
def test_an_ended_activation_becomes_one_tree_with_the_consumed_tokens_and_no_secret(capture: bool) -> None:
    remember("agent-key:pirate", SECRET)
    sink = tracing.Sink("metrics", "http://127.0.0.1:9", capture_content=capture, batch=False)
    ending, events = _run(SECRET)
    root = SpanRef(tracing.trace_id_of("ntf:n-1"), tracing.span_id_of("run:a-1:7.1"))
    parent, links = _parent_and_links(events[0].event, None, root.trace_id)
    spans = build(sink, root, ending, events, parent=parent, links=links)
    names = [s.name for s in spans]
    assert names == ["invoke_agent pirate", "chat m-1", "execute_tool hub_search", "hub.post comment"]
    assert spans[0].parent.span_id == int(tracing.span_id_of("act:a-1"), 16)  # the scheduling decision
    assert all(s.parent.span_id == int(root.span_id, 16) for s in spans[1:])
    assert {s.context.trace_id for s in spans} == {int(root.trace_id, 16)}
    attrs = spans[0].attributes
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (2300, 40)
    assert (attrs["gen_ai.usage.cache_creation.input_tokens"], attrs["gen_ai.usage.cache_read.input_tokens"]) == (
        1200, 800)
    assert attrs["botburrow.usage.uncached_input_tokens"] == 300 and attrs["botburrow.cost_usd"] == 0.0123
    assert spans[1].end_time - spans[1].start_time == 250_000_000
    assert spans[2].attributes["error.type"] == "HubError" and not spans[2].status.is_ok
    text_keys = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments",
                 "gen_ai.tool.call.result"}
    present = {k for s in spans for k in s.attributes if k in text_keys}
    assert present == (text_keys if capture else set())
    flat = repr([dict(s.attributes) for s in spans]) + repr([s.status.description for s in spans])
    assert SECRET not in flat
    assert ("[REDACTED:agent-key:pirate]" in flat) == capture


def test_a_replay_is_a_trace_of_its_own_linked_to_its_originals_decision() -> None:
    _, events = _run("nothing secret")
    started = events[0].event
    replayed = RunStarted(**{**{f: getattr(started, f) for f in started.__struct_fields__},
                             "activation_id": "a-1-replay-1"})
    parent, links = _parent_and_links(replayed, "a-1", "f" * 32)
    assert parent is None
    assert links == [SpanRef(tracing.trace_id_of("ntf:n-1"), tracing.span_id_of("act:a-1"))]


async def test_a_hub_call_inside_an_activation_carries_its_trace_context() -> None:
    seen: list[str | None] = []

    async def notifications(request: Request) -> JSONResponse:
        seen.append(request.headers.get("traceparent"))
        return JSONResponse({"notifications": [], "unread_count": 0})

    server = await serve(Starlette(routes=[Route("/api/v1/notifications", notifications)]))
    hub = HubClient(server.url)
    try:
        await hub.unread_notifications("agent-key")  # outside an activation: none
        ref = SpanRef(tracing.trace_id_of("ntf:n-1"), tracing.span_id_of("run:a-1:7.1"))
        token = tracing.CURRENT.set(ref)
        try:
            await hub.unread_notifications("agent-key")
        finally:
            tracing.CURRENT.reset(token)
    finally:
        await hub.aclose()
        await server.stop()
    assert seen == [None, tracing.traceparent(ref)]


async def test_a_model_call_relayed_by_the_gateway_carries_the_activations_trace_context() -> None:
    import anthropic

    from botburrow.doubles.scripted_llm import ScriptedLLM
    from services.runner.gateway import ModelGateway
    from tests.test_gateway import REAL_KEY, Recorder, access, brain, environ, limits

    ref = SpanRef(tracing.trace_id_of("ntf:n-1"), tracing.span_id_of("run:a-1:7.1"))
    async with ScriptedLLM(api_key=REAL_KEY) as llm:
        llm.set_script([{"text": "done", "usage": {"input_tokens": 5, "output_tokens": 1}}])
        gateway = ModelGateway()
        await gateway.start()
        token = tracing.CURRENT.set(ref)  # the activation's task, where the session opens
        try:
            async with gateway.session(activation_id="a-1", brain=brain(), **access(environ(llm)),
                                       recorder=Recorder(), budget=limits()) as session:
                tracing.CURRENT.set(None)  # the CLI's call arrives on the gateway's own task: no context there
                client = anthropic.AsyncAnthropic(base_url=session.base_url, api_key=session.token, max_retries=0)
                await client.messages.create(model="gw-model", max_tokens=10,
                                             messages=[{"role": "user", "content": "hi"}])
                await client.close()
        finally:
            tracing.CURRENT.reset(token)
            await gateway.stop()
        assert [r.headers.get("traceparent") for r in llm.requests] == [tracing.traceparent(ref)]

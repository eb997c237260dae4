"""Every activation as an OpenTelemetry trace (issue 21), against a real receiver: Arize Phoenix.

The whole pipeline runs as `botburrow dev` runs it (every stage a process), with OTEL_EXPORTER_OTLP_ENDPOINT
naming a Phoenix the test starts (tools/phoenix/.venv, SQLite in a temp dir, loopback). One mention gives
one trace: the notification (ingest), its scheduling decision, the activation with its model turn and its
Hub write, every id linked; the token counts are the consumption event's; no secret in any attribute,
though the mention carries one and message content is captured. Its re-run is exported the same way,
as a trace of its own that names (and links to) the original.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from botburrow import tracing
from botburrow.cli.ops import load_run
from botburrow.cli.replay import rerun
from botburrow.dev import _await_configs
from botburrow.dev.phoenix import Phoenix, installed
from botburrow.dev.stack import SYSTEM_KEY, LocalStack
from botburrow.runtime.bus import Bus
from schemas.events import RunCompleted, RunStarted
from tests.fixtures.wait import until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not installed(), reason="Phoenix not installed (./setup.sh without --minimal)")]


@pytest.fixture
async def phoenix(tmp_path: Path) -> AsyncIterator[Phoenix]:
    p = Phoenix(tmp_path / "phoenix")
    try:
        await p.start()
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def stack(tmp_path: Path, nats_url: str, bus: Bus, phoenix: Phoenix,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalStack]:
    monkeypatch.setenv("NATS_URL", nats_url)
    s = LocalStack(work_dir=tmp_path / "stack", llm_strict=True, poll_interval_s=0.2,
                   extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url,
                              "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


async def spans_of(phoenix: Phoenix, trace_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{phoenix.url}/v1/projects/default/spans", params={"limit": 1000})
    answer.raise_for_status()
    return [s for s in answer.json()["data"] if s["context"]["trace_id"] == trace_id]


async def answered(stack: LocalStack, bus: Bus, content: str) -> tuple[str, str]:
    """Mention pirate-captain; its completed activation's id and the notification id."""
    assert stack.hub is not None
    await _await_configs(bus, ["pirate-captain"])
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_end(msg: Any) -> None:
        if not ended.done():
            ended.set_result(msg.subject)

    await bus.nc.subscribe("agents.run.pirate-captain.*.*", cb=on_end)
    notification = stack.hub.mention("pirate-captain", content)
    subject = ""
    while not subject.endswith((".completed", ".failed")):
        subject = await asyncio.wait_for(ended, 60)
        if not subject.endswith((".completed", ".failed")):
            ended = asyncio.get_running_loop().create_future()
    assert subject.endswith(".completed"), subject
    return subject.split(".")[3], notification.id


async def test_one_mention_gives_one_linked_trace_with_the_consumed_tokens_and_its_replay_another(
        stack: LocalStack, bus: Bus, phoenix: Phoenix) -> None:
    assert stack.hub is not None and stack.llm is not None
    agent_key = stack.agent_keys["pirate-captain"]
    stack.llm.set_script([{"text": f"Arr! Never share a key like {agent_key}.",
                           "usage": {"input_tokens": 321, "output_tokens": 45}}])
    activation_id, notification_id = await answered(stack, bus, f"is my key {agent_key} safe to post? {SYSTEM_KEY}")
    trace_id = tracing.trace_id_of(tracing.notification_key(notification_id))

    by_name: dict[str, dict[str, Any]] = {}

    async def whole_trace() -> bool:
        spans = await spans_of(phoenix, trace_id)
        by_name.clear()
        by_name.update({s["name"].split(" ")[0]: s for s in spans})
        return {"notification", "schedule", "invoke_agent", "chat", "hub.post"} <= set(by_name)

    await until(whole_trace, 30.0, f"trace {trace_id} complete in Phoenix")
    spans = await spans_of(phoenix, trace_id)
    assert len(spans) == 5, [s["name"] for s in spans]

    # The poll that found it: a trace of its own (one poll brings many notifications), linked to each.
    async with httpx.AsyncClient(timeout=10) as client:
        everything = (await client.get(f"{phoenix.url}/v1/projects/default/spans", params={"limit": 1000})).json()
    assert any(s["name"] == "poll pirate-captain" and s["attributes"]["botburrow.notifications"] >= 1
               for s in everything["data"])

    ids = {name: s["context"]["span_id"] for name, s in by_name.items()}
    assert by_name["notification"]["parent_id"] is None
    assert by_name["schedule"]["parent_id"] == ids["notification"]
    assert by_name["invoke_agent"]["parent_id"] == ids["schedule"]
    assert by_name["chat"]["parent_id"] == ids["invoke_agent"]
    assert by_name["hub.post"]["parent_id"] == ids["invoke_agent"]
    # The same context went to the model provider with the call (a provider that traces would join).
    assert f"00-{trace_id}-{ids['invoke_agent']}-01" in [r.headers.get("traceparent") for r in stack.llm.requests]

    # The tokens are the consumption event's, cache writes and reads apart.
    events = await load_run(bus, activation_id)
    (ending,) = [e for e in events if isinstance(e, RunCompleted)]
    metrics, root = ending.metrics, by_name["invoke_agent"]["attributes"]
    assert root["gen_ai.operation.name"] == "invoke_agent" and root["gen_ai.agent.name"] == "pirate-captain"
    assert root["botburrow.activation.id"] == activation_id and root["botburrow.outcome"] == "posted"
    assert root["gen_ai.usage.output_tokens"] == metrics.tokens_output == 45
    assert root["botburrow.usage.uncached_input_tokens"] == metrics.tokens_input == 321
    assert root["gen_ai.usage.cache_creation.input_tokens"] == metrics.tokens_cache_write
    assert root["gen_ai.usage.cache_read.input_tokens"] == metrics.tokens_cache_read
    assert root["gen_ai.usage.input_tokens"] == (metrics.tokens_input + metrics.tokens_cache_write
                                                 + metrics.tokens_cache_read)
    assert root["botburrow.cost_usd"] == pytest.approx(metrics.estimated_cost_usd)
    chat = by_name["chat"]["attributes"]
    assert chat["gen_ai.request.model"] == metrics.model and chat["gen_ai.usage.output_tokens"] == 45
    assert chat["gen_ai.provider.name"] == "anthropic"
    assert "REDACTED" in root["gen_ai.input.messages"] and "REDACTED" in chat["gen_ai.output.messages"]

    # No secret anywhere: not the agent's key the mention and the answer carried, not the system key.
    flat = repr(spans)
    assert agent_key not in flat and SYSTEM_KEY not in flat
    assert all(k not in flat for k in stack.agent_keys.values())

    # Re-run (`botburrow replay --rerun`): exported the same way, a trace of its own naming its original.
    stack.llm.set_script([{"text": "Arr, again.", "usage": {"input_tokens": 10, "output_tokens": 3}}])
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.request is not None
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_end(msg: Any) -> None:
        if "-replay-" in msg.subject and not ended.done():
            ended.set_result(msg.subject.split(".")[3])

    await bus.nc.subscribe("agents.run.pirate-captain.*.completed", cb=on_end)
    assert await rerun(bus, started.request, json_out=True) == 0
    replay_id = await asyncio.wait_for(ended, 60)

    async def replay_root() -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=10) as client:
            found = (await client.get(f"{phoenix.url}/v1/projects/default/spans", params={"limit": 1000})).json()
        return next((s for s in found["data"] if s["name"].startswith("invoke_agent ")
                     and s["attributes"].get("botburrow.activation.id") == replay_id), None)

    replayed = await until(replay_root, 30.0, f"the re-run {replay_id}'s span in Phoenix")
    assert replayed["attributes"]["botburrow.replay_of"] == activation_id
    assert replayed["context"]["trace_id"] != trace_id and replayed["parent_id"] is None
    assert replayed["attributes"]["gen_ai.usage.output_tokens"] == 3

"""The metrics stage: consumption of ended activations reaches the Hub, batched, with nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError
from prometheus_client import REGISTRY

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from schemas.events import ActivationMetrics, LlmTurn, RunCompleted, RunFailed
from services.metrics import stage as metrics
from services.metrics.ledger import Budgets, Ledger, ToolLimit
from streams import subjects
from streams.topology import BUDGET_LEDGER
from tests.fixtures.wait import until

WAIT_S = 15.0
AT = "2025-01-01T00:00:00Z"


def ended(agent: str, n: int, *, failed: bool = False, tokens: tuple[int, int] = (100, 20)) -> RunCompleted | RunFailed:
    activation = f"act-{agent}-{n}"
    usage = ActivationMetrics(activation_id=activation, agent_id=agent, tool_type="native", model="claude-test",
                              task_type="notification", task_priority="high", tokens_input=tokens[0],
                              tokens_output=tokens[1], estimated_cost_usd=0.01, duration_seconds=2.5, iterations=2,
                              outcome="failed" if failed else "posted", error="max_iterations" if failed else None,
                              started_at=AT, ended_at=AT)
    kind = RunFailed if failed else RunCompleted
    return kind(activation_id=activation, agent=agent, at=AT, metrics=usage)


async def publish(bus: Bus, event: RunCompleted | RunFailed) -> None:
    name = "failed" if isinstance(event, RunFailed) else "completed"
    await bus.publish(subjects.run_event(event.agent, event.activation_id, name), event,
                      msg_id=f"run:{event.activation_id}:1:{name}")


@contextlib.asynccontextmanager
async def running_metrics(nats_url: str, hub: HubEmulator, batch_size: int = 100,
                          **extra: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    environ = {"NATS_URL": nats_url, "HUB_URL": hub.url, "HUB_API_KEY": hub.system_key, "METRICS_PORT": "0",
               "CONSUMPTION_BATCH_SIZE": str(batch_size), "CONSUMPTION_FLUSH_SECONDS": "0.2", **extra}
    environ = {name: value for name, value in environ.items() if value}  # "": unset
    task = asyncio.create_task(run_stage("metrics", metrics.run, environ=environ, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def until_reported(hub: HubEmulator, count: int) -> list[ActivationMetrics]:
    await until(lambda: len(hub.consumption) >= count, WAIT_S, f"{count} consumption reports")
    return list(hub.consumption)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_consumption_reaches_the_hub_and_prometheus(bus: Bus, nats_url: str,
                                                          hub_emulator: HubEmulator) -> None:
    agent = f"ann-{uuid.uuid4().hex[:6]}"
    async with running_metrics(nats_url, hub_emulator, batch_size=2):
        await publish(bus, ended(agent, 1, tokens=(1200, 345)))
        # Not an ended activation: the stage's consumer never sees it.
        await bus.publish(subjects.run_event(agent, "act-x", "llm"),
                          LlmTurn(activation_id="act-x", agent=agent, at=AT, turn=1, model="m"))
        await publish(bus, ended(agent, 2, failed=True, tokens=(10, 5)))
        await publish(bus, ended(agent, 3, tokens=(1, 1)))
        reported = await until_reported(hub_emulator, 3)
    by_id = {m.activation_id: m for m in reported}
    assert set(by_id) == {f"act-{agent}-1", f"act-{agent}-2", f"act-{agent}-3"}
    assert (by_id[f"act-{agent}-1"].tokens_input, by_id[f"act-{agent}-1"].tokens_output) == (1200, 345)
    assert by_id[f"act-{agent}-2"].outcome == "failed" and by_id[f"act-{agent}-2"].error == "max_iterations"
    posts = hub_emulator.requests.matching("/api/v1/system/consumption", "POST")
    assert 2 <= len(posts) <= 3  # batches of at most two events

    labels = {"agent_id": agent, "tool_type": "native"}
    assert sample("botburrow_tokens_total", **labels, direction="input") == 1211
    assert sample("botburrow_tokens_total", **labels, direction="output") == 351
    assert sample("botburrow_activation_total", **labels, status="posted") == 2
    assert sample("botburrow_activation_total", **labels, status="failed") == 1
    assert sample("botburrow_activation_duration_seconds_count", **labels) == 3
    assert sample("botburrow_activation_duration_seconds_sum", **labels) == pytest.approx(7.5)


async def test_a_hub_outage_delays_consumption_but_loses_none(bus: Bus, nats_url: str,
                                                              hub_emulator: HubEmulator) -> None:
    agent = f"bob-{uuid.uuid4().hex[:6]}"
    # More failures than the client's own retries absorb: the stage must hold the batch and try again.
    hub_emulator.set_fault(status=503, count=5, path_prefix="/api/v1/system/consumption")
    async with running_metrics(nats_url, hub_emulator):
        for n in range(5):
            await publish(bus, ended(agent, n))
        reported = await until_reported(hub_emulator, 5)
    assert sorted(m.activation_id for m in reported) == [f"act-{agent}-{n}" for n in range(5)]
    failed = [r for r in hub_emulator.requests.matching("/api/v1/system/consumption") if r.status == 503]
    assert len(failed) == 5
    assert (await bus.js.stream_info("DLQ")).state.messages == 0
    info = await bus.js.consumer_info("RUNS", "metrics")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


# --- a Hub without /system/* (issue 16): the local ledger -------------------------------------------------


def ended_now(agent: str, n: int, cost_usd: float = 0.01) -> RunCompleted | RunFailed:
    """An ended activation of this budget period (the ledger counts spend by the period it ended in)."""
    event = ended(agent, n)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    metrics = msgspec.structs.replace(event.metrics, ended_at=now, estimated_cost_usd=cost_usd)
    return msgspec.structs.replace(event, at=now, metrics=metrics)


async def ledger_entry(bus: Bus, key: str) -> dict[str, Any] | None:
    kv = await bus.kv(BUDGET_LEDGER.name)
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value or b"null")


async def spend_of(bus: Bus, tool_type: str) -> dict[str, Any] | None:
    return await ledger_entry(bus, f"spend.{time.strftime('%Y%m%d', time.gmtime())}.{tool_type}")


@contextlib.asynccontextmanager
async def moltbook_hub() -> AsyncIterator[HubEmulator]:
    hub = HubEmulator(system_key="moltbook-has-no-system-key", profile="moltbook")
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def test_a_hub_without_system_routes_keeps_consumption_in_the_ledger_with_no_dead_letter(
        bus: Bus, nats_url: str, tmp_path: Path) -> None:
    agent = f"ledg-{uuid.uuid4().hex[:6]}"
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("period: day\ntools:\n  native: {usd: 0.024}\n")
    async with moltbook_hub() as hub, running_metrics(nats_url, hub, BUDGETS_FILE=str(budgets)):
        first = ended_now(agent, 1)
        await publish(bus, first)
        await publish(bus, ended_now(agent, 2))
        # The same ended activation again (a runner's re-publication): counted once.
        await bus.publish(subjects.run_event(agent, first.activation_id, "completed"), first,
                          msg_id=f"run:{first.activation_id}:2:completed")
        spend = await until(lambda: spend_if(bus, lambda s: s["activations"] >= 2), WAIT_S, "two in the ledger")
        health = await until(lambda: health_if(bus, "warning"), WAIT_S, "budget health: warning (83 %)")
        await publish(bus, ended_now(agent, 3))
        health = await until(lambda: health_if(bus, "critical"), WAIT_S, "budget health: critical (125 %)")
        info = await until(lambda: settled(bus), WAIT_S, "every ended activation acknowledged")
    assert spend["activations"] == 2 and spend["usd"] == pytest.approx(0.02)
    assert health["tools"]["native"]["used_pct"] == pytest.approx(125.0)
    assert info.num_redelivered == 0
    assert (await bus.js.stream_info("DLQ")).state.messages == 0
    assert not hub.consumption


async def spend_if(bus: Bus, ok: Any) -> dict[str, Any] | None:
    spend = await spend_of(bus, "native")
    return spend if spend is not None and ok(spend) else None


async def health_if(bus: Bus, status: str) -> dict[str, Any] | None:
    health = await ledger_entry(bus, "health")
    return health if health and health["tools"].get("native", {}).get("status") == status else None


async def settled(bus: Bus) -> Any:
    info = await bus.js.consumer_info("RUNS", "metrics")
    return info if info.num_pending == 0 and info.num_ack_pending == 0 else None


async def test_reporting_resumes_where_the_ledger_stands_once_the_hub_serves_system_routes(
        bus: Bus, nats_url: str, hub_emulator: HubEmulator) -> None:
    agent = f"resu-{uuid.uuid4().hex[:6]}"
    missing = hub_emulator.set_fault(status=404, message="Endpoint not found", path_prefix="/api/v1/system")
    reported_before = sample("botburrow_consumption_reported_total")
    # Asked again at once: the first batch after the Hub gains the route reports (a quiet system waits for
    # its next ended activation, or the recheck period, whichever is later).
    async with running_metrics(nats_url, hub_emulator, CONSUMPTION_RECHECK_SECONDS="0.01"):
        for n in range(3):
            await publish(bus, ended_now(agent, n))
        await until(lambda: spend_if(bus, lambda s: s["activations"] >= 3), WAIT_S, "three in the ledger")
        await until(lambda: settled(bus), WAIT_S, "acknowledged while the Hub lacks the route")
        assert await ledger_entry(bus, "unreported") is not None
        assert not hub_emulator.consumption
        hub_emulator.faults.active.remove(missing)  # the Hub gains /system/*
        for n in range(3, 5):
            await publish(bus, ended_now(agent, n))
        reported = await until_reported(hub_emulator, 5)
        await until(lambda: settled(bus), WAIT_S, "all acknowledged")
    assert sorted(m.activation_id for m in reported) == [f"act-{agent}-{n}" for n in range(5)]
    # Each posted once: the three kept back by the catch-up, the two new ones by their batch.
    assert sample("botburrow_consumption_reported_total") - reported_before == 5
    assert await ledger_entry(bus, "unreported") is None
    assert (await bus.js.stream_info("DLQ")).state.messages == 0


async def test_ledger_replicas_add_up_and_count_each_activation_once(bus: Bus) -> None:
    kv = await bus.kv(BUDGET_LEDGER.name)
    budgets = Budgets(tools={"native": ToolLimit(usd=1.0)})
    agent = f"repl-{uuid.uuid4().hex[:6]}"
    events = [ended_now(agent, n, cost_usd=0.001).metrics for n in range(40)]
    tool = f"tool-{agent}"
    events = [msgspec.structs.replace(m, tool_type=tool) for m in events]
    # Two replicas, overlapping halves (a redelivery to the other replica), at once.
    await asyncio.gather(*(Ledger(kv, budgets).record(chunk) for chunk in (events[:25], events[15:], events[10:30])))
    spend = await spend_of(bus, tool)
    assert spend is not None and spend["activations"] == 40 and spend["usd"] == pytest.approx(0.04)


async def test_without_a_system_key_consumption_goes_to_the_ledger_and_never_to_the_hub(
        bus: Bus, nats_url: str, hub_emulator: HubEmulator) -> None:
    agent = f"nokey-{uuid.uuid4().hex[:6]}"
    async with running_metrics(nats_url, hub_emulator, HUB_API_KEY=""):
        for n in range(3):
            await publish(bus, ended_now(agent, n))
        await until(lambda: spend_if(bus, lambda s: s["activations"] >= 3), WAIT_S, "three in the ledger")
        await until(lambda: settled(bus), WAIT_S, "acknowledged")
    assert not hub_emulator.requests.matching("/api/v1/system")
    assert await ledger_entry(bus, "unreported") is not None  # a key added later catches them up
    assert (await bus.js.stream_info("DLQ")).state.messages == 0

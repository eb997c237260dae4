"""The scheduler stage on a real nats-server: partitions, the budget gate against the Hub emulator,
config changes without restart, and agents freed after their activation was lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec

from botburrow.definitions import bucket
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub.capabilities import CapabilityTracker
from botburrow.hub.client import HubClient
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from schemas.agent import Discovery
from schemas.events import ActivationMetrics, ActivationRequested, DeadLetter, SchedulingRefused
from services.metrics.ledger import Budgets, Ledger, ToolLimit
from services.runner.runlog import now_rfc3339
from services.scheduler import stage as scheduler
from services.scheduler.budget import HubOrLedger, LedgerHealth
from services.scheduler.partitions import partition_of
from services.scheduler.state import AgentState
from streams import subjects
from streams.topology import BUDGET_LEDGER
from tests.fixtures.wait import until
from tests.test_scheduler import (
    WAIT_S,
    Feed,
    add_agents,
    definition,
    feed,
    note,
    publish_notification,
    wait_for_state,
)

BUDGET_PATH = "/api/v1/system/budget-health"


@contextlib.asynccontextmanager
async def scheduler_with(nats_url: str, **env: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    environ = {"NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0",
               "SCHEDULER_TICK_SECONDS": "0.05", **env}
    task = asyncio.create_task(run_stage("scheduler", scheduler.run, environ=environ, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def test_partitions_match_the_servers_subject_transform(bus: Bus) -> None:
    agents = [f"agent-{i}" for i in range(40)] + ["ann", "b.o.b"]
    for agent in agents:
        await publish_notification(bus, agent, note(f"n-{agent}"))
    seen: dict[str, int] = {}
    sub = await bus.js.subscribe("agents.sched.part.>", stream="SCHEDULER", ordered_consumer=True)
    try:
        while len(seen) < len(agents):
            msg = await sub.next_msg(timeout=WAIT_S)
            tokens = msg.subject.split(".")
            seen[tokens[-1]] = int(tokens[3])
    finally:
        await sub.unsubscribe()
    assert seen == {subjects.token(agent): partition_of(agent) for agent in agents}
    assert len(set(seen.values())) > 8  # spread over the partitions


async def test_budget_gate_refuses_with_events_and_config_changes_apply_live(
        bus: Bus, nats_url: str, hub_emulator: HubEmulator) -> None:
    hub_emulator.set_budget("native", used_pct=95.0)  # throttle: no exploration
    await add_agents(bus, definition("ann"))
    env = {"HUB_URL": hub_emulator.url, "HUB_API_KEY": hub_emulator.system_key, "BUDGET_CACHE_SECONDS": "0.05"}
    async with feed(bus, "agents.sched.decision.>") as decisions, feed(bus, "agents.sched.activation.>") as requests, \
            feed(bus, "agents.dlq.scheduler") as dlq, scheduler_with(nats_url, **env):
        # A new agent with discovery on is picked up without a restart, and refused while throttled.
        await add_agents(bus, definition("eve", discovery=Discovery(enabled=True)))
        refused, _ = await decisions.next(SchedulingRefused)
        assert (refused.agent, refused.kind, refused.reason) == ("eve", "exploration", "budget_throttle")
        hub_emulator.set_budget("native", used_pct=10.0)
        explored, _ = await requests.next(ActivationRequested)
        assert (explored.agent, explored.kind, explored.priority) == ("eve", "exploration", "low")

        hub_emulator.set_budget("native", used_pct=100.0)  # critical: nothing new starts
        await wait_for_budget(hub_emulator, bus)
        await publish_notification(bus, "ann", note("n1"))
        refused, _ = await decisions.next(SchedulingRefused)
        assert (refused.agent, refused.kind, refused.reason) == ("ann", "notification", "budget_critical")
        hub_emulator.set_budget("native", used_pct=50.0)
        request, _ = await requests.next(ActivationRequested)
        assert request.agent == "ann" and [n.id for n in request.notifications] == ["n1"]

        # A removed agent stops being scheduled: its notifications are dead-lettered with the reason.
        await (await bus.kv(bucket.BUCKET)).delete(bucket.key("agent", "ann"))
        await wait_gone(bus, requests, "ann")
        await publish_notification(bus, "ann", note("n2"))
        letter, _ = await dlq.next(DeadLetter)
        assert letter.reason == "unknown agent ann"


async def wait_for_budget(hub: HubEmulator, bus: Bus) -> None:
    """Until the scheduler holds the new status: the emulator answers with it at once, and the scheduler
    refreshes one request at a time, so a second request after the change means the first one's answer
    (the new status) is in its cache."""
    assert hub.world.budget_health()["tools"]["native"]["status"] == "critical"
    asked_before = len(hub.requests.matching(BUDGET_PATH))
    await until(lambda: len(hub.requests.matching(BUDGET_PATH)) >= asked_before + 2, WAIT_S,
                "two budget refreshes after the change")


async def wait_gone(bus: Bus, requests: Feed, agent: str) -> None:
    """Until the scheduler's directory has applied the agent's deletion. It applies the configs bucket in
    order, so once it acts on a change made after the deletion (a new agent with discovery on, explored
    at once), it has applied the deletion too."""
    sentinel = f"after-{agent}-gone"
    await add_agents(bus, definition(sentinel, discovery=Discovery(enabled=True)))
    while (await requests.next(ActivationRequested))[0].agent != sentinel:
        pass


async def test_an_agent_whose_activation_was_lost_is_freed_but_not_one_holding_its_lease(
        bus: Bus, nats_url: str) -> None:
    await add_agents(bus, definition("ann"), definition("bob"))
    state_kv = await bus.kv("agent-state")
    leases = await bus.kv("leases")
    await leases.put(subjects.token("bob"), b"runner-1")  # bob's runner is alive
    async with feed(bus, "agents.sched.activation.>") as requests, \
            scheduler_with(nats_url, SCHEDULER_STUCK_AFTER_SECONDS="1"):
        for agent in ("bob", "ann"):
            await publish_notification(bus, agent, note(f"{agent}-1"))
            await requests.next(ActivationRequested)
        for agent in ("bob", "ann"):
            await publish_notification(bus, agent, note(f"{agent}-2"))
            await wait_for_state(state_kv, agent, lambda s: len(s.pending) == 1)
        request, _ = await requests.next(ActivationRequested)
        assert request.agent == "ann" and [n.id for n in request.notifications] == ["ann-2"]
        ann = await wait_for_state(state_kv, "ann", lambda s: s.activations_lost == 1)
        assert ann.last_outcome == "lost"
    bob = msgspec.json.decode((await state_kv.get("bob")).value or b"", type=AgentState)
    assert bob.activations_lost == 0 and [n.id for n in bob.pending] == ["bob-2"]


async def test_on_a_hub_without_budget_health_the_gate_follows_the_local_ledger(bus: Bus, nats_url: str) -> None:
    """Moltbook has no /system/*: exploration runs while the ledger's budget allows, refused when spent."""
    ledger_kv = await bus.kv(BUDGET_LEDGER.name)
    spent = [ActivationMetrics(activation_id=f"a-{n}", agent_id="x", tool_type="native", model="m",
                               task_type="exploration", task_priority="low", estimated_cost_usd=1.0, outcome="posted",
                               started_at=now_rfc3339(), ended_at=now_rfc3339()) for n in range(95)]
    await Ledger(ledger_kv, Budgets(tools={"native": ToolLimit(usd=100.0)})).record(spent)
    await Ledger(ledger_kv, Budgets(tools={"native": ToolLimit(usd=100.0)})).write_health()  # 95 %: throttle
    hub = HubEmulator(system_key="moltbook-has-no-system-key", profile="moltbook")
    await hub.start()
    env = {"HUB_URL": hub.url, "HUB_API_KEY": hub.system_key, "BUDGET_CACHE_SECONDS": "0.05"}
    try:
        async with feed(bus, "agents.sched.decision.>") as decisions, \
                feed(bus, "agents.sched.activation.>") as requests, scheduler_with(nats_url, **env):
            await add_agents(bus, definition("eve", discovery=Discovery(enabled=True)))
            refused, _ = await decisions.next(SchedulingRefused)
            assert (refused.agent, refused.kind, refused.reason) == ("eve", "exploration", "budget_throttle")
            # The operator raises the budget: the metrics stage's next health says healthy.
            await Ledger(ledger_kv, Budgets(tools={"native": ToolLimit(usd=1000.0)})).write_health()
            explored, _ = await requests.next(ActivationRequested)
            assert (explored.agent, explored.kind) == ("eve", "exploration")
    finally:
        await hub.stop()
    assert hub.requests.matching(BUDGET_PATH)  # the Hub was asked, and said it has no such route


async def test_the_gate_reads_the_ledger_while_the_hub_lacks_budget_health_and_the_hub_once_it_has_it(
        bus: Bus, hub_emulator: HubEmulator) -> None:
    kv = await bus.kv(BUDGET_LEDGER.name)
    await Ledger(kv, Budgets(tools={"native": ToolLimit(usd=1.0)})).write_health()  # nothing spent: healthy
    missing = hub_emulator.set_fault(status=404, message="Endpoint not found", path_prefix="/api/v1/system")
    hub_emulator.set_budget("native", used_pct=95.0)
    async with HubClient(hub_emulator.url, system_key=hub_emulator.system_key) as hub:
        patient = HubOrLedger(hub, LedgerHealth(kv))  # asks the Hub again after 10 minutes
        assert (await patient.budget_health()).tools["native"].status == "healthy"
        assert (await patient.budget_health()).tools["native"].status == "healthy"
        assert len(hub_emulator.requests.matching(BUDGET_PATH)) == 1  # not asked again meanwhile
        eager = HubOrLedger(hub, LedgerHealth(kv), CapabilityTracker(reprobe_after_s=0.0))
        assert (await eager.budget_health()).tools["native"].status == "healthy"
        hub_emulator.faults.active.remove(missing)  # the Hub gains /system/*
        assert (await eager.budget_health()).tools["native"].status == "throttle"

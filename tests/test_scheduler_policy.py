"""The scheduler's timed policies, without I/O: exploration by staleness, the budget gate, lost activations."""

from __future__ import annotations

from typing import Any

from schemas.agent import AgentConfig, Behavior, Brain, Capabilities, Discovery
from schemas.hub import Author, BudgetHealth, Notification, ToolBudget
from services.scheduler.budget import BudgetGate
from services.scheduler.due import HOUR_S, ExploreRule
from services.scheduler.partitions import original_subject, partition_of
from services.scheduler.state import AgentState, Responds, SchedulerState

T0 = "2025-01-01T00:00:00.000Z"
GAP_S = 900.0


def at(minutes: float) -> str:
    total_s = int(minutes * 60)
    return f"2025-01-01T{total_s // 3600:02d}:{total_s // 60 % 60:02d}:{total_s % 60:02d}.000Z"


def rule(gap_s: float = GAP_S, tool_type: str = "native") -> ExploreRule:
    return ExploreRule(gap_s=gap_s, tool_type=tool_type)


def note(id: str) -> Notification:
    return Notification(id=id, type="mention", post_id="p", from_=Author(id="u", name="alice", type="human"))


def run(state: SchedulerState, now: str, **steps: Any) -> Any:
    """One transaction: optional notifications, run ends, retry and exploration; returns the changes."""
    state.begin()
    for agent, notification in steps.get("notes", []):
        state.on_notification(agent, notification, Responds())
    for agent, activation in steps.get("ended", []):
        state.on_run_ended(agent, activation, failed=False, ended_at=now, outcome="posted")
    if steps.get("retry"):
        state.retry_blocked()
    explored = state.explore(now, steps.get("limit", 100))
    changes = state.prepare(now)
    state.commit()
    return explored, changes


def test_exploration_never_run_first_then_stalest_within_the_limit_and_gap() -> None:
    state = SchedulerState({
        "old": AgentState(agent="old", last_activated_at=at(0)),
        "recent": AgentState(agent="recent", last_activated_at=at(10)),
        "older": AgentState(agent="older", last_activated_at=at(-30)),
    })
    for agent in ("old", "recent", "older", "fresh"):
        state.configure(agent, rule())
    state.configure("no-discovery", None)

    explored, changes = run(state, at(20), limit=2)
    assert explored == 2 and [r.agent for r in changes.requests] == ["fresh", "older"]
    assert all(r.kind == "exploration" and r.priority == "low" and not r.notifications for r in changes.requests)
    # `old` is due (20 >= 0 + 15 min) but over the limit; `recent` is not due until minute 25.
    explored, changes = run(state, at(20))
    assert [r.agent for r in changes.requests] == ["old"]
    assert run(state, at(24))[1].requests == []
    assert [r.agent for r in run(state, at(25))[1].requests] == ["recent"]
    # Staleness advances: `fresh` ends its exploration at minute 30, so it is next due at 45.
    activation = state.get("fresh").in_flight.activation_id  # type: ignore[union-attr]
    run(state, at(30), ended=[("fresh", activation)])
    assert run(state, at(44))[1].requests == []
    again = run(state, at(45))[1].requests
    assert [r.agent for r in again] == ["fresh"] and again[0].activation_id != activation
    assert state.get("fresh").explorations_requested == 2  # type: ignore[union-attr]


def test_busy_or_removed_agents_are_not_explored_and_frequency_sets_the_gap() -> None:
    assert ExploreRule.of(config(discovery=Discovery(enabled=True, frequency="daily"))) == rule(24 * HOUR_S)
    assert ExploreRule.of(config(discovery=Discovery(enabled=True)), 60.0) == rule(60.0)
    assert ExploreRule.of(config()) is None
    state = SchedulerState()
    state.configure("busy", rule())
    state.configure("gone", rule())
    state.configure("gone", None)  # config removed: no more exploration
    _, changes = run(state, T0, notes=[("busy", note("n1"))])
    assert [(r.agent, r.kind) for r in changes.requests] == [("busy", "notification")]


def config(**behavior: Any) -> AgentConfig:
    return AgentConfig(name="a", type="native", brain=Brain(model="m"), capabilities=Capabilities(),
                       behavior=Behavior(**behavior))


def test_gate_refuses_with_one_event_per_reason_and_refused_work_starts_when_it_opens() -> None:
    refusals: dict[str, str] = {"ann": "budget_critical", "bob": "budget_throttle"}
    state = SchedulerState()
    state.gate = lambda agent, kind, critical: refusals.get(agent) if kind == "notification" or agent == "bob" \
        else None
    state.configure("bob", rule())
    _, changes = run(state, T0, notes=[("ann", note("n1"))])
    assert changes.requests == [] and {(r.agent, r.kind, r.reason) for r in changes.refusals} == {
        ("ann", "notification", "budget_critical"), ("bob", "exploration", "budget_throttle")}
    assert state.get("ann").pending and state.blocked_count == 1  # type: ignore[union-attr]
    # Still refused: no new event, the notification keeps waiting.
    _, changes = run(state, at(0.25), notes=[("ann", note("n2"))], retry=True)
    assert changes.requests == [] and changes.refusals == []
    refusals.clear()
    _, changes = run(state, at(0.5), retry=True)  # ann's retry; bob's recheck is due a minute after refusal
    [request] = changes.requests
    assert request.agent == "ann" and [n.id for n in request.notifications] == ["n1", "n2"]
    assert [r.agent for r in run(state, at(1))[1].requests] == ["bob"]


def test_an_old_in_flight_activation_without_lease_is_lost_and_the_agent_freed() -> None:
    state = SchedulerState(stuck_after_s=600)
    _, changes = run(state, T0, notes=[("ann", note("n1")), ("bob", note("b1"))])
    ann_act, bob_act = (r.activation_id for r in changes.requests)
    run(state, at(1), notes=[("ann", note("n2"))])
    state.begin()
    assert state.overdue(at(9)) == []
    overdue = state.overdue(at(10))
    assert sorted(overdue) == [("ann", ann_act), ("bob", bob_act)]
    state.still_running("bob", bob_act, at(10))  # bob's lease is held
    state.on_run_ended("ann", ann_act, failed=True, ended_at=at(10), outcome="lost")
    changes = state.prepare(at(10))
    state.commit()
    [request] = changes.requests
    assert request.agent == "ann" and [n.id for n in request.notifications] == ["n2"] and changes.lost == 1
    assert state.get("ann").activations_lost == 1 and state.get("ann").activations_failed == 0  # type: ignore[union-attr]
    state.begin()
    assert state.overdue(at(12)) == [] and state.overdue(at(12.5)) == [("bob", bob_act)]
    state.rollback()
    # A late `completed` of the lost activation changes nothing.
    _, changes = run(state, at(13), ended=[("ann", ann_act)])
    assert changes.requests == [] and state.get("ann").activations_completed == 0  # type: ignore[union-attr]


def test_a_rolled_back_tick_leaves_exploration_due() -> None:
    state = SchedulerState()
    state.configure("ann", rule())
    state.begin()
    assert state.explore(T0, 5) == 1
    state.rollback()
    assert [r.agent for r in run(state, T0)[1].requests] == ["ann"]


async def test_budget_gate_caches_holds_the_last_status_then_fails_safe() -> None:
    clock = [0.0]
    answers: list[BudgetHealth | Exception] = []

    class Source:
        async def budget_health(self) -> BudgetHealth:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    def health(**statuses: str) -> BudgetHealth:
        return BudgetHealth(tools={tool: ToolBudget(status=s, used_pct=95.0) for tool, s in statuses.items()})

    gate = BudgetGate(Source(), cache_s=60, stale_after_s=600, clock=lambda: clock[0])
    assert gate.refusal("native", "exploration", False) == "budget_unknown"  # never heard: fail safe
    answers.append(health(native="throttle", goose="critical"))
    await gate.refresh()
    assert gate.refusal("native", "exploration", False) == "budget_throttle"
    assert gate.refusal("native", "notification", False) is None
    assert gate.refusal("goose", "notification", False) == "budget_critical"
    assert gate.refusal("goose", "notification", True) is None
    assert gate.refusal("aider", "exploration", False) is None
    clock[0] = 30.0
    await gate.refresh()  # cached: no call (none queued, so a call would fail the test)
    answers.append(ConnectionError("hub down"))
    clock[0] = 61.0
    await gate.refresh()
    assert gate.refusal("goose", "notification", False) == "budget_critical"  # last known holds
    clock[0] = 700.0
    assert gate.refusal("aider", "exploration", False) == "budget_unknown"


def test_partition_helpers() -> None:
    assert partition_of("ann") == 8 and partition_of("bob") == 4  # as nats-server computes (see the stage test)
    assert partition_of("a.b") == partition_of("a_b")
    assert original_subject("agents.sched.part.8.ingest.notification.ann") == "agents.ingest.notification.ann"
    assert original_subject("agents.sched.part.3.run.x.act.completed") == "agents.run.x.act.completed"

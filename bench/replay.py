"""`botburrow show` and `botburrow replay --offline` on a 1,000-event activation (issue 8: under 1 s each).

A real nats-server; the activation is synthetic (published as a runner would: 40 model turns, ~24
tool calls each with a ~2 KiB result), the agent's definition is in the `configs` bucket. Measured end
to end through the CLI functions (output to a buffer), plus the parts: reading RUNS, rendering, and
the offline re-run itself. Median and max of several runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from botburrow.cli import ops, replay
from botburrow.cli.timeline import render
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
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
from schemas.hub import Author, Notification
from streams import subjects
from streams.apply import ensure

EVENTS = 1000
TURNS = 40
RUNS = 5
AGENT = "bench-replayer"
CONFIG = f"""\
version: "1.0.0"
name: {AGENT}
type: native
brain:
  model: claude-sonnet-4-20250514
capabilities:
  grants: [hub:read, hub:write]
behavior:
  max_iterations: 50
""".encode()


def synthetic(activation_id: str) -> list[tuple[str, Any]]:
    """(event name, payload) of one activation with exactly EVENTS events."""
    note = Notification(id="ntf-bench", type="mention", post_id="post-bench", comment_id="cmt-bench",
                        from_=Author(id="h", name="human", type="human"), content="a long job please")
    request = ActivationRequested(activation_id=activation_id, agent=AGENT, kind="notification", priority="high",
                                  notifications=[note])
    common: dict[str, Any] = {"activation_id": activation_id, "agent": AGENT, "at": "2026-01-01T00:00:00.000Z"}
    events: list[tuple[str, Any]] = [("started", RunStarted(**common, kind="notification", priority="high",
                                                            tool_type="native", model="claude-sonnet-4-20250514",
                                                            request=request))]
    tool_turns = TURNS - 1
    calls_total = EVENTS - 4 - tool_turns  # started, final llm, posted, completed
    result = '{"posts": [' + ", ".join(f'{{"id": "p{i}", "title": "{"x" * 60}"}}' for i in range(24)) + "]}"
    for turn in range(1, TURNS):
        count = calls_total // tool_turns + (1 if turn <= calls_total % tool_turns else 0)
        calls = [ToolCallRecord(id=f"c{turn}-{i}", name="hub__search", arguments={"query": f"q{turn}-{i}"})
                 for i in range(count)]
        events.append(("llm", LlmTurn(**common, turn=turn, model="claude-sonnet-4-20250514", text="",
                                      tool_calls=calls, input_tokens=1000, output_tokens=50, stop_reason="tool_use")))
        events += [("tool", ToolCalled(**common, turn=turn, call_id=c.id, name=c.name, server="hub",
                                       arguments=c.arguments, result=result)) for c in calls]
    events.append(("llm", LlmTurn(**common, turn=TURNS, model="claude-sonnet-4-20250514", text="Done.")))
    events.append(("posted", Posted(**common, notification_id="ntf-bench", post_id="post-bench",
                                    parent_id="cmt-bench", hub_id="cmt-x")))
    metrics = ActivationMetrics(activation_id=activation_id, agent_id=AGENT, tool_type="native",
                                model="claude-sonnet-4-20250514", task_type="notification", task_priority="high",
                                outcome="posted", started_at=common["at"], ended_at=common["at"], iterations=TURNS)
    events.append(("completed", RunCompleted(**common, metrics=metrics)))
    assert len(events) == EVENTS
    return events


async def _publish(bus: Bus, activation_id: str) -> float:
    started_s = time.perf_counter()
    for name, event in synthetic(activation_id):
        await bus.publish(subjects.run_event(AGENT, activation_id, name), event)
    return time.perf_counter() - started_s


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(samples), 4), "max_s": round(max(samples), 4)}


async def _timed(samples: dict[str, list[float]], key: str, coro: Any) -> Any:
    started_s = time.perf_counter()
    value = await coro
    samples.setdefault(key, []).append(time.perf_counter() - started_s)
    return value


async def main(results_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        server = await natsserver.start_async(Path(tmp))
        bus = await Bus.connect(server.url, name="bench-replay")
        try:
            await ensure(bus.js)
            kv = await bus.kv(bucket.BUCKET)
            await kv.put(bucket.key("agent", AGENT), bucket.encode(parse_agent(AGENT, CONFIG, b"You are {{name}}.")))
            activation_id = "act-bench-1000"
            publish_s = await _publish(bus, activation_id)
            samples: dict[str, list[float]] = {}
            followed = True
            for _ in range(RUNS):
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    await _timed(samples, "show_cli", ops.show(bus, argparse.Namespace(activation_id=activation_id,
                                                                                       json=False)))
                    code = await _timed(samples, "offline_cli", replay.run(bus, argparse.Namespace(
                        activation_id=activation_id, rerun=False, offline=True, with_definitions=None, json=False,
                        quiet=True)))
                followed = followed and code == 0
                events, _, _ = await _timed(samples, "read_runs", replay.read_events(bus, activation_id))
                started_s = time.perf_counter()
                render(events, whole=True)
                samples.setdefault("render_only", []).append(time.perf_counter() - started_s)
                await _timed(samples, "offline_rerun_only", _rerun_only(events))
        finally:
            await bus.close()
            server.stop()
    return {"events": EVENTS, "model_turns": TURNS, "runs": RUNS, "publish_1000_s": round(publish_s, 3),
            "offline_followed": followed, **{k: _stats(v) for k, v in samples.items()}}


async def _rerun_only(events: list[Any]) -> None:
    from services.runner.offline import rerun_offline
    from services.runner.recorded import recording_from

    await rerun_offline(recording_from(events), None, {})

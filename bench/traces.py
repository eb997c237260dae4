"""What exporting traces costs an activation (issue 21): the whole local stack, traces off beside traces on.

Each round starts the stack `botburrow dev` runs (every stage a process, the Hub emulator, the scripted
LLM answering at once) twice, in turn: the baseline without OTEL_EXPORTER_OTLP_ENDPOINT, then with it
naming a real receiver (Arize Phoenix from tools/phoenix: ingest and the scheduler send their spans, the
runner puts the context on its events and Hub calls, metrics exports every ended activation). In each,
ACTIVATIONS mentions are answered one after the other (each after the previous one ended, so nothing
queues). Per activation, the runner's own time: the `completed` event's duration (claim to end) minus its
model turns, the number the runner benchmark reports as its overhead; and mention -> `completed` as the
bench sees it (polling included, for scale). With traces on, every activation's trace must have reached
Phoenix, and how long that took after its `completed` is reported too. Rounds alternate so that the
shared machine's drift falls on both sides; the verdict compares the medians over all rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from botburrow.cli.ops import load_run
from botburrow.dev import _await_configs
from botburrow.dev.phoenix import Phoenix, installed
from botburrow.dev.stack import LocalStack
from schemas.events import LlmTurn, RunCompleted

ACTIVATIONS = 60
ROUNDS = 2
AGENT = "pirate-captain"
GOAL_PCT = 5.0


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 2), "mean": round(statistics.fmean(ordered), 2),
            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2), "n": len(ordered)}


async def _answered(stack: LocalStack, count: int) -> tuple[list[float], list[float], list[str]]:
    """`count` mentions one after the other: per activation the runner's own ms, mention -> completed ms."""
    assert stack.hub is not None and stack.llm is not None
    bus = await stack_bus(stack)
    try:
        await _await_configs(bus, [AGENT])
        stack.llm.set_script([{"text": "A quick answer.", "usage": {"input_tokens": 50, "output_tokens": 5}}] * count)
        ended: asyncio.Queue[str] = asyncio.Queue()

        async def on_end(msg: Any) -> None:
            await ended.put(msg.subject.split(".")[3])

        await bus.nc.subscribe(f"agents.run.{AGENT}.*.completed", cb=on_end)
        own_ms, end_to_end_ms, ids = [], [], []
        for n in range(count):
            sent = time.perf_counter()
            stack.hub.mention(AGENT, f"question {n}: how do I tie a bowline?")
            activation_id = await asyncio.wait_for(ended.get(), 60)
            end_to_end_ms.append((time.perf_counter() - sent) * 1000)
            events = await load_run(bus, activation_id)
            ending = next(e for e in events if isinstance(e, RunCompleted))
            model_ms = sum(e.duration_ms for e in events if isinstance(e, LlmTurn))
            own_ms.append(ending.metrics.duration_seconds * 1000 - model_ms)
            ids.append(activation_id)
        return own_ms, end_to_end_ms, ids
    finally:
        await bus.close()


async def stack_bus(stack: LocalStack) -> Any:
    from botburrow.runtime.bus import Bus

    return await Bus.connect(stack.nats_url, name="bench-traces")


async def _exported_after_s(phoenix: Phoenix, ids: list[str], since: float) -> float:
    """Seconds from `since` until every activation of `ids` is a trace in Phoenix (at most 60)."""
    wanted, seen = set(ids), set()
    while time.monotonic() - since < 60:
        seen = await _roots(phoenix)
        if wanted <= seen:
            return round(time.monotonic() - since, 2)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{len(wanted - seen)} of {len(wanted)} traces never reached Phoenix")


async def _roots(phoenix: Phoenix) -> set[str]:
    """The activation ids of every `invoke_agent` span Phoenix holds (its REST API, page by page)."""
    found: set[str] = set()
    params: dict[str, Any] = {"limit": 1000}
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            page = (await client.get(f"{phoenix.url}/v1/projects/default/spans", params=params)).json()
            found |= {s["attributes"].get("botburrow.activation.id") for s in page["data"]
                      if s["name"].startswith("invoke_agent ")}
            if not page.get("next_cursor"):
                return found
            params["cursor"] = page["next_cursor"]


async def one_side(work_dir: Path, count: int, phoenix: Phoenix | None) -> dict[str, Any]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url} if phoenix else {}
    stack = LocalStack(work_dir=work_dir, poll_interval_s=0.2, extra_env=env)
    try:
        await stack.start()
        own_ms, end_to_end_ms, ids = await _answered(stack, count)
        side: dict[str, Any] = {"own_ms": own_ms, "end_to_end_ms": end_to_end_ms}
        if phoenix:
            side["all_exported_after_last_s"] = await _exported_after_s(phoenix, ids, time.monotonic())
        return side
    finally:
        await stack.stop()


async def main(results_dir: Path) -> dict[str, Any]:
    if not installed():
        return {"skipped": "Phoenix not installed (./setup.sh without --minimal)"}
    count = int(os.environ.get("BENCH_TRACES_ACTIVATIONS", ACTIVATIONS))
    rounds = int(os.environ.get("BENCH_TRACES_ROUNDS", ROUNDS))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-traces-") as tmp:
        phoenix = Phoenix(Path(tmp) / "phoenix")
        await phoenix.start()
        try:
            sides: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for n in range(rounds):
                sides["off"].append(await one_side(Path(tmp) / f"off-{n}", count, None))
                sides["on"].append(await one_side(Path(tmp) / f"on-{n}", count, phoenix))
        finally:
            await phoenix.stop()
    own = {k: [v for side in s for v in side["own_ms"]] for k, s in sides.items()}
    e2e = {k: [v for side in s for v in side["end_to_end_ms"]] for k, s in sides.items()}
    added_pct = (statistics.median(own["on"]) / statistics.median(own["off"]) - 1) * 100
    return {
        "activations_per_side": count * rounds, "rounds": rounds,
        "runner_own_ms": {"baseline_traces_off": spread(own["off"]), "traces_on": spread(own["on"])},
        "mention_to_completed_ms": {"baseline_traces_off": spread(e2e["off"]), "traces_on": spread(e2e["on"])},
        "traces_reached_phoenix_after_last_completed_s": [s["all_exported_after_last_s"] for s in sides["on"]],
        "runner_own_added_pct": round(added_pct, 2), "goal_pct": GOAL_PCT, "within_goal": added_pct < GOAL_PCT,
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }

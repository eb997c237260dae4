"""The cost of replication, R1 against R3 in the same run (issue 20): `python -m bench cluster`.

1. Scheduler throughput and latency (bench/scheduler.py's measurement, one scheduler process): once on
   one nats-server with the topology at R1, once on three clustered servers on loopback with it at R3.
2. Mention -> reply on the Hub, every stage a process (`LocalStack`, the scripted LLM answering at once):
   paced mentions, timed from the mention until the agent's comment is on the Hub; R1, then R3.
3. On the R3 stack: SIGKILL of the node leading ACTIVATIONS; seconds until a new leader, until the stream
   accepts a write, until every stage is ready, until all replicas are current again.

All servers, stages and this driver share the machine's cores, so the ratios matter more than the rates.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import scheduler as scheduler_bench
from bench.soak.cluster import ClusterFaults, until_true, whole
from bench.soak.faults import FaultLog
from botburrow.dev import _await_configs
from botburrow.dev.stack import LocalStack
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from streams.apply import ensure

MENTIONS = 80
MENTION_EVERY_S = 0.25
AGENTS = ("pirate-captain", "sprint-helper")
POLL_S = 0.01
# One scheduler process each time: with two, bench/scheduler.py also measures a raw nats-py baseline,
# whose client takes one server URL, not a cluster's list.
SCHEDULERS = 1


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def scheduler_on(cluster: bool, tmp: Path) -> dict[str, Any]:
    if not cluster:
        server = natsserver.start(tmp / "r1")
        try:
            return await scheduler_bench._run(server.url, tmp, replicas=SCHEDULERS)
        finally:
            server.stop()
    nodes = natsserver.start_cluster(tmp / "r3", 3)
    try:
        bus = await Bus.connect(nodes.url, name="bench-r3")
        try:
            await natsserver.jetstream_ready(bus.js)
            await ensure(bus.js, replicas=3)  # made at R3 first: the benchmark's own ensure finds it there
            await until_true(lambda: whole(bus), 60)
        finally:
            await bus.close()
        return await scheduler_bench._run(nodes.url, tmp, replicas=SCHEDULERS)
    finally:
        nodes.stop()


async def mention_to_reply(stack: LocalStack, bus: Bus) -> dict[str, Any]:
    """Paced mentions, alternating agents; each timed until its agent's comment is on the post."""
    assert stack.hub is not None
    hub = stack.hub
    await _await_configs(bus, list(AGENTS))
    pending: dict[str, tuple[str, float]] = {}
    latencies_ms: list[float] = []
    started = time.monotonic()
    for i in range(MENTIONS):
        agent = AGENTS[i % len(AGENTS)]
        note = hub.mention(agent, f"latency question {i}")
        assert note.post_id is not None
        pending[note.post_id] = (agent, time.monotonic())
        while time.monotonic() < started + (i + 1) * MENTION_EVERY_S:
            _collect(hub, pending, latencies_ms)
            await asyncio.sleep(POLL_S)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        _collect(hub, pending, latencies_ms)
        await asyncio.sleep(POLL_S)
    return {"mentions": MENTIONS, "answered": len(latencies_ms), "p50_ms": _pct(latencies_ms, 0.5),
            "p99_ms": _pct(latencies_ms, 0.99), "mean_ms": round(statistics.fmean(latencies_ms), 1)}


def _collect(hub: Any, pending: dict[str, tuple[str, float]], latencies_ms: list[float]) -> None:
    now = time.monotonic()
    for post_id, (agent, sent) in list(pending.items()):
        if any(c.author_name == agent for c in hub.comments_on(post_id)):
            latencies_ms.append((now - sent) * 1000)
            del pending[post_id]


async def stack_on(cluster: bool, tmp: Path) -> dict[str, Any]:
    stack = LocalStack(work_dir=tmp / ("stack-r3" if cluster else "stack-r1"), cluster=3 if cluster else 0,
                       poll_interval_s=0.2)
    os.environ.pop("NATS_URL", None)  # the stack's own servers
    try:
        await stack.start()
        bus = await Bus.connect(stack.nats_url, name="bench-cluster")
        try:
            result: dict[str, Any] = {"mention_to_reply": await mention_to_reply(stack, bus)}
            if cluster:
                faults = ClusterFaults(stack, bus, FaultLog(), asyncio.Lock(), stage_timeout_s=120.0)
                await faults.kill_stream_leader()
                result["stream_leader_kill"] = faults.timings[0]
            return result
        finally:
            await bus.close()
    finally:
        await stack.stop()


async def main(results_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        for cluster in (False, True):
            key = "r3" if cluster else "r1"
            measured = await scheduler_on(cluster, Path(tmp) / f"sched-{key}")
            result[f"{key}_scheduler"] = {k: measured[k] for k in (
                "through_scheduler_per_s", "scheduler_cpu_ms_per_notification", "latency_at_100_per_s_p50_ms",
                "latency_at_100_per_s_p99_ms", "latency_at_1000_per_s_p50_ms", "latency_at_1000_per_s_p99_ms")
                if k in measured}
            result[key] = await stack_on(cluster, Path(tmp))
    r1, r3 = result["r1_scheduler"], result["r3_scheduler"]
    result["r3_over_r1"] = {
        "scheduler_throughput": round(r3["through_scheduler_per_s"] / r1["through_scheduler_per_s"], 2),
        "mention_to_reply_p50": round(result["r3"]["mention_to_reply"]["p50_ms"]
                                      / result["r1"]["mention_to_reply"]["p50_ms"], 2),
        "mention_to_reply_p99": round(result["r3"]["mention_to_reply"]["p99_ms"]
                                      / result["r1"]["mention_to_reply"]["p99_ms"], 2)}
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result

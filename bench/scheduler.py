"""Scheduler throughput, latency, tick cost and memory (issue 3).

1. Raw nats-py: publish 20,000 notification payloads to a scratch stream and fetch+ack them.
2. Through the scheduler: 20,000 notifications for 2,000 agents (10 each) published straight onto
   `agents.ingest.notification.<agent>`, no runner: timed from the first publish until every partition
   consumer holds nothing pending. Twice, each on a fresh nats-server: with two `python -m botburrow
   scheduler` processes sharing the 16 partitions (as deployed, deploy/k8s/base/scheduler.yaml) and
   with one holding them all.
3. Latency notification published -> activation request published, at 100/s and 1,000 notifications/s
   (fresh agents, one notification each, so each makes one request), in both runs of 2.
4. In-process: `SchedulerState` with 100,000 agents (all exploring): tick cost and resident memory.

1. to 3. inject with core NATS publishes (as `nats pub` does) with their `Nats-Msg-Id`; 1. and 2. then
flush and count until the stream holds them all. Awaiting a JetStream ack per message made the Python
publisher, which shares the two cores, cost as much CPU as the scheduler itself.

Beside the rates, the scheduler processes' CPU time per notification (2.) and per request (3.): rates
and latencies move with whatever else runs on the machine, CPU time much less.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import StreamConfig

from botburrow.definitions import bucket
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from schemas.agent import AgentConfig, AgentDefinition, Behavior, Brain, Capabilities
from schemas.codec import encode
from schemas.events import NotificationReceived
from schemas.hub import Author, Notification
from services.scheduler.due import ExploreRule
from services.scheduler.state import AgentState, SchedulerState
from streams import subjects
from streams.apply import ensure
from streams.topology import (
    ACTIVATION,
    ACTIVATIONS,
    DLQ,
    NOTIFICATION,
    NOTIFICATIONS,
    SCHEDULER,
    SCHEDULER_OWNERS,
    SCHEDULER_PARTITIONS,
    scheduler_durable,
)

AGENTS = 2_000
PER_AGENT = 10
LATENCY_AGENTS = 3_000
LATENCY_RATE = 1_000
# The same at a tenth of the rate: the floor, when the process is not saturated.
FLOOR_AGENTS, FLOOR_RATE = 500, 100
SCALE_AGENTS = 100_000


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process: steadier than rates when other work shares the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def payload(agent: str, i: int) -> bytes:
    n = Notification(id=f"{agent}-{i}", type="mention" if i % 3 == 0 else "reply", post_id="p1",
                     from_=Author(id="u1", name="alice", type="human"), content=f"hello {i} from the bench")
    return encode(NotificationReceived(agent=agent, notification=n, received_at="2025-01-01T00:00:00Z"))


def definition(name: str) -> AgentDefinition:
    config = AgentConfig(name=name, type="native", brain=Brain(model="m"), capabilities=Capabilities(),
                         behavior=Behavior())
    return AgentDefinition(name=name, hash=f"h-{name}", config=config, system_prompt="x")


async def inject(nc: Any, js: Any, stream: str, items: list[tuple[str, bytes, str]]) -> None:
    """Publish every item (core NATS), then wait until `stream` has stored them all."""
    for subject, data, msg_id in items:
        await nc.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
    await nc.flush()
    while True:  # the server stores them in its own time; no event says when it is done
        if (await js.stream_info(stream)).state.messages >= len(items):
            return
        await asyncio.sleep(0.005)


async def raw_rate(url: str, items: list[tuple[str, bytes, str]]) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.*"]))
    started = time.perf_counter()
    await inject(nc, js, "BENCH_RAW", [(s.replace(NOTIFICATION.pattern[:-2], "bench.raw"), d, m)
                                       for s, d, m in items])
    published = time.perf_counter()
    sub = await js.pull_subscribe("bench.raw.*", durable="raw", stream="BENCH_RAW")
    got = 0
    while got < len(items):
        msgs = await sub.fetch(1000, timeout=5)
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    await nc.flush()
    done = time.perf_counter()
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return {"raw_publish_per_s": round(len(items) / (published - started)),
            "raw_fetch_ack_per_s": round(len(items) / (done - published)),
            "raw_publish_and_fetch_per_s": round(len(items) / (done - started))}


async def scheduler_drained(bus: Bus, expected: int) -> None:
    durables = {scheduler_durable(p) for p in range(SCHEDULER_PARTITIONS)}
    while True:
        if (await bus.js.stream_info(SCHEDULER.name)).state.messages >= expected:
            infos = [i for i in await bus.js.consumers_info(SCHEDULER.name) if i.name in durables]  # one request
            if len(infos) == len(durables) and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
        await asyncio.sleep(0.01)


async def partitions_shared(bus: Bus, replicas: int) -> None:
    """Every partition held, each replica holding its fair share (the second one starts later)."""
    kv = await bus.kv(SCHEDULER_OWNERS.name)
    share = -(-SCHEDULER_PARTITIONS // replicas)
    while True:
        with contextlib.suppress(Exception):
            owners = [(await kv.get(key)).value for key in await kv.keys() if key.startswith("part.")]
            counts = [owners.count(owner) for owner in set(owners)]
            if len(owners) == SCHEDULER_PARTITIONS and len(counts) == replicas and max(counts) <= share:
                return
        await asyncio.sleep(0.1)


async def latency(bus: Bus, agents: list[str], rate: int) -> dict[str, float]:
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()

    async def on_request(msg: Any) -> None:
        agent = msg.subject.rsplit(".", 1)[1]
        seen.setdefault(agent, time.perf_counter())
        if len(seen) == len(agents):
            done.set()

    sub = await bus.nc.subscribe(ACTIVATION.pattern, cb=on_request)
    start = time.perf_counter()
    for index, agent in enumerate(agents):  # paced: notification i leaves at start + i / rate
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[agent] = time.perf_counter()
        await bus.nc.publish(subjects.notification(agent), payload(agent, 0), headers={"Nats-Msg-Id": f"lat:{agent}"})
    await asyncio.wait_for(done.wait(), 60)
    await sub.unsubscribe()
    lat_ms = sorted((seen[a] - sent[a]) * 1000 for a in agents)
    key = f"latency_at_{rate}_per_s"
    return {f"{key}_samples": len(lat_ms), f"{key}_p50_ms": round(statistics.median(lat_ms), 2),
            f"{key}_p99_ms": round(lat_ms[int(len(lat_ms) * 0.99) - 1], 2), f"{key}_max_ms": round(lat_ms[-1], 2)}


def scale() -> dict[str, float]:
    """100k agents in one state (the worst case: one replica holding every partition)."""
    gc.collect()
    before = rss_mib()
    now = datetime(2025, 1, 2, tzinfo=UTC)
    stamp = lambda dt: dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    states = [AgentState(agent=f"agent-{i:06d}", last_activated_at=stamp(now - timedelta(seconds=i % 3600)),
                         recent_ids=tuple(f"n-{i}-{k}" for k in range(5)), activations_requested=3,
                         activations_completed=3, notifications_received=12)
              for i in range(SCALE_AGENTS)]
    state = SchedulerState({s.agent: s for s in states})
    del states
    for i in range(SCALE_AGENTS):
        state.configure(f"agent-{i:06d}", ExploreRule(gap_s=3600.0, tool_type="native"))
    gc.collect()
    after = rss_mib()

    def tick(at: datetime, limit: int) -> tuple[float, int]:
        started = time.perf_counter()
        state.begin()
        state.overdue(stamp(at))
        explored = state.explore(stamp(at), limit)
        state.prepare(stamp(at))
        state.commit()
        return (time.perf_counter() - started) * 1000, explored

    idle_ms, idle_n = tick(now, 50)  # nothing due: every agent ran within the hour
    due_ms, due_n = tick(now + timedelta(seconds=60), 50)  # ~1,600 due, the low-backlog bound allows 50
    many_ms, many_n = tick(now + timedelta(seconds=600), 5_000)
    return {"scale_agents": SCALE_AGENTS, "scale_rss_mib": round(after - before, 1),
            "scale_rss_kib_per_agent": round((after - before) * 1024 / SCALE_AGENTS, 2),
            "tick_idle_ms": round(idle_ms, 3), "tick_idle_explored": idle_n,
            "tick_50_due_ms": round(due_ms, 3), "tick_50_due_explored": due_n,
            "tick_5000_due_ms": round(many_ms, 3), "tick_5000_due_explored": many_n}


def _error_kind(line: str) -> str:
    """The event and the exception's last line of a JSON log line (retried batches under load)."""
    event = msgspec.json.decode(line)
    return f"{event.get('event')}: {str(event.get('exception', '')).strip().splitlines()[-1:]}"


async def main(results_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    for replicas in (2, 1):  # each on a fresh server: the second run must not find the first's state
        with tempfile.TemporaryDirectory() as tmp:
            server = natsserver.start(Path(tmp))
            try:
                measured = await _run(server.url, Path(tmp), replicas=replicas)
            finally:
                server.stop()
        result |= measured if replicas == 2 else {f"one_replica_{key}": value for key, value in measured.items()}
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result | scale()


async def _run(url: str, tmp: Path, *, replicas: int) -> dict[str, Any]:
    """Throughput and latency with `replicas` scheduler processes; with two (as deployed), the raw rate too."""
    deployed = replicas == 2
    names = [f"a{i:05d}" for i in range(AGENTS)]
    items = [(subjects.notification(a), payload(a, i), f"ntf:{a}-{i}") for i in range(PER_AGENT) for a in names]
    result: dict[str, Any] = await raw_rate(url, items) if deployed else {}
    bus = await Bus.connect(url, name="bench")
    await ensure(bus.js)
    configs = await bus.kv(bucket.BUCKET)
    latency_names = [f"l{i:05d}" for i in range(LATENCY_AGENTS)]
    floor_names = [f"f{i:05d}" for i in range(FLOOR_AGENTS)]
    all_names = names + latency_names + floor_names
    for chunk in range(0, len(all_names), 500):
        await asyncio.gather(*(configs.put(bucket.key("agent", n), bucket.encode(definition(n)))
                               for n in all_names[chunk:chunk + 500]))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "NATS_URL": url, "HUB_URL": "http://127.0.0.1:9",
           "METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
    processes = []
    with open(tmp / "scheduler.log", "wb") as log_file:  # noqa: ASYNC230 - handed to the children
        for _ in range(replicas):
            processes.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "botburrow", "scheduler", env=env, stdout=log_file, stderr=log_file))
    pids = [process.pid for process in processes]
    try:
        await asyncio.wait_for(partitions_shared(bus, replicas), 60)
        cpu_before = sum(map(cpu_s, pids))
        started = time.perf_counter()
        await inject(bus.nc, bus.js, NOTIFICATIONS.name, items)
        published = time.perf_counter()
        await asyncio.wait_for(scheduler_drained(bus, len(items)), 120)
        elapsed = time.perf_counter() - started
        result["scheduler_cpu_ms_per_notification"] = round(
            (sum(map(cpu_s, pids)) - cpu_before) * 1000 / len(items), 3)
        result |= {"notifications": len(items), "agents": AGENTS,
                   "activation_requests": (await bus.js.stream_info(ACTIVATIONS.name)).state.messages,
                   "agent_state_writes": (await bus.js.stream_info("KV_agent-state")).state.last_seq,
                   "dead_lettered": (await bus.js.stream_info(DLQ.name)).state.messages,
                   "publish_s": round(published - started, 3), "through_scheduler_s": round(elapsed, 3),
                   "through_scheduler_per_s": round(len(items) / elapsed)}
        if deployed:
            result["ratio_to_raw"] = round(result["through_scheduler_per_s"] / result["raw_publish_and_fetch_per_s"], 2)
        for names_at_rate, rate in ((floor_names, FLOOR_RATE), (latency_names, LATENCY_RATE)):
            cpu_before = sum(map(cpu_s, pids))
            result |= await latency(bus, names_at_rate, rate)
            # Each of these notifications makes one request (and one state write): the cost of that path.
            result[f"latency_at_{rate}_per_s_scheduler_cpu_ms_per_request"] = round(
                (sum(map(cpu_s, pids)) - cpu_before) * 1000 / len(names_at_rate), 3)
        result["scheduler_process_rss_mib"] = max(rss_mib(pid) for pid in pids)
        result["scheduler_process_agents"] = len(all_names)
        errors = [line for line in (tmp / "scheduler.log").read_text().splitlines() if '"level": "error"' in line]
        result["scheduler_errors_logged"] = len(errors)
        result["scheduler_error_kinds"] = sorted({_error_kind(line) for line in errors})
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await process.wait()
        await bus.close()
    return result

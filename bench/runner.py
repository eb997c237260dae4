"""Runner overhead and concurrency (issue 4), one `python -m botburrow runner` process.

1. Overhead: the scripted LLM answers at once; activations are published one at a time (each after the
   previous one ended), so nothing queues. Per activation: `started` -> `posted` from the run events,
   minus the model turns' own duration (the runner's own work: lease, Hub reads, context, posting,
   events), and publish -> `completed` as the bench sees it.
2. Concurrency: the scripted LLM takes 2 s per turn; 150 activations of 150 agents are published at
   once to a runner with RUNNER_CONCURRENCY=150. Reports the peak number of activations in flight at
   once (started, not yet ended), the batch's wall time, and the runner's resident memory (VmRSS).
3. For reading 1: what one `anthropic.AsyncAnthropic(...)` construction costs here (the native thinker
   builds one per activation, on the event loop), and the machine's load average around the run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from botburrow.cli.ops import load_run
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.dev.stack import LocalStack, StageProcess
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from schemas.events import ActivationRequested, LlmTurn, Posted, RunStarted
from streams import subjects
from streams.apply import ensure
from streams.topology import RUN_EVENT

SEQUENTIAL = 200
CONCURRENT = 150
MODEL_DELAY_S = 2.0
RSS_SAMPLE_S = 0.1


def agent_yaml(name: str) -> bytes:
    return f"""\
version: "1.0.0"
name: {name}
type: native
brain:
  provider: anthropic
  model: claude-sonnet-4-20250514
capabilities:
  grants: [hub:read, hub:write]
behavior:
  limits:
    max_daily_comments: 100000
    min_interval_seconds: 0
""".encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def at_s(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Track:
    """Start and end events of every activation, as they arrive on core NATS."""

    def __init__(self) -> None:
        self.in_flight, self.peak = 0, 0
        self.ended: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def subscribe(self, bus: Bus) -> None:
        async def on_msg(msg: Any) -> None:
            event = msg.subject.rsplit(".", 1)[-1]
            if event == "started":
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            elif event in ("completed", "failed"):
                self.in_flight -= 1
                self.ended[msg.subject.split(".")[3]] = time.perf_counter()
                self.changed.set()

        await bus.nc.subscribe(RUN_EVENT.pattern, cb=on_msg)

    async def wait(self, activation_ids: list[str], timeout_s: float = 120.0) -> None:
        wanted = {subjects.token(a) for a in activation_ids}
        async with asyncio.timeout(timeout_s):
            while not wanted <= self.ended.keys():
                self.changed.clear()
                await self.changed.wait()


async def publish(bus: Bus, hub: HubEmulator, agent: str, n: int) -> str:
    note = hub.mention(agent, f"bench question {n}")
    activation_id = f"bench-{agent}-{n}"
    request = ActivationRequested(activation_id=activation_id, agent=agent, kind="notification",
                                  priority="high", notifications=[note])
    await bus.publish(subjects.activation("high", agent), request, msg_id=f"act:{activation_id}")
    return activation_id


async def overhead(bus: Bus, hub: HubEmulator, llm: ScriptedLLM, track: Track) -> dict[str, Any]:
    llm.set_script([{"text": "A quick answer."}] * SEQUENTIAL)
    own_ms, end_to_end_ms = [], []
    for n in range(SEQUENTIAL):
        started = time.perf_counter()
        activation_id = await publish(bus, hub, "agent-0", n)
        await track.wait([activation_id])
        end_to_end_ms.append((track.ended[subjects.token(activation_id)] - started) * 1000)
        events = await load_run(bus, activation_id)
        start = next(e for e in events if isinstance(e, RunStarted))
        posted = next(e for e in events if isinstance(e, Posted))
        model_ms = sum(e.duration_ms for e in events if isinstance(e, LlmTurn))
        own_ms.append((at_s(posted.at) - at_s(start.at)) * 1000 - model_ms)
    return {"activations": SEQUENTIAL,
            "started_to_posted_minus_model_ms": {"p50": pct(own_ms, 0.5), "p99": pct(own_ms, 0.99),
                                                 "mean": round(statistics.fmean(own_ms), 2)},
            "publish_to_completed_ms": {"p50": pct(end_to_end_ms, 0.5), "p99": pct(end_to_end_ms, 0.99)}}


async def concurrency(bus: Bus, hub: HubEmulator, llm: ScriptedLLM, track: Track, runner: StageProcess) -> dict:
    llm.set_script([{"text": "A slow answer.", "delay_s": MODEL_DELAY_S}] * CONCURRENT)
    idle_rss = rss_mib(runner.process.pid)
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(rss_mib(runner.process.pid))
            await asyncio.sleep(RSS_SAMPLE_S)

    sampler = asyncio.create_task(sample())
    track.peak = 0
    started = time.perf_counter()
    ids = [await publish(bus, hub, f"agent-{i}", 10_000 + i) for i in range(CONCURRENT)]
    await track.wait(ids)
    wall_s = time.perf_counter() - started
    sampler.cancel()
    outcomes = [(await load_run(bus, a))[-1].metrics.outcome for a in ids]
    return {"activations": CONCURRENT, "runner_concurrency": CONCURRENT, "model_delay_s": MODEL_DELAY_S,
            "peak_in_flight": track.peak, "wall_s": round(wall_s, 2),
            "posted": outcomes.count("posted"), "rss_idle_mib": idle_rss, "rss_peak_mib": max(samples),
            "rss_per_activation_kib": round((max(samples) - idle_rss) * 1024 / CONCURRENT, 1)}


def client_construction_ms(samples: int = 10) -> float:
    import anthropic  # only for this measurement

    times = []
    for _ in range(samples):
        started = time.perf_counter()
        anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="x", max_retries=0, timeout=120)
        times.append((time.perf_counter() - started) * 1000)
    return pct(times, 0.5)


async def main(results_dir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    work_dir = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    server = await natsserver.start_async(work_dir / "nats")
    hub, llm = HubEmulator(system_key="bench-system-key"), ScriptedLLM(strict=False)
    await hub.start()
    await llm.start()
    bus = await Bus.connect(server.url, name="bench-runner")
    stack = LocalStack(work_dir=work_dir, nats_url=server.url, hub=hub, llm=llm)
    try:
        await ensure(bus.js)
        configs = await bus.kv(bucket.BUCKET)
        for i in range(CONCURRENT):
            name = f"agent-{i}"
            stack.agent_keys[name] = hub.add_agent(name)
            await configs.put(bucket.key("agent", name), bucket.encode(parse_agent(name, agent_yaml(name), b"Hi.")))
        stack.extra_env = {"HUB_API_KEY": hub.system_key, "RUNNER_CONCURRENCY": str(CONCURRENT),
                           "LOG_LEVEL": "WARNING"}
        runner = await stack.start_stage("runner")
        await stack.wait_ready(runner)
        track = Track()
        await track.subscribe(bus)
        return {"overhead": await overhead(bus, hub, llm, track),
                "concurrency": await concurrency(bus, hub, llm, track, runner),
                "anthropic_client_construction_ms_p50": await asyncio.to_thread(client_construction_ms),
                "cpus": len(os.sched_getaffinity(0)),
                "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}
    finally:
        await asyncio.gather(*(stack.stop_stage(s) for s in stack.stages))
        await bus.close()
        await llm.stop()
        await hub.stop()
        await asyncio.to_thread(server.stop)

"""Runner overhead and concurrency (issues 4 and 18), one runner process, beside its baseline in the same run.

Two trees are measured one after the other, each from `git archive` (no worktree is registered), each
with its own nats-server, against the same Hub emulator and scripted LLM (in a process of their own, see
`Doubles`) and the same load: the baseline (BASELINE_COMMIT, the last commit before issue 18's runner
work; BENCH_RUNNER_BASELINE names another, "none" skips it) and HEAD as committed. The runner runs under
`_runner_probe.py`, which times each activation's phases and watches the event loop inside the runner.

1. Overhead: the scripted LLM answers at once; SEQUENTIAL activations are published one at a time (each
   after the previous one ended), so nothing queues. Per activation: the runner's own time (the probe's
   `Runner.handle` wall time minus the model's) with its phases (lease, run-log read, Hub reads, context,
   toolset, model client, posting, events; a phase counts while any call of it is in flight, so concurrent
   calls of one phase count once); the older `started` -> `posted` minus model from the run events;
   publish -> `completed` as the bench sees it.
2. Concurrency: the scripted LLM takes MODEL_DELAY_S per turn; CONCURRENT activations (a DM each) of as
   many agents are published at once (pipelined) to a runner with RUNNER_CONCURRENCY=CONCURRENT. The wall time from
   the first publish to the last end (goal: 3x the model time), the peak in flight, the runner's RSS
   (VmRSS, sampled every 0.1 s) per activation, the phases, and the event loop's stalls in that window
   (how late a 5 ms timer woke: the longest, and how many past 10 and 50 ms).
The machine's load average (1, 5, 15 min, before and after) and CPU count are written beside them: this
machine is shared, so every number is read against its baseline of the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from botburrow.cli.ops import load_run
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.dev.processes import die_with_parent
from botburrow.dev.stack import LocalStack, StageProcess, free_port
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from schemas.events import ActivationRequested, LlmTurn, Posted, RunStarted
from streams import subjects
from streams.apply import ensure
from streams.topology import RUN_EVENT

SEQUENTIAL = 200
CONCURRENT = 1000
MODEL_DELAY_S = 2.0
CONCURRENT_WAIT_S = 180.0
RSS_SAMPLE_S = 0.1
REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "_runner_probe.py"
# The last commit before issue 18's runner work (pipelined events, shared model clients, concurrent reads).
BASELINE_COMMIT = "bd919e9"
TREE_DIRS = ("botburrow", "services", "schemas", "streams")
SYSTEM_KEY = "bench-system-key"


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
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99),
            "mean": round(statistics.fmean(values), 2) if values else 0.0}


def at_s(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Track:
    """Start and end events of every activation, as they arrive on core NATS."""

    def __init__(self) -> None:
        self.in_flight, self.peak = 0, 0
        self.ended: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}  # by activation token, from the end event (no read back per run)
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
                self.outcomes[msg.subject.split(".")[3]] = json.loads(msg.data)["metrics"]["outcome"]
                self.changed.set()

        await bus.nc.subscribe(RUN_EVENT.pattern, cb=on_msg)

    async def wait(self, activation_ids: list[str], timeout_s: float = 300.0) -> None:
        wanted = {subjects.token(a) for a in activation_ids}
        async with asyncio.timeout(timeout_s):
            while not wanted <= self.ended.keys():
                self.changed.clear()
                await self.changed.wait()


def _serve_doubles(conn: Connection, agents: int) -> None:
    """The child process: the Hub emulator and the scripted LLM, driven by commands on `conn`."""
    async def serve() -> None:
        hub, llm = HubEmulator(system_key=SYSTEM_KEY), ScriptedLLM(strict=False)
        await hub.start()
        await llm.start()
        keys = {f"agent-{i}": hub.add_agent(f"agent-{i}") for i in range(agents)}
        conn.send((hub.url, llm.url, keys))
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            if command == "mentions":
                conn.send([hub.mention(agent, text) for agent, text in args])
            elif command == "dms":
                conn.send([hub.dm(agent, text) for agent, text in args])
            elif command == "script":
                llm.set_script(args)
                conn.send(None)
        await llm.stop()
        await hub.stop()
        conn.send(None)

    asyncio.run(serve())


class Doubles:
    """The Hub emulator and the scripted LLM in a process of their own: on 2 cores, in the bench's process
    they were the bottleneck at 1,000 activations (the runner's Hub client timed out and opened its breaker)."""

    def __init__(self, agents: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_doubles, args=(child, agents), daemon=True)
        self.process.start()
        self.hub_url, self.llm_url, self.keys = self.conn.recv()
        self._lock = threading.Lock()

    def call(self, command: str, args: Any = None) -> Any:
        with self._lock:
            self.conn.send((command, args))
            return self.conn.recv()

    def requests(self, agents_and_ns: list[tuple[str, int]], kind: str = "mentions") -> list[ActivationRequested]:
        notes = self.call(kind, [(agent, f"bench question {n}") for agent, n in agents_and_ns])
        return [ActivationRequested(activation_id=f"bench-{agent}-{n}", agent=agent, kind="notification",
                                    priority="high", notifications=[note])
                for (agent, n), note in zip(agents_and_ns, notes, strict=True)]

    def stop(self) -> None:
        self.call("stop")
        self.process.join(10)


async def publish(bus: Bus, request: ActivationRequested) -> str:
    await bus.publish(subjects.activation("high", request.agent), request, msg_id=f"act:{request.activation_id}")
    return request.activation_id


def probe_records(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"activations": [], "stalls": [], "patched": []}


def own_ms(record: dict[str, Any]) -> float:
    return record["total_ms"] - record["phases_ms"].get("model", 0.0)


async def overhead(bus: Bus, doubles: Doubles, track: Track) -> tuple[dict[str, Any], list[str]]:
    count = int(os.environ.get("BENCH_RUNNER_SEQUENTIAL", SEQUENTIAL))
    doubles.call("script", [{"text": "A quick answer."}] * count)
    requests = doubles.requests([("agent-0", n) for n in range(count)])
    started_to_posted, end_to_end_ms, ids = [], [], []
    for request in requests:
        started = time.perf_counter()
        activation_id = await publish(bus, request)
        ids.append(activation_id)
        await track.wait([activation_id])
        end_to_end_ms.append((track.ended[subjects.token(activation_id)] - started) * 1000)
        events = await load_run(bus, activation_id)
        start = next(e for e in events if isinstance(e, RunStarted))
        posted = next(e for e in events if isinstance(e, Posted))
        model_ms = sum(e.duration_ms for e in events if isinstance(e, LlmTurn))
        started_to_posted.append((at_s(posted.at) - at_s(start.at)) * 1000 - model_ms)
    return {"activations": count, "started_to_posted_minus_model_ms": spread(started_to_posted),
            "publish_to_completed_ms": spread(end_to_end_ms)}, ids


async def concurrency(bus: Bus, doubles: Doubles, track: Track, runner: StageProcess, agents: int) -> dict[str, Any]:
    doubles.call("script", [{"text": "A slow answer.", "delay_s": MODEL_DELAY_S}] * agents)
    # DMs: one Hub read (the agent's name, once per agent) and one write each. A mention costs four Hub
    # calls, and at 1,000 at once the Hub double (one Python process) was the limit, not the runner.
    requests = doubles.requests([(f"agent-{i}", 10_000 + i) for i in range(agents)], kind="dms")
    idle_rss = rss_mib(runner.process.pid)
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(rss_mib(runner.process.pid))
            await asyncio.sleep(RSS_SAMPLE_S)

    sampler = asyncio.create_task(sample())
    track.peak = 0
    started_at, started = time.time(), time.perf_counter()
    acks = [await bus.publish_async(subjects.activation("high", r.agent), r, msg_id=f"act:{r.activation_id}")
            for r in requests]
    await asyncio.wait_for(asyncio.gather(*acks), 60)
    ids = [r.activation_id for r in requests]
    with contextlib.suppress(TimeoutError):  # what ended by then is reported (`ended`)
        await track.wait(ids, CONCURRENT_WAIT_S)
    wall_s = time.perf_counter() - started
    sampler.cancel()
    outcomes = [track.outcomes.get(subjects.token(a), "") for a in ids]
    return {"activations": agents, "runner_concurrency": agents, "model_delay_s": MODEL_DELAY_S,
            "peak_in_flight": track.peak, "wall_s": round(wall_s, 2),
            "wall_vs_model_time": round(wall_s / MODEL_DELAY_S, 2), "ended": sum(1 for o in outcomes if o),
            "posted": outcomes.count("posted"), "failed": outcomes.count("failed"),
            "rss_idle_mib": idle_rss, "rss_peak_mib": max(samples),
            "rss_per_activation_kib": round((max(samples) - idle_rss) * 1024 / agents, 1),
            "window": [started_at, time.time()]}


def phase_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    phases = sorted({p for r in records for p in r["phases_ms"]})
    return {"own_ms": spread([own_ms(r) for r in records]),
            "phases_ms": {p: spread([r["phases_ms"].get(p, 0.0) for r in records]) for p in phases}}


def stall_summary(stalls: list[list[float]], window: list[float]) -> dict[str, Any]:
    late = [ms for at, ms in stalls if window[0] <= at <= window[1]]
    return {"longest_ms": max(late, default=0.0), "over_50ms": sum(1 for ms in late if ms > 50),
            "over_10ms": sum(1 for ms in late if ms > 10), "p99_of_late_wakeups_ms": pct(late, 0.99)}


def tree_for(commit: str, work_dir: Path) -> Path:
    """The baseline's source, as it was at `commit` (git archive: no worktree is registered in the repo)."""
    tree = work_dir / f"tree-{commit}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, *TREE_DIRS], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


async def start_runner(stack: LocalStack, doubles: Doubles, tree: Path, out: Path, agents: int) -> StageProcess:
    port = free_port()
    log_path = stack.work_dir / f"runner-{tree.name}.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(stack.work_dir)),
           "NATS_URL": stack.nats_url, "HUB_URL": doubles.hub_url, "HUB_API_KEY": SYSTEM_KEY,
           "BOTBURROW_AGENT_KEYS": json.dumps(doubles.keys), "MODEL_BASE_URL_OVERRIDE": doubles.llm_url,
           "SANDBOX_BACKEND": "none", "METRICS_PORT": str(port), "PYTHONUNBUFFERED": "1",
           "RUNNER_CONCURRENCY": str(agents), "LOG_LEVEL": "WARNING",
           "PYTHONPATH": str(tree), "BENCH_PROBE_OUT": str(out)}
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - opened once, handed to the child
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", str(PROBE), env=env, cwd=str(tree), stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True, preexec_fn=die_with_parent)
    stage = StageProcess("runner", process, port, log_path)
    stack.stages.append(stage)
    return stage


async def measure(tree: Path, work_dir: Path, doubles: Doubles, agents: int) -> dict[str, Any]:
    """One tree's runner, on its own nats-server: the overhead, then the concurrent batch."""
    server = await natsserver.start_async(work_dir / f"nats-{tree.name}")
    bus = await Bus.connect(server.url, name="bench-runner")
    stack = LocalStack(work_dir=work_dir, nats_url=server.url)
    out = work_dir / f"probe-{tree.name}.json"
    try:
        await ensure(bus.js)
        configs = await bus.kv(bucket.BUCKET)
        for i in range(agents):
            name = f"agent-{i}"
            await configs.put(bucket.key("agent", name), bucket.encode(parse_agent(name, agent_yaml(name), b"Hi.")))
        runner = await start_runner(stack, doubles, tree, out, agents)
        await stack.wait_ready(runner, timeout_s=120)
        track = Track()
        await track.subscribe(bus)
        sequential, sequential_ids = await overhead(bus, doubles, track)
        concurrent = await concurrency(bus, doubles, track, runner, agents)
    finally:
        await asyncio.gather(*(stack.stop_stage(s) for s in stack.stages))
        await bus.close()
        await asyncio.to_thread(server.stop)
    probe = probe_records(out)
    by_id = {r["id"]: r for r in probe["activations"]}
    sequential["runner"] = phase_summary([by_id[a] for a in sequential_ids if a in by_id])
    window = concurrent.pop("window")
    concurrent["event_loop_stalls"] = stall_summary(probe["stalls"], window)
    concurrent["runner"] = phase_summary([r for r in probe["activations"] if window[0] <= r["at"]])
    return {"overhead": sequential, "concurrency": concurrent, "probe_patched": len(probe["patched"])}


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


async def main(results_dir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    baseline = os.environ.get("BENCH_RUNNER_BASELINE", BASELINE_COMMIT)
    agents = int(os.environ.get("BENCH_RUNNER_CONCURRENT", CONCURRENT))  # smaller for a quick look
    work_dir = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    doubles = await asyncio.to_thread(Doubles, agents)
    results: dict[str, Any] = {}
    try:
        if baseline != "none":
            results["baseline"] = {"commit": baseline, **await measure(tree_for(baseline, work_dir), work_dir,
                                                                       doubles, agents)}
        # HEAD as committed, not the working tree (other work in progress there is not measured).
        current = head_commit()
        results["current"] = {"commit": current, **await measure(tree_for(current, work_dir), work_dir, doubles,
                                                                 agents)}
    finally:
        await asyncio.to_thread(doubles.stop)
    return {**results,
            "goals": {"own_p50_ms": 15, "own_p99_ms": 60, "wall_s": 3 * MODEL_DELAY_S, "rss_per_activation_kib": 300},
            "cpus": len(os.sched_getaffinity(0)),
            "load_average": {"before_1m_5m_15m": [round(x, 2) for x in load_before],
                             "after_1m_5m_15m": [round(x, 2) for x in os.getloadavg()]}}

"""The soak's cluster faults (`just soak --cluster`, issue 20), one after another while notifications flow:

1. SIGKILL of the node leading ACTIVATIONS, back on its store `OUTAGE_S` later;
2. SIGKILL of the JetStream meta leader, back `OUTAGE_S` later;
3. a node down for `NODE_DOWN_S`, then back on its store;
4. a rolling restart: each node in turn stopped (SIGTERM) and started again once the cluster is whole.

Each is timed from the fault: a new leader elected for ACTIVATIONS (`leader_s`), that stream accepting a
write again (`writes_s`: a probe message on a subject of the stream that no consumer reads), every stage
ready (`stages_ready_s`), and every stream, bucket and consumer back to all its replicas current
(`replicas_current_s`, what `botburrow doctor` reports). One fault at a time (a second node down would
cost the quorum, which is another test): each waits for the cluster to be whole before the next.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.soak.faults import FaultLog, wait_all_ready
from botburrow.cli.doctor import cluster_report
from botburrow.dev.stack import LocalStack
from botburrow.runtime.bus import Bus
from botburrow.runtime.natsserver import Cluster
from streams.topology import ACTIVATIONS

OUTAGE_S = 10.0
NODE_DOWN_S = 60.0
WHOLE_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 0.5
# On ACTIVATIONS' subjects (`agents.sched.activation.*.*`) but no runner durable's (high, normal, low).
PROBE_SUBJECT = "agents.sched.activation.probe.soak-probe"
_probes = itertools.count()


async def meta_leader(cluster: Cluster) -> str | None:
    """The JetStream meta group's leader, from any running node's `/jsz`."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        for node in cluster.nodes:
            if not node.running:
                continue
            try:
                leader = (await http.get(f"{node.monitor_url}/jsz")).json().get("meta_cluster", {}).get("leader")
            except (httpx.HTTPError, ValueError):
                continue
            if leader:
                return str(leader)
    return None


async def whole(bus: Bus) -> bool:
    """Every stream, bucket and consumer with a leader and all its replicas current."""
    try:
        return all(row.healthy for row in await cluster_report(bus.js))
    except Exception:  # mid-election
        return False


async def until_true(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await predicate():
            return round(time.monotonic() - started, 3)
        await asyncio.sleep(0.1)
    return None


class ClusterFaults:
    def __init__(self, stack: LocalStack, bus: Bus, log: FaultLog, lock: asyncio.Lock,
                 stage_timeout_s: float) -> None:
        assert stack.nats_cluster is not None
        self.stack, self.cluster, self.bus, self.log, self.lock = stack, stack.nats_cluster, bus, log, lock
        self.stage_timeout_s = stage_timeout_s
        self.timings: list[dict[str, Any]] = []
        # Short answers: a request to a dead leader would otherwise count its 5 s timeout in the times.
        self._js = bus.nc.jetstream(timeout=PROBE_TIMEOUT_S)

    async def run(self, window_s: float) -> None:
        """The four faults, spread over the window (each waits for the cluster to be whole first)."""
        started = time.monotonic()
        steps: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (0.1, self.kill_stream_leader), (0.25, self.kill_meta_leader), (0.4, self.node_down),
            (0.75, self.rolling_restart)]
        for at, step in steps:
            await asyncio.sleep(max(0.0, started + at * window_s - time.monotonic()))
            await until_true(lambda: whole(self.bus), WHOLE_TIMEOUT_S)
            async with self.lock:
                await step()

    async def kill_stream_leader(self) -> None:
        info = (await self.bus.js.stream_info(ACTIVATIONS.name)).cluster
        victim = info.leader if info and info.leader else self.cluster.nodes[0].name
        await self._outage("sigkill_stream_leader", victim, OUTAGE_S)

    async def kill_meta_leader(self) -> None:
        victim = await meta_leader(self.cluster) or self.cluster.nodes[-1].name
        await self._outage("sigkill_meta_leader", victim, OUTAGE_S)

    async def node_down(self) -> None:
        victim = self.cluster.nodes[1].name
        await self._outage("node_down_60s", victim, NODE_DOWN_S)

    async def rolling_restart(self) -> None:
        started = time.monotonic()
        for node in self.cluster.nodes:
            await until_true(lambda: whole(self.bus), WHOLE_TIMEOUT_S)
            await asyncio.to_thread(self.cluster.kill, node.name, signal.SIGTERM)
            await asyncio.to_thread(self.cluster.restart, node.name)
        replicas_s = await until_true(lambda: whole(self.bus), WHOLE_TIMEOUT_S)
        ready = await wait_all_ready(self.stack, self.stage_timeout_s)
        self._record("rolling_restart", "all", started, None, None, ready, replicas_s)

    async def _outage(self, kind: str, victim: str, down_s: float) -> None:
        """Kill `victim`, time the election and the writes while it is down, start it again after `down_s`."""
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.kill, victim)
        # Each timed from the kill, side by side (one after the other, the later ones included the earlier).
        leader_s, writes_s, ready = await asyncio.gather(
            until_true(lambda: self._led_by_other(victim), down_s + WHOLE_TIMEOUT_S),
            until_true(self._write, down_s + WHOLE_TIMEOUT_S), wait_all_ready(self.stack, self.stage_timeout_s))
        await asyncio.sleep(max(0.0, started + down_s - time.monotonic()))  # the outage's length itself
        await asyncio.to_thread(self.cluster.restart, victim)
        replicas_s = await until_true(lambda: whole(self.bus), WHOLE_TIMEOUT_S)
        self._record(kind, victim, started, leader_s, writes_s, ready, replicas_s)

    def _record(self, kind: str, victim: str, started: float, leader_s: float | None, writes_s: float | None,
                ready: dict[str, float | None], replicas_s: float | None) -> None:
        self.log.counts[kind] += 1
        late = sorted(name for name, seconds in ready.items() if seconds is None)
        if late:
            self.log.errors.append(f"{kind}: not ready within {self.stage_timeout_s:.0f} s: {', '.join(late)}")
        if replicas_s is None:
            self.log.errors.append(f"{kind}: replicas not all current within {WHOLE_TIMEOUT_S:.0f} s of the restart")
        stages_s = None if late else max((s for s in ready.values() if s is not None), default=0.0)
        self.timings.append({"fault": kind, "node": victim, "leader_s": leader_s, "writes_s": writes_s,
                             "stages_ready_s": stages_s, "replicas_current_s": replicas_s,
                             "total_s": round(time.monotonic() - started, 3)})
        if stages_s is not None:
            self.log.recovered(kind, stages_s)

    async def _led_by_other(self, victim: str) -> bool:
        try:
            info = (await self._js.stream_info(ACTIVATIONS.name)).cluster
        except Exception:
            return False
        return info is not None and bool(info.leader) and info.leader != victim

    async def _write(self) -> bool:
        try:
            await self._js.publish(PROBE_SUBJECT, b"{}", timeout=PROBE_TIMEOUT_S,
                                      headers={"Nats-Msg-Id": f"soak-probe-{next(_probes)}"})
        except Exception:
            return False
        return True


async def check_replicas(audit: Any, bus: Bus | None) -> None:
    """A breach unless every stream, bucket and consumer is back to all its replicas current."""
    assert bus is not None
    if await until_true(lambda: whole(bus), WHOLE_TIMEOUT_S) is None:
        rows = [row for row in await cluster_report(bus.js) if not row.healthy]
        audit.breach(f"not back to all replicas current: {[(r.kind, r.name, r.current, r.replicas) for r in rows]}")

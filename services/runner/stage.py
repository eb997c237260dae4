"""The runner stage: take activation requests by priority, run each within bounded concurrency.

One loop, top to bottom: while slots are free, fetch at most that many requests (high first, then
normal, then low; low goes first every LOW_SHARE-th round so it is never starved), and start one
task per request. Each task holds the agent's lease and heartbeats its message (`in_progress`)
until it acknowledges it. On SIGTERM the loop stops fetching, lets running work finish within the
grace period and hands the rest back (`nak`) so another runner takes it at once.

Heartbeat and lease timing are read from the server at start (the runner consumers' `ack_wait`, the
`leases` bucket's TTL), not from constants: whoever created the topology (`botburrow streams apply`,
or a test with short values) decides, and the runner always beats well inside both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from botburrow.definitions.directory import AgentDirectory
from botburrow.grants import PolicyGrantResolver
from botburrow.hub.breaker import CircuitBreaker
from botburrow.hub.client import HubClient
from botburrow.hub.probe import keep_probing
from botburrow.runtime import service
from botburrow.runtime.consumer import DeadLetters, Retry, nak_quietly
from botburrow.runtime.service import StageContext, supervise
from botburrow.secrets import AgentKeys, read_secret
from schemas.codec import DecodeError, decode_subject
from schemas.events import ActivationMetrics, ActivationRequested
from services.runner.activation import Activation, Deps, Limits
from services.runner.executors import cli_thinkers
from services.runner.executors.process import keep_sweeping, runner_for, sweep_once
from services.runner.gateway import ModelGateway
from services.runner.lease import Lease
from services.runner.mcp.catalog import Catalog
from services.runner.mcptools import McpToolsets
from services.runner.pricing import PriceTable
from services.runner.runlog import RunLog, now_rfc3339
from services.runner.seams import NativeThinker, load_providers
from streams.subjects import PRIORITIES
from streams.topology import LEASE_TTL_S, LEASES, MAX_DELIVERIES, RUNNER_ACK_WAIT_S, RUNNER_CONSUMERS

log = logging.getLogger(__name__)
LOW_SHARE = 5
HUB_BREAKER_COOLDOWN_S = 5.0
IDLE_FETCH_S = 0.5
BUSY_FETCH_S = 0.05
LEASE_HELD_RETRY_S = 5.0
BEATS_PER_DEADLINE = 3
# A request NATS failed on (the lease bucket, the run log) comes back this soon.
NATS_TROUBLE_RETRY_S = 2.0


@dataclass(frozen=True)
class Timing:
    """How often to heartbeat and renew, and how long to wait for a held lease, from the live topology."""

    ack_wait_s: float
    lease_ttl_s: float

    @property
    def heartbeat_s(self) -> float:
        return min(self.ack_wait_s, self.lease_ttl_s) / BEATS_PER_DEADLINE

    @property
    def lease_held_retry_s(self) -> float:
        # A dead holder's lease expires within one TTL; retrying sooner only burns deliveries.
        return min(LEASE_HELD_RETRY_S, self.lease_ttl_s / 2)


async def read_timing(js: JetStreamContext) -> Timing:
    ack_waits = [(await js.consumer_info(c.stream, c.durable)).config.ack_wait or RUNNER_ACK_WAIT_S
                 for c in RUNNER_CONSUMERS.values()]
    lease_ttl_s = (await (await js.key_value(LEASES.name)).status()).ttl or LEASE_TTL_S
    return Timing(ack_wait_s=min(ack_waits), lease_ttl_s=lease_ttl_s)


class Runner:
    def __init__(self, ctx: StageContext, deps: Deps) -> None:
        self.ctx, self.deps = ctx, deps
        self.concurrency: int = ctx.settings["RUNNER_CONCURRENCY"]
        self.dlq = DeadLetters(ctx.bus, "runner")
        self.active: set[asyncio.Task[None]] = set()
        self.timing = Timing(ack_wait_s=RUNNER_ACK_WAIT_S, lease_ttl_s=LEASE_TTL_S)
        self.taking_work = False  # readiness: true while the fetch loop runs

    async def run(self) -> None:
        self.timing = await read_timing(self.ctx.bus.js)
        log.info("runner timing", extra={"ack_wait_s": self.timing.ack_wait_s,
                                          "lease_ttl_s": self.timing.lease_ttl_s,
                                          "heartbeat_s": self.timing.heartbeat_s})
        subs = {p: await self.ctx.bus.js.pull_subscribe_bind(c.durable, c.stream) for p, c in RUNNER_CONSUMERS.items()}
        stopping = asyncio.create_task(self.ctx.stop.wait())
        try:
            try:
                await self._fetch_loop(subs, stopping)
            finally:
                self.taking_work = False  # not ready once the loop ended, however it ended
                stopping.cancel()
            await self._drain()
        finally:
            for sub in subs.values():  # else Bus.close's drain waits out its timeout on their queues
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _fetch_loop(self, subs: dict, stopping: asyncio.Task[bool]) -> None:
        rounds = 0
        self.taking_work = True
        while not self.ctx.stop.is_set():
            free = self.concurrency - len(self.active)
            if free <= 0:
                await asyncio.wait({*self.active, stopping}, return_when=asyncio.FIRST_COMPLETED)
                continue
            order = list(PRIORITIES) if rounds % LOW_SHARE else ["low", "high", "normal"]
            rounds += 1
            for msg in await self._fetch(subs, order, free):
                if self.ctx.stop.is_set():  # SIGTERM arrived during the fetch: not ours to start
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    continue
                task = asyncio.create_task(self._handle(msg))
                self.active.add(task)
                task.add_done_callback(self.active.discard)

    async def _fetch(self, subs: dict, order: list[str], free: int) -> list[Msg]:
        # Quick looks in priority order; when all are empty, wait on `high`, so a mention or DM arriving
        # at an idle runner starts at once (a long wait on `low` delayed it by up to IDLE_FETCH_S).
        attempts = [(p, BUSY_FETCH_S) for p in order] + [(PRIORITIES[0], IDLE_FETCH_S)]
        for priority, timeout_s in attempts:
            try:
                msgs = await subs[priority].fetch(free, timeout=timeout_s)
            except TimeoutError:  # nats.errors.TimeoutError is one, and so is an asyncio timeout inside fetch
                continue
            except Exception as exc:  # reconnecting, leader election: back off and try again
                log.warning("fetch failed", extra={"priority": priority, "error": repr(exc)})
                await asyncio.sleep(1)
                return []
            if msgs:
                return msgs
        return []

    async def _drain(self) -> None:
        grace_s: float = self.ctx.settings["RUNNER_GRACE_SECONDS"]
        if self.active:
            log.info("draining", extra={"active": len(self.active), "grace_s": grace_s})
            _, unfinished = await asyncio.wait(set(self.active), timeout=grace_s)
            for task in unfinished:
                task.cancel()  # _handle hands the message back with nak()
            if unfinished:
                await asyncio.wait(unfinished)

    async def _heartbeat(self, msg: Msg, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.timing.heartbeat_s)
            # A failed beat (NATS reconnecting) must not end the loop: the next one may get through.
            # The lease first: if this runner dies, its lease then lapses before its message comes back.
            with contextlib.suppress(Exception):
                await lease.renew()
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _lease_held_delay_s(self, lease: Lease, deliveries: int) -> float:
        """When to try a held lease again. Every nak counts as a delivery, and after a nats-server restart
        (which redelivers at once) a dead holder's lease holds for up to a TTL: fixed 5 s retries used up
        MAX_DELIVERIES and failed activations (the full soak). So the wait doubles from 5 s, but never
        past the moment the holder's lease lapses; the first retry stays short, as a live holder releases
        its lease when its run ends."""
        backoff_s = min(self.timing.lease_ttl_s, self.timing.lease_held_retry_s * 2 ** max(0, deliveries - 1))
        lapses_in_s = await lease.lapses_in_s(self.ctx.bus.js, self.timing.lease_ttl_s)
        if lapses_in_s is None:
            return backoff_s
        return max(self.timing.lease_held_retry_s, min(backoff_s, lapses_in_s + 1.0))

    async def _handle(self, msg: Msg) -> None:
        """One activation request, settled whatever happens: acknowledged, dead-lettered, or handed back
        (`nak`) when NATS failed on the way. A task that died here left its request unsettled until the
        ack wait ran out, and, on its last delivery, lost it with no `failed` event."""
        try:
            await self._settle(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("activation request handed back", extra={"error": repr(exc)[:300]})
            await nak_quietly(msg, NATS_TROUBLE_RETRY_S)

    async def _settle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered
        try:
            request: ActivationRequested = decode_subject(msg.subject, msg.data)
        except DecodeError as exc:  # whatever the bytes: wrong shape, too big, too deep, another agent's
            await self.dlq.settle(msg, f"invalid payload: {exc.reason}", path=exc.path, category=exc.kind)
            return
        trace_id = (msg.headers or {}).get("Trace-Id") or uuid.uuid4().hex
        runlog = RunLog(self.ctx.bus, request, deliveries, trace_id, stream_seq=msg.metadata.sequence.stream)
        if deliveries > MAX_DELIVERIES:
            if not await self._ended_before_giving_up(msg, runlog):
                await self._give_up(msg, request, runlog, deliveries)
            return
        holder = f"{self.deps.runner_id}/{request.activation_id}"
        lease = Lease(await self.ctx.bus.kv(LEASES.name), request.agent, holder)
        if not await lease.acquire():
            await msg.nak(delay=await self._lease_held_delay_s(lease, deliveries))
            return
        beat = asyncio.create_task(self._heartbeat(msg, lease))
        try:
            await self._run_leased(msg, request, runlog, deliveries)
        finally:
            beat.cancel()
            try:
                await lease.release()
            except Exception as exc:  # it lapses by its TTL; the request is settled already
                log.warning("lease not released", extra={"activation_id": request.activation_id,
                                                         "error": repr(exc)[:200]})

    async def _run_leased(self, msg: Msg, request: ActivationRequested, runlog: RunLog, deliveries: int) -> None:
        try:
            # Read under the lease: an earlier handling that is still running ends before its lease frees.
            if await self._already_ended(msg, runlog):
                return
            activation = Activation(self.deps, request, runlog)
            await activation.run()
            if activation.dead_letter:
                await self.dlq.send(msg, activation.dead_letter, category="activation")
            await msg.ack_sync()
        except Retry as exc:
            await msg.nak(delay=exc.delay_s)
        except asyncio.CancelledError:
            await nak_quietly(msg)  # shutting down: hand it back so another runner starts it now
            raise
        except Exception:
            log.exception("activation crashed", extra={"activation_id": request.activation_id})
            await msg.nak(delay=min(60.0, 2.0**deliveries))

    async def _already_ended(self, msg: Msg, runlog: RunLog) -> bool:
        """True, with the message acknowledged, when an earlier handling already ended this activation:
        its final ack was lost (nats-server killed just after it) or the request was published again.
        Running it again, or giving up on it, would end it twice: two consumption events (issue 9)."""
        end = await runlog.earlier_end()
        if end is None:
            return False
        log.info("activation already ended: acknowledged, not run again",
                 extra={"activation_id": runlog.request.activation_id, "end": end, "deliveries": runlog.attempt})
        await msg.ack_sync()
        return True

    async def _ended_before_giving_up(self, msg: Msg, runlog: RunLog) -> bool:
        # The server delivers this message no more: if the run log cannot be read now, giving up (a
        # `failed` and a dead letter) beats losing the request without a trace.
        try:
            return await self._already_ended(msg, runlog)
        except Exception as exc:
            log.warning("run log unreadable before giving up",
                        extra={"activation_id": runlog.request.activation_id, "error": repr(exc)})
            return False

    async def _give_up(self, msg: Msg, request: ActivationRequested, runlog: RunLog, deliveries: int) -> None:
        reason = f"gave up after {deliveries - 1} deliveries"
        await runlog.finished(ActivationMetrics(
            activation_id=request.activation_id, agent_id=request.agent, tool_type="unknown", model="unknown",
            task_type=request.kind, task_priority=request.priority, outcome="failed", error=reason,
            started_at=now_rfc3339(), ended_at=now_rfc3339()))
        await self.dlq.send(msg, reason, category="exhausted")
        await msg.ack()


async def run(ctx: StageContext) -> None:
    # Not ready until the fetch loop runs: checked from the start, or /readyz says 200 (only `nats` is
    # checked yet) while the runner still loads its directory and sweeps leftover sandboxes.
    runner: Runner | None = None
    ctx.health.add_check("taking_work", lambda: runner is not None and runner.taking_work)
    warming = asyncio.create_task(load_providers())  # not awaited: readiness does not wait for it
    # A short breaker cool-down: a Hub blip must not idle every runner for the default 30 s.
    hub = HubClient(ctx.settings["HUB_URL"], system_key=read_secret("hub-api-key", environ=ctx.environ),
                    breaker=CircuitBreaker(cooldown_s=HUB_BREAKER_COOLDOWN_S))
    directory = await AgentDirectory.open(ctx.bus)
    ctx.health.add_check("definitions", lambda: directory.following)
    gateway = ModelGateway()  # CLI executors reach the model only through it (contract §4)
    sandbox_environ = {**ctx.environ, "SANDBOX_BACKEND": ctx.settings["SANDBOX_BACKEND"],
                       "SANDBOX_MEMORY_MB": str(ctx.settings["SANDBOX_MEMORY_MB"]),
                       "SANDBOX_WORKSPACE_MB": str(ctx.settings["SANDBOX_WORKSPACE_MB"])}
    processes = runner_for(sandbox_environ)
    # MCP servers and shell tools share the CLIs' sandbox backend (one set of workspace mounts).
    toolsets = McpToolsets(
        ctx.environ, github_host=ctx.settings["GITHUB_HOST"], skills=directory.skills,
        start_timeout_s=ctx.settings["MCP_START_TIMEOUT_SECONDS"],
        call_timeout_s=ctx.settings["MCP_CALL_TIMEOUT_SECONDS"], reuse_idle_s=ctx.settings["MCP_REUSE_IDLE_SECONDS"],
        catalog=Catalog.load(ctx.settings["MCP_CATALOG_FILE"]), sandbox=getattr(processes, "sandbox", None))
    deps = Deps(
        bus=ctx.bus, hub=hub, definitions=directory, keys=AgentKeys(ctx.environ),
        prices=PriceTable.load(ctx.settings["PRICE_TABLE_FILE"]), environ=ctx.environ,
        limits=Limits(timeout_s=ctx.settings["ACTIVATION_TIMEOUT_SECONDS"],
                      max_tokens=ctx.settings["ACTIVATION_MAX_TOKENS"]),
        runner_id=f"{socket.gethostname()}-{os.getpid()}",
        grants=PolicyGrantResolver.from_settings(ctx.settings["GRANT_POLICY_FILE"]),
        toolsets=toolsets,
        thinkers={"native": NativeThinker(), **cli_thinkers(sandbox_environ, gateway=gateway, runner=processes)},
    )
    ctx.health.add_check("hub", lambda: hub.available)
    runner = Runner(ctx, deps)
    probing = asyncio.create_task(supervise(ctx.health, "hub-probe", lambda: keep_probing(hub, ctx.stop), ctx.stop))
    sweeping = asyncio.create_task(supervise(ctx.health, "sandbox-sweep", lambda: keep_sweeping(
        processes, ctx.stop, activation_timeout_s=deps.limits.timeout_s), ctx.stop))
    try:
        # Before taking work (so before ready): a crashed runner's sandboxes must not outlive its replacement.
        await sweep_once(processes, activation_timeout_s=deps.limits.timeout_s)
        await runner.run()
    finally:
        probing.cancel()
        sweeping.cancel()
        warming.cancel()  # a thread cannot be stopped: this only drops the wait for it
        if (sandbox := getattr(processes, "sandbox", None)) is not None:
            await sandbox.close()
        await toolsets.aclose()
        await gateway.stop()
        await directory.close()
        await hub.aclose()


def main() -> None:
    service.main("runner", run)

"""The runner stage: take activation requests by priority, run each within bounded concurrency.

The shared worker (`runtime.worker`) runs the loop: while slots are free (RUNNER_CONCURRENCY), it
fetches at most that many requests in priority rounds (high first, then normal, then low; low goes
first every LOW_SHARE-th round so it is never starved; an idle runner waits on high), and settles
each. `Runner.handle` runs one request: it holds the agent's lease and heartbeats its message
(`in_progress`) until the worker acknowledges it. On SIGTERM the worker stops fetching, lets running
work finish within the grace period and hands the rest back (`nak`) so another runner takes it at once.

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

from botburrow import tracing
from botburrow.definitions.directory import AgentDirectory
from botburrow.grants import PolicyGrantResolver
from botburrow.hub.connect import hub_client_for_stage
from botburrow.hub.probe import keep_probing
from botburrow.runtime import service
from botburrow.runtime.consumer import DeadLetters, Item, Retry, Settler
from botburrow.runtime.election import is_transient
from botburrow.runtime.service import StageContext, supervise
from botburrow.runtime.worker import PriorityRounds, Worker
from botburrow.secrets import AgentKeys, read_secret, redact
from botburrow.settings import RunnerSettings
from schemas.events import ActivationMetrics, ActivationRequested
from services.runner.activation import Activation, Deps
from services.runner.cancel import Cancels
from services.runner.config import RunnerConfig
from services.runner.executors import cli_thinkers
from services.runner.executors.process import keep_sweeping, runner_for, sweep_once
from services.runner.gateway import ModelGateway
from services.runner.lease import Lease
from services.runner.mcp.catalog import Catalog
from services.runner.mcptools import McpToolsets
from services.runner.memory import service as memory
from services.runner.pricing import PriceTable
from services.runner.runlog import RunLog, now_rfc3339
from services.runner.seams import NativeThinker, ProviderModels, load_providers
from streams.topology import LEASE_TTL_S, LEASES, RUNNER_ACK_WAIT_S, RUNNER_CONSUMERS

log = logging.getLogger(__name__)
STAGE = "runner"
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


def crash_backoff_s(deliveries: int) -> float:
    """A crashed activation comes back later each time (a crash is rarely cured by retrying at once)."""
    return min(60.0, 2.0**deliveries)


class Runner:
    """The runner's handler, plugged into the shared worker (`runtime.worker`): the worker fetches by
    priority rounds, fills the concurrency slots, settles each request and drains on SIGTERM; here each
    request holds its agent's lease and heartbeats its message while its activation runs."""

    def __init__(self, ctx: StageContext[RunnerSettings], deps: Deps) -> None:
        self.ctx, self.deps = ctx, deps
        self.timing = Timing(ack_wait_s=RUNNER_ACK_WAIT_S, lease_ttl_s=LEASE_TTL_S)
        # Acks are confirmed: a lost one re-runs a whole activation (its earlier end is found then, at a cost).
        settler = Settler(DeadLetters(ctx.bus, STAGE), self.handle, consumer=STAGE, backoff_s=crash_backoff_s,
                          confirm_acks=True, last_words=self.give_up)
        fetch = PriorityRounds(low_share=LOW_SHARE, busy_wait_s=BUSY_FETCH_S, idle_wait_s=IDLE_FETCH_S)
        self.worker = Worker(ctx.bus, STAGE, list(RUNNER_CONSUMERS.values()), fetch, settler,
                             concurrency=ctx.settings.runner_concurrency,
                             grace_s=ctx.settings.runner_grace_seconds)

    @property
    def taking_work(self) -> bool:
        """Readiness: true while the worker's loop runs."""
        return self.worker.running

    async def run(self) -> None:
        self.timing = await read_timing(self.ctx.bus.js)
        log.info("runner timing", extra={"ack_wait_s": self.timing.ack_wait_s,
                                          "lease_ttl_s": self.timing.lease_ttl_s,
                                          "heartbeat_s": self.timing.heartbeat_s})
        await self.worker.run(self.ctx.stop)

    async def handle(self, items: list[Item]) -> None:
        """One activation request (a job of one), under its agent's lease, heartbeating its message. The
        worker settles it: done (acknowledged, or dead-lettered when the activation says so), `Retry`,
        crash (handed back with `crash_backoff_s`), cancelled by a drain (handed back at once)."""
        (item,) = items
        request: ActivationRequested = item.payload
        lease = await self._take_lease(item, request)
        beat = asyncio.create_task(self._heartbeat(item.msg, lease))
        runlog = self._runlog(item)
        try:
            # Read under the lease: an earlier handling that is still running ends before its lease frees.
            if await self._already_ended(runlog):
                return
            activation = Activation(self.deps, request, runlog)
            await activation.run()
            if activation.dead_letter:
                item.reject(activation.dead_letter, category="activation")
        except Exception as exc:
            # JetStream still busy past `ride_out`'s bound (limits, replies, run events): back soon, by a
            # short nak, never the crash backoff (nor a dead task that waits out the 60 s ack wait).
            if is_transient(exc):
                raise Retry(NATS_TROUBLE_RETRY_S, f"jetstream: {exc!r}"[:300]) from exc
            raise
        finally:
            beat.cancel()
            await _settle_events(runlog)
            try:
                await lease.release()
            except Exception as exc:  # it lapses by its TTL; the request is settled already
                log.warning("lease not released", extra={"activation_id": request.activation_id,
                                                         "error": repr(exc)[:200]})

    async def _take_lease(self, item: Item, request: ActivationRequested) -> Lease:
        """The agent's lease, or `Retry`: later while another holds it, soon when NATS failed on the way
        (after `Lease.acquire` rode out an election for its bound). Everything here is inside the handling
        the worker settles: an error never leaves the message unsettled until its ack wait."""
        try:
            lease = Lease(await self.ctx.bus.kv(LEASES.name), request.agent,
                          f"{self.deps.runner_id}/{request.activation_id}")
            if await lease.acquire():
                return lease
            delay_s = await self._lease_held_delay_s(lease, item.deliveries)
        except Exception as exc:  # the lease bucket is unreachable: not the request's fault
            raise Retry(NATS_TROUBLE_RETRY_S, f"lease bucket: {exc!r}"[:300]) from exc
        raise Retry(delay_s, "lease held")

    def _runlog(self, item: Item) -> RunLog:
        headers = item.msg.headers or {}
        trace_id = headers.get("Trace-Id") or uuid.uuid4().hex
        runlog = RunLog(self.ctx.bus, item.payload, item.deliveries, trace_id,
                        stream_seq=item.msg.metadata.sequence.stream, replay_of=headers.get("Replay-Of"))
        tracing.CURRENT.set(runlog.span)  # this job's task: its Hub and model calls carry the attempt's context
        return runlog

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

    async def _already_ended(self, runlog: RunLog) -> bool:
        """True when an earlier handling already ended this activation (the worker then acknowledges it):
        its final ack was lost (nats-server killed just after it) or the request was published again.
        Running it again, or giving up on it, would end it twice: two consumption events (issue 9)."""
        end = await runlog.earlier_end()
        if end is None:
            return False
        log.info("activation already ended: acknowledged, not run again",
                 extra={"activation_id": runlog.request.activation_id, "end": end, "deliveries": runlog.attempt})
        return True

    async def give_up(self, item: Item, reason: str) -> bool:
        """A request past its delivery cap (the worker's last words): unless an earlier handling ended it,
        its `failed` event, then (returns True) the worker's dead letter."""
        request: ActivationRequested = item.payload
        runlog = self._runlog(item)
        # The server delivers this message no more: if the run log cannot be read now, giving up (a
        # `failed` and a dead letter) beats losing the request without a trace.
        try:
            if await self._already_ended(runlog):
                return False
        except Exception as exc:
            log.warning("run log unreadable before giving up",
                        extra={"activation_id": request.activation_id, "error": repr(exc)})
        await runlog.finished(ActivationMetrics(
            activation_id=request.activation_id, agent_id=request.agent, tool_type="unknown", model="unknown",
            task_type=request.kind, task_priority=request.priority, outcome="failed", error=reason,
            started_at=now_rfc3339(), ended_at=now_rfc3339()))
        return True


async def _settle_events(runlog: RunLog) -> None:
    """A handling that ended without its end event (a `Retry`, a crash) may leave run events unacked: their
    acks are awaited (re-sent if one failed), or given up (the next delivery records the run again)."""
    try:
        await runlog.settle()
    except Exception as exc:
        runlog.abandon()
        log.warning("run events not confirmed", extra={"activation_id": runlog.request.activation_id,
                                                       "error": repr(exc)[:200]})


async def run(ctx: StageContext[RunnerSettings]) -> None:
    # Not ready until the fetch loop runs: checked from the start, or /readyz says 200 (only `nats` is
    # checked yet) while the runner still loads its directory and sweeps leftover sandboxes.
    runner: Runner | None = None
    ctx.health.add_check("taking_work", lambda: runner is not None and runner.taking_work)
    warming = asyncio.create_task(load_providers())  # not awaited: readiness does not wait for it
    # The redaction pattern of every secret known at start (a thousand agent keys: tens of ms to compile),
    # compiled here, in a thread, not by a first activation's first event on the event loop.
    await asyncio.to_thread(redact, "warm up")
    models = ProviderModels()  # the process's model clients, one per endpoint and key, closed below
    # A short breaker cool-down: a Hub blip must not idle every runner for the default 30 s.
    # The process's breaker for this Hub and the Hub's budget shared with every stage and replica.
    hub = await hub_client_for_stage(ctx.settings, ctx.bus, system_key=read_secret("hub-api-key", environ=ctx.environ),
                                     breaker_cooldown_s=HUB_BREAKER_COOLDOWN_S)
    directory = await AgentDirectory.open(ctx.bus)
    ctx.health.add_check("definitions", lambda: directory.following)
    gateway = ModelGateway()  # CLI executors reach the model only through it (contract §4)
    # The one place the runner's settings are read; below this, only secrets come from the environment.
    config = RunnerConfig.from_settings(ctx.settings, search_path=ctx.environ.get("PATH", ""))
    sandbox = config.sandbox.open()
    processes = runner_for(config.sandbox, sandbox)
    # MCP servers and shell tools share the CLIs' sandbox backend (one set of workspace mounts).
    toolsets = McpToolsets(
        ctx.environ, node_modules=config.tools_dir / "node_modules", github_host=ctx.settings.github_host,
        skills=directory.skills,
        start_timeout_s=ctx.settings.mcp_start_timeout_seconds,
        call_timeout_s=ctx.settings.mcp_call_timeout_seconds, reuse_idle_s=ctx.settings.mcp_reuse_idle_seconds,
        catalog=Catalog.load(ctx.settings.mcp_catalog_file), sandbox=sandbox)
    deps = Deps(
        bus=ctx.bus, hub=hub, definitions=directory, keys=AgentKeys(ctx.environ),
        prices=PriceTable.load(ctx.settings.price_table_file), config=config, secrets=ctx.environ,
        runner_id=f"{socket.gethostname()}-{os.getpid()}",
        grants=PolicyGrantResolver.from_settings(ctx.settings.grant_policy_file),
        toolsets=toolsets,
        thinkers={"native": NativeThinker(models), **cli_thinkers(config.sandbox, gateway=gateway, runner=processes)},
        cancels=Cancels(following=True),
        memory=memory.from_settings(ctx.settings, ctx.environ, config),  # NoMemory without MEMORY_STORE
    )
    ctx.health.add_check("hub", lambda: hub.available)
    runner = Runner(ctx, deps)
    probing = asyncio.create_task(supervise(ctx.health, "hub-probe", lambda: keep_probing(hub, ctx.stop), ctx.stop))
    cancelling = asyncio.create_task(supervise(ctx.health, "cancels", lambda: deps.cancels.follow(ctx.bus, ctx.stop),
                                               ctx.stop))
    sweeping = asyncio.create_task(supervise(ctx.health, "sandbox-sweep", lambda: keep_sweeping(
        processes, ctx.stop, activation_timeout_s=config.timeout_s), ctx.stop))
    try:
        # Before taking work (so before ready): a crashed runner's sandboxes must not outlive its replacement.
        await sweep_once(processes, activation_timeout_s=config.timeout_s)
        await runner.run()
    finally:
        probing.cancel()
        cancelling.cancel()
        sweeping.cancel()
        warming.cancel()  # a thread cannot be stopped: this only drops the wait for it
        await sandbox.close()
        await toolsets.aclose()
        await gateway.stop()
        await models.aclose()
        await directory.close()
        await hub.aclose()
        await deps.memory.aclose()


def main() -> None:
    service.main("runner", run)

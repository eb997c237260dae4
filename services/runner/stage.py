"""The runner stage: take activation requests by priority, run each within bounded concurrency.

One loop, top to bottom: while slots are free, fetch at most that many requests (high first, then
normal, then low; low goes first every LOW_SHARE-th round so it is never starved), and start one
task per request. Each task holds the agent's lease and heartbeats its message (`in_progress`)
until it acknowledges it. On SIGTERM the loop stops fetching, lets running work finish within the
grace period and hands the rest back (`nak`) so another runner takes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from nats.aio.msg import Msg

from botburrow.definitions.directory import AgentDirectory
from botburrow.hub.client import HubClient
from botburrow.hub.probe import keep_probing
from botburrow.runtime import service
from botburrow.runtime.consumer import DeadLetters, Retry
from botburrow.runtime.service import StageContext
from botburrow.schemas.codec import DecodeError, decode_subject
from botburrow.schemas.events import ActivationMetrics, ActivationRequested
from botburrow.secrets import AgentKeys, read_secret
from botburrow.services.runner.activation import Activation, Deps, Limits
from botburrow.services.runner.lease import Lease
from botburrow.services.runner.pricing import PriceTable
from botburrow.services.runner.runlog import RunLog, now_rfc3339
from botburrow.streams.subjects import PRIORITIES
from botburrow.streams.topology import MAX_DELIVERIES, RUNNER_ACK_WAIT_S

log = logging.getLogger(__name__)
LOW_SHARE = 5
IDLE_FETCH_S = 0.5
BUSY_FETCH_S = 0.05
LEASE_HELD_RETRY_S = 5.0


class Runner:
    def __init__(self, ctx: StageContext, deps: Deps) -> None:
        self.ctx, self.deps = ctx, deps
        self.concurrency: int = ctx.settings["RUNNER_CONCURRENCY"]
        self.dlq = DeadLetters(ctx.bus, "runner")
        self.active: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        subs = {p: await self.ctx.bus.js.pull_subscribe_bind(f"runner-{p}", "ACTIVATIONS") for p in PRIORITIES}
        stopping = asyncio.create_task(self.ctx.stop.wait())
        rounds = 0
        while not self.ctx.stop.is_set():
            free = self.concurrency - len(self.active)
            if free <= 0:
                await asyncio.wait({*self.active, stopping}, return_when=asyncio.FIRST_COMPLETED)
                continue
            order = list(PRIORITIES) if rounds % LOW_SHARE else ["low", "high", "normal"]
            rounds += 1
            for msg in await self._fetch(subs, order, free):
                task = asyncio.create_task(self._handle(msg))
                self.active.add(task)
                task.add_done_callback(self.active.discard)
        stopping.cancel()
        await self._drain()
        for sub in subs.values():  # else Bus.close's drain waits out its timeout on their queues
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(self, subs: dict, order: list[str], free: int) -> list[Msg]:
        for i, priority in enumerate(order):
            timeout_s = IDLE_FETCH_S if i == len(order) - 1 else BUSY_FETCH_S
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
            await asyncio.sleep(RUNNER_ACK_WAIT_S / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()
            await lease.renew()

    async def _handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered
        try:
            request: ActivationRequested = decode_subject(msg.subject, msg.data)
        except DecodeError as exc:
            await self.dlq.send(msg, f"invalid payload: {exc.reason}", path=exc.path, category="invalid")
            await msg.ack()
            return
        trace_id = (msg.headers or {}).get("Trace-Id") or uuid.uuid4().hex
        runlog = RunLog(self.ctx.bus, request, deliveries, trace_id)
        if deliveries > MAX_DELIVERIES:
            await self._give_up(msg, request, runlog, deliveries)
            return
        lease = Lease(await self.ctx.bus.kv("leases"), request.agent, f"{self.deps.runner_id}/{request.activation_id}")
        if not await lease.acquire():
            await msg.nak(delay=LEASE_HELD_RETRY_S)
            return
        beat = asyncio.create_task(self._heartbeat(msg, lease))
        try:
            activation = Activation(self.deps, request, runlog)
            await activation.run()
            if activation.dead_letter:
                await self.dlq.send(msg, activation.dead_letter, category="activation")
            await msg.ack_sync()
        except Retry as exc:
            await msg.nak(delay=exc.delay_s)
        except asyncio.CancelledError:
            await msg.nak()  # shutting down: hand it back so another runner starts it now
            raise
        except Exception:
            log.exception("activation crashed", extra={"activation_id": request.activation_id})
            await msg.nak(delay=min(60.0, 2.0**deliveries))
        finally:
            beat.cancel()
            await lease.release()

    async def _give_up(self, msg: Msg, request: ActivationRequested, runlog: RunLog, deliveries: int) -> None:
        reason = f"gave up after {deliveries - 1} deliveries"
        await runlog.finished(ActivationMetrics(
            activation_id=request.activation_id, agent_id=request.agent, tool_type="unknown", model="unknown",
            task_type=request.kind, task_priority=request.priority, outcome="failed", error=reason,
            started_at=now_rfc3339(), ended_at=now_rfc3339()))
        await self.dlq.send(msg, reason, category="exhausted")
        await msg.ack()


async def run(ctx: StageContext) -> None:
    hub = HubClient(ctx.settings["HUB_URL"], system_key=read_secret("hub-api-key", environ=ctx.environ))
    directory = await AgentDirectory.open(ctx.bus)
    deps = Deps(
        bus=ctx.bus, hub=hub, definitions=directory, keys=AgentKeys(ctx.environ),
        prices=PriceTable.load(ctx.settings["PRICE_TABLE_FILE"]), environ=ctx.environ,
        limits=Limits(timeout_s=ctx.settings["ACTIVATION_TIMEOUT_SECONDS"],
                      max_tokens=ctx.settings["ACTIVATION_MAX_TOKENS"]),
        runner_id=f"{socket.gethostname()}-{os.getpid()}",
    )
    ctx.health.add_check("hub", lambda: hub.available)
    probing = asyncio.create_task(keep_probing(hub, ctx.stop))
    try:
        await Runner(ctx, deps).run()
    finally:
        probing.cancel()
        await directory.close()
        await hub.aclose()


def main() -> None:
    service.main("runner", run)

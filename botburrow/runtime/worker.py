"""The one worker every consuming stage runs (scheduler, runner, metrics), in the manner of arq.

One loop, top to bottom: while a concurrency slot is free, fetch at most what the free slots can take
(through the stage's fetch strategy), and start one job per `batch_size` messages; each job is
settled by the one settle rule (`consumer.Settler`: done, retry, dead letter, crash). When `stop` is
set the worker takes nothing new: what a fetch still brings is held until nothing more can arrive,
then handed back (so another worker has it without waiting out ack_wait; handed back earlier, it
came straight back into the same open pull request, each time a delivery, until it was dead-lettered
as over-delivered), and the running jobs get `grace_s` to finish before they are cancelled (which
hands their messages back too).

Fetch strategies (`Fetch`): `Batches` (one durable, plain batches: metrics), `PriorityRounds` (durables
in priority order: the runner), and the scheduler's partition reader (`services.scheduler.puller`).
What a stage does with a message (a lease, heartbeats) is its handler's business, not the worker's.

`run_until_idle()` processes until the consumers have nothing pending or unacknowledged and no job
runs, then returns: tests drive a stage's worker with it instead of polling and sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import DeadLetters, Handler, Settler, nak_quietly
from streams.topology import ConsumerSpec

log = logging.getLogger(__name__)
# After a failed fetch (NATS reconnecting, a leader election), the next one waits this long.
FETCH_RETRY_S = 1.0


class Fetch(Protocol):
    """How a worker gets messages. `next` waits a bounded time when none are there (returns [])."""

    async def open(self, js: JetStreamContext, consumers: Sequence[ConsumerSpec]) -> None: ...

    async def next(self, room: int) -> list[Msg]: ...

    def stop(self) -> None:
        """Ask for nothing more (what is already on its way still arrives)."""
        ...

    @property
    def drained(self) -> bool:
        """Nothing more can arrive (meaningful once stopped)."""
        ...

    async def close(self) -> None: ...


class Worker:
    """Reads `consumers` (the topology's handles; several in priority order, highest first) for `stage`,
    which names its dead letters (`agents.dlq.<stage>`), logs and metrics."""

    def __init__(self, bus: Bus, stage: str, consumers: Sequence[ConsumerSpec], fetch: Fetch, settler: Settler, *,
                 concurrency: int = 1, batch_size: int = 1, grace_s: float | None = None) -> None:
        self.bus, self.stage, self.consumers, self.fetch, self.settler = bus, stage, tuple(consumers), fetch, settler
        self.concurrency, self.batch_size, self.grace_s = concurrency, batch_size, grace_s
        self.active: set[asyncio.Task[None]] = set()
        self.running = False  # readiness: true while the loop takes work

    @classmethod
    def of(cls, bus: Bus, stage: str, consumers: Sequence[ConsumerSpec], fetch: Fetch, handler: Handler, *,
           concurrency: int = 1, batch_size: int = 1, grace_s: float | None = None) -> Worker:
        """A worker with the plain settle rule (fixed backoff, no last words)."""
        settler = Settler(DeadLetters(bus, stage), handler, consumer=",".join(c.durable for c in consumers))
        return cls(bus, stage, consumers, fetch, settler, concurrency=concurrency, batch_size=batch_size,
                   grace_s=grace_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then hand back what is in transit and drain the running jobs."""
        await self._run(stop, until_idle=False)

    async def run_until_idle(self) -> None:
        """Work until the consumers have nothing pending or unacknowledged and no job runs."""
        await self._run(asyncio.Event(), until_idle=True)

    async def _run(self, stop: asyncio.Event, *, until_idle: bool) -> None:
        await self.fetch.open(self.bus.js, self.consumers)
        try:
            self.running = True
            try:
                leftover = await self._loop(stop, until_idle)
            finally:
                self.running = False  # not ready once the loop ended, however it ended
            await self._drain(leftover)
        finally:
            await self.fetch.close()

    async def _loop(self, stop: asyncio.Event, until_idle: bool) -> list[Msg]:
        """Fetch and start jobs until stopped (or idle); returns what a fetch brought after the stop."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = self.concurrency - len(self.active)
                if free <= 0:
                    await asyncio.wait({*self.active, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                msgs = await self._fetch(free * self.batch_size, stop)
                if stop.is_set():  # stopped during the fetch: not ours to start
                    return msgs
                if not msgs and until_idle and not self.active and await self._idle():
                    return []
                for first in range(0, len(msgs), self.batch_size):
                    self._start(msgs[first:first + self.batch_size])
        finally:
            stopping.cancel()
        return []

    async def _fetch(self, room: int, stop: asyncio.Event) -> list[Msg]:
        try:
            return await self.fetch.next(room)
        except Exception as exc:  # reconnecting, a leader election: back off, keep going
            log.warning("fetch failed", extra={"stage": self.stage, "error": repr(exc)[:300]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FETCH_RETRY_S)
            return []

    def _start(self, job: Sequence[Msg]) -> None:
        task = asyncio.create_task(self.settler.handle(job))
        self.active.add(task)
        task.add_done_callback(self.active.discard)

    async def _idle(self) -> bool:
        for consumer in self.consumers:
            info = await self.bus.js.consumer_info(consumer.stream, consumer.durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async def _drain(self, leftover: list[Msg]) -> None:
        """Hand back what is still on its way (once nothing more can arrive), then let the running jobs
        finish within the grace period."""
        self.fetch.stop()
        while not self.fetch.drained:
            leftover += await self._fetch(self.concurrency * self.batch_size, asyncio.Event())
        await _hand_back(leftover)
        if not self.active:
            return
        log.info("draining", extra={"stage": self.stage, "active": len(self.active), "grace_s": self.grace_s})
        _, unfinished = await asyncio.wait(set(self.active), timeout=self.grace_s)
        for task in unfinished:
            task.cancel()  # the settler hands its messages back
        if unfinished:
            await asyncio.wait(unfinished)


async def _hand_back(msgs: list[Msg]) -> None:
    for msg in msgs:
        await nak_quietly(msg)


class Batches:
    """One durable, plain batches of up to `batch` messages; an empty fetch waits up to `wait_s`."""

    def __init__(self, *, batch: int, wait_s: float) -> None:
        self.batch, self.wait_s = batch, wait_s
        self._sub: JetStreamContext.PullSubscription | None = None

    async def open(self, js: JetStreamContext, consumers: Sequence[ConsumerSpec]) -> None:
        (consumer,) = consumers
        self._sub = await js.pull_subscribe_bind(consumer.durable, consumer.stream)

    async def next(self, room: int) -> list[Msg]:
        assert self._sub is not None
        try:
            return await self._sub.fetch(min(room, self.batch), timeout=self.wait_s)
        except TimeoutError:  # nats.errors.TimeoutError is one, and so is an asyncio timeout inside fetch
            return []

    def stop(self) -> None:
        pass

    @property
    def drained(self) -> bool:
        return True  # a fetch is a request and its answer: nothing is left on its way

    async def close(self) -> None:
        await _unsubscribe(self._sub)


class PriorityRounds:
    """Durables in priority order, highest first: each round takes quick looks in that order, but every
    `low_share`-th round the lowest goes first, so it is never starved. When all are empty the round
    waits on the highest, so urgent work reaching an idle worker starts at once (a long wait on the
    lowest delayed it by up to `idle_wait_s`)."""

    def __init__(self, *, low_share: int, busy_wait_s: float, idle_wait_s: float) -> None:
        self.low_share, self.busy_wait_s, self.idle_wait_s = low_share, busy_wait_s, idle_wait_s
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._rounds = itertools.count()

    async def open(self, js: JetStreamContext, consumers: Sequence[ConsumerSpec]) -> None:
        self._subs = [await js.pull_subscribe_bind(c.durable, c.stream) for c in consumers]

    async def next(self, room: int) -> list[Msg]:
        order = self._subs if next(self._rounds) % self.low_share else [self._subs[-1], *self._subs[:-1]]
        for sub, wait_s in [(sub, self.busy_wait_s) for sub in order] + [(self._subs[0], self.idle_wait_s)]:
            try:
                msgs = await sub.fetch(room, timeout=wait_s)
            except TimeoutError:
                continue
            if msgs:
                return msgs
        return []

    def stop(self) -> None:
        pass

    @property
    def drained(self) -> bool:
        return True

    async def close(self) -> None:
        for sub in self._subs:
            await _unsubscribe(sub)


async def _unsubscribe(sub: JetStreamContext.PullSubscription | None) -> None:
    # However the loop ended (a restart after it died, too): a subscription left behind holds what its
    # last fetch brought, and the connection's drain then waits out its timeout on it.
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

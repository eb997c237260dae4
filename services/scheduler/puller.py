"""A partition's pull consumer read as a stream: one pull request kept outstanding, batches as they come.

`sub.fetch(n, timeout)` costs a pull request and an end-of-batch status per call, and once one
message arrived it waits for the rest of its batch (up to the timeout) or for the server's
"no more" status: at a few messages per partition per fetch that is most of the work, and batches
stay tiny. Here one request for up to `batch` messages (expiring after `expires_s`) is outstanding
at a time; the messages land in a local buffer, and `next_batch` hands over everything buffered at
once, so a busy partition gets big batches and an idle one answers in one network hop.

Stopping: no new request is made, and the outstanding one is read to its end (a status, or its
expiry) before the buffer is reported drained, so no message is left in transit to a closed inbox
(which would wait out the consumer's `ack_wait` before redelivery).

`PartitionFetch` is a partition as the shared worker's fetch strategy (`runtime.worker.Fetch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from services.scheduler.partitions import original_subject
from streams.topology import ConsumerSpec

# A request ends with one of these statuses (408 expired, 409 e.g. leadership change, 404 no messages);
# 100 is an idle heartbeat (not asked for) and leaves the request running.
_ENDING_STATUSES = {"404", "408", "409"}
# Loop turns a batch may wait for messages that are already on their way (see `_gather_more`).
_GATHER_ROUNDS = 32
# How long past its expiry an unanswered request counts as lost (a reconnect drops requests silently).
_LOST_AFTER_S = 1.0
# While this replica's lease on the partition may have lapsed, it looks again this often.
OWNERSHIP_RECHECK_S = 0.1


class Puller:
    def __init__(self, nc: NatsClient, stream: str, durable: str, *, batch: int, expires_s: float) -> None:
        self.nc, self.batch, self.expires_s = nc, batch, expires_s
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._buffer: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None
        self._owed = 0  # messages the outstanding request may still deliver (0: none outstanding)
        self._ends_at = 0.0
        self.pulling = True

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is None:
            if not (msg.reply or "").startswith("$JS.ACK."):
                return  # not a JetStream delivery: someone else published to our inbox; not ours to handle
            self._buffer.append(msg)
            self._owed = max(0, self._owed - 1)
        elif status in _ENDING_STATUSES:
            self._owed = 0
        else:
            return
        self._arrived.set()

    @property
    def outstanding(self) -> bool:
        if self._owed and time.monotonic() > self._ends_at + _LOST_AFTER_S:
            self._owed = 0  # never answered: gone with a reconnect
        return self._owed > 0

    @property
    def drained(self) -> bool:
        """Nothing buffered and nothing more can arrive (meaningful once `pulling` is off)."""
        return not self._buffer and not self.outstanding

    async def _pull(self) -> None:
        request = {"batch": self.batch, "expires": int(self.expires_s * 1e9)}
        self._owed, self._ends_at = self.batch, time.monotonic() + self.expires_s
        await self.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def next_batch(self, wait_s: float) -> list[Msg]:
        """Everything buffered (at most `batch`); waits up to `wait_s` for the first message."""
        if self.pulling and not self.outstanding:
            await self._pull()
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)
        await self._gather_more()
        taken = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
        if self.pulling and not self.outstanding:
            await self._pull()  # ask for more now: it arrives while this batch is being handled
        return taken

    async def _gather_more(self) -> None:
        """While the server reports more messages behind the last one (a backlog), let those already on
        the wire land first: one big batch costs far less than many small ones (state writes, waits).
        Without a backlog this returns at once, so latency is untouched."""
        for _ in range(_GATHER_ROUNDS):
            size = len(self._buffer)
            if not size or size >= self.batch or not self._owed or not _backlog_behind(self._buffer[-1]):
                return
            await asyncio.sleep(0)  # one loop turn: the socket is read and our callback fills the buffer
            if len(self._buffer) == size:
                return

    async def close(self) -> None:
        """Stop reading; anything still buffered (a partition given up in a hurry) is handed back at once
        rather than after the consumer's ack_wait."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        while self._buffer:
            with contextlib.suppress(Exception):
                await self._buffer.popleft().nak()


def _backlog_behind(msg: Msg) -> bool:
    """The consumer's `num_pending` when this message left, from its ack subject (the last token of
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or the 11th of the form
    with domain and account hash): more messages were waiting behind it."""
    tokens = (msg.reply or "").split(".")
    pending = tokens[8] if len(tokens) == 9 else tokens[10] if len(tokens) in (11, 12) else "0"
    return pending.isdigit() and int(pending) > 0


class PartitionFetch:
    """A partition read by the shared worker: its `Puller`, taking nothing while this replica's lease on
    the partition may have lapsed (`owned()` false), and each message under its original subject."""

    def __init__(self, nc: NatsClient, *, batch: int, expires_s: float, owned: Callable[[], bool]) -> None:
        self.nc, self.batch, self.expires_s, self.owned = nc, batch, expires_s, owned
        self._puller: Puller | None = None

    async def open(self, js: JetStreamContext, consumers: Sequence[ConsumerSpec]) -> None:
        (consumer,) = consumers
        self._puller = Puller(self.nc, consumer.stream, consumer.durable, batch=self.batch, expires_s=self.expires_s)
        await self._puller.start()

    async def next(self, room: int) -> list[Msg]:
        assert self._puller is not None
        if not self.owned():
            # Our lease renewal is late (a stalled loop?): take nothing we might not own.
            await asyncio.sleep(OWNERSHIP_RECHECK_S)
            return []
        # Decoded and dead-lettered by the original subject (the partition prefix is ours).
        return [_unprefixed(msg) for msg in await self._puller.next_batch(self.expires_s)]

    def stop(self) -> None:
        if self._puller is not None:
            self._puller.pulling = False

    @property
    def drained(self) -> bool:
        # No longer ours: what is still on its way is for the new owner (it comes back after ack_wait).
        return self._puller is None or self._puller.drained or not self.owned()

    async def close(self) -> None:
        if self._puller is not None:
            await self._puller.close()


def _unprefixed(msg: Msg) -> Msg:
    """The message under its original subject (in place: a copy per message showed in profiles; the reply
    subject, which acks use, is untouched)."""
    msg.subject = original_subject(msg.subject)
    return msg

"""The consumer loop every stage uses, and dead-lettering.

A stage's handler gets each fetched batch of decoded payloads at once. It returns to have the batch
acknowledged (after `Item.reject(reason)` dead-letters single items), or raises `Retry(delay_s)` to
have it redelivered later. Undecodable payloads never reach it: they go to the DLQ with the bad
field's path. Any other exception is logged and the batch redelivered; past the delivery cap a
message is dead-lettered. A consumer never crashes or stalls on bad input (SPEC §5).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from prometheus_client import Counter

from botburrow.runtime.bus import Bus
from botburrow.schemas.codec import DecodeError, decode_subject
from botburrow.schemas.events import DeadLetter
from botburrow.secrets import redact
from botburrow.streams import subjects
from botburrow.streams.topology import MAX_DELIVERIES

log = logging.getLogger(__name__)

PROCESSED = Counter("botburrow_messages_processed_total", "Messages handled and acknowledged", ["stage", "consumer"])
FAILED = Counter("botburrow_messages_failed_total", "Handler failures that were retried", ["stage", "consumer"])
DEAD_LETTERED = Counter("botburrow_messages_dead_lettered_total", "Messages copied to the DLQ", ["stage", "reason"])

_SECRET_HEADERS = {"authorization", "x-api-key", "nats-creds"}


class Retry(Exception):
    """Redeliver this message after `delay_s` (counts as a delivery)."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay_s:.1f}s")
        self.delay_s = delay_s


class DeadLetters:
    def __init__(self, bus: Bus, stage: str) -> None:
        self.bus, self.stage = bus, stage

    async def send(self, msg: Msg, reason: str, *, path: str | None = None, category: str = "rejected") -> None:
        """Copy `msg` to `agents.dlq.<stage>` with its reason; the caller then acknowledges it."""
        meta = _metadata(msg)
        try:
            text, encoding = msg.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(msg.data).decode("ascii"), "base64"
        headers = {k: redact(v) for k, v in (msg.headers or {}).items() if k.lower() not in _SECRET_HEADERS}
        letter = DeadLetter(
            stage=self.stage,
            reason=redact(reason)[:4096],
            error_path=path,
            subject=msg.subject,
            stream=meta.get("stream", ""),
            seq=meta.get("seq", 0),
            deliveries=meta.get("deliveries", 0),
            payload=redact(text) if encoding == "utf-8" else text,
            payload_encoding=encoding,
            headers=headers,
        )
        msg_id = f"dlq:{letter.stream}:{letter.seq}" if letter.seq else None
        await self.bus.publish(subjects.dlq(self.stage), letter, msg_id=msg_id)
        DEAD_LETTERED.labels(self.stage, category).inc()
        log.warning("dead-lettered", extra={"subject": msg.subject, "seq": letter.seq, "category": category,
                                            "reason": letter.reason[:200]})


def _metadata(msg: Msg) -> dict[str, Any]:
    try:
        meta = msg.metadata
    except Exception:  # not a JetStream message (e.g. a core NATS test message)
        return {}
    return {"stream": meta.stream, "seq": meta.sequence.stream, "deliveries": meta.num_delivered}


def _deliveries(msg: Msg) -> int:
    """`metadata.num_delivered` read straight from the ack subject: the full parse (objects, a datetime)
    is a visible share of a busy consumer's time. `$JS.ACK.<stream>.<consumer>.<delivered>.…` (9 tokens)
    or, with domain and account hash, `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.…`."""
    tokens = (msg.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"] and len(tokens) in (9, 11, 12):
        delivered = tokens[4 if len(tokens) == 9 else 6]
        if delivered.isdigit():
            return int(delivered)
    return int(_metadata(msg).get("deliveries", 1))


class Item:
    """One message of a batch: its decoded payload, and a way to dead-letter it alone."""

    __slots__ = ("msg", "path", "payload", "rejected")

    def __init__(self, msg: Msg, payload: Any) -> None:
        self.msg, self.payload = msg, payload
        self.rejected: str | None = None
        self.path: str | None = None

    def reject(self, reason: str, path: str | None = None) -> None:
        self.rejected, self.path = reason, path


BatchHandler = Callable[[list[Item]], Awaitable[None]]


async def handle_batch(msgs: list[Msg], handler: BatchHandler, dlq: DeadLetters, *, consumer: str) -> None:
    """Decode a fetched batch, give the valid ones to `handler` at once, then settle every message.

    The handler does all its side effects (publishes, KV writes) before returning; only then is the
    batch acknowledged, so a crash in between redelivers it, and idempotent handlers absorb that.
    """
    items: list[Item] = []
    for msg in msgs:
        deliveries = _deliveries(msg)
        if deliveries > MAX_DELIVERIES:
            await dlq.send(msg, f"gave up after {deliveries - 1} deliveries", category="exhausted")
            await msg.ack()
            continue
        try:
            items.append(Item(msg, decode_subject(msg.subject, msg.data)))
        except DecodeError as exc:
            await dlq.send(msg, f"invalid payload: {exc.reason}", path=exc.path, category="invalid")
            await msg.ack()
    if not items:
        return
    try:
        await handler(items)
    except Retry as exc:
        for item in items:
            await item.msg.nak(delay=exc.delay_s)
        return
    except Exception:
        FAILED.labels(dlq.stage, consumer).inc(len(items))
        log.exception("batch handler failed", extra={"consumer": consumer, "size": len(items)})
        for item in items:
            await item.msg.nak(delay=1.0)
        return
    for item in items:
        if item.rejected is not None:
            await dlq.send(item.msg, item.rejected, path=item.path)
        await item.msg.ack()
    PROCESSED.labels(dlq.stage, consumer).inc(len(items))


async def consume_batches(
    bus: Bus,
    *,
    stage: str,
    stream: str,
    durable: str,
    handler: BatchHandler,
    stop: asyncio.Event,
    batch: int = 500,
    fetch_timeout_s: float = 0.5,
) -> None:
    """Like `consume`, but the handler sees each fetched batch at once (for stages that batch writes)."""
    dlq = DeadLetters(bus, stage)
    sub = await bus.js.pull_subscribe_bind(durable, stream)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError is one, and so is an asyncio timeout inside fetch
            continue
        except Exception as exc:  # APIError, a connection being re-established: back off, keep going
            log.warning("fetch failed", extra={"consumer": durable, "error": repr(exc)})
            await asyncio.sleep(1)
            continue
        await handle_batch(msgs, handler, dlq, consumer=durable)
    await sub.unsubscribe()

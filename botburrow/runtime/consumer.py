"""The consumer loop every stage uses, and dead-lettering.

A stage's handler gets each fetched batch of decoded payloads at once. It returns to have the batch
acknowledged (after `Item.reject(reason)` dead-letters single items), or raises `Retry(delay_s)` to
have it redelivered later. Undecodable payloads (whatever their bytes: see `codec.decode_subject`)
never reach it: they go to the DLQ with the reason and the bad field's path. Any other exception is
logged and the batch redelivered, its messages one by one when it was not NATS trouble (so one bad
message fails alone); past the delivery cap a message is dead-lettered with its last error. A
consumer never crashes or stalls on bad input (contract §5).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import nats.errors
from nats.aio.msg import Msg
from prometheus_client import Counter

from botburrow.runtime.bus import Bus
from botburrow.secrets import redact
from schemas.codec import DecodeError, decode_subject, encode
from schemas.events import DeadLetter
from streams import subjects
from streams.topology import MAX_DELIVERIES

log = logging.getLogger(__name__)

PROCESSED = Counter("botburrow_messages_processed_total", "Messages handled and acknowledged", ["stage", "consumer"])
FAILED = Counter("botburrow_messages_failed_total", "Handler failures that were retried", ["stage", "consumer"])
DEAD_LETTERED = Counter("botburrow_messages_dead_lettered_total", "Messages copied to the DLQ", ["stage", "reason"])

_SECRET_HEADERS = {"authorization", "x-api-key", "nats-creds"}
# A dead letter stays well under NATS's 1 MiB max payload, whatever the message it copies.
MAX_LETTER_BYTES = 768 << 10
LETTER_PAYLOAD_BYTES = 256 << 10
REASON_MAX_CHARS = 4096
PATH_MAX_CHARS = 1024
HEADER_MAX_CHARS = 1024
MAX_HEADERS = 64
NAK_DELAY_S = 1.0


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
        letter = dead_letter(self.stage, msg, reason, path)
        msg_id = f"dlq:{letter.stream}:{letter.seq}" if letter.seq else None
        await self.bus.publish(subjects.dlq(self.stage), letter, msg_id=msg_id)
        DEAD_LETTERED.labels(self.stage, category).inc()
        log.warning("dead-lettered", extra={"subject": letter.subject, "seq": letter.seq, "category": category,
                                            "reason": letter.reason[:200], "truncated": letter.payload_truncated})

    async def settle(self, msg: Msg, reason: str, *, path: str | None = None, category: str = "rejected") -> None:
        """Dead-letter and acknowledge `msg`; if the letter cannot be written (NATS trouble), hand the
        message back for later instead. Never raises: a consumer goes on whatever happens here."""
        try:
            await self.send(msg, reason, path=path, category=category)
            await msg.ack()
        except Exception as exc:
            log.warning("dead letter not written, message handed back",
                        extra={"subject": msg.subject[:200], "error": repr(exc)[:300]})
            await nak_quietly(msg, NAK_DELAY_S)


def dead_letter(stage: str, msg: Msg, reason: str, path: str | None) -> DeadLetter:
    """The letter for `msg`, secrets removed, small enough for NATS's max payload whatever `msg` held:
    a large payload is cut (the letter says so, and its stream and seq point at the whole message)."""
    meta = _metadata(msg)
    headers = dict(itertools.islice(
        ((k[:HEADER_MAX_CHARS], redact(v[:HEADER_MAX_CHARS])) for k, v in (msg.headers or {}).items()
         if k.lower() not in _SECRET_HEADERS), MAX_HEADERS))
    keep = LETTER_PAYLOAD_BYTES
    while True:
        payload, encoding = _payload_text(msg.data, keep)
        letter = DeadLetter(
            stage=stage, reason=redact(reason[:REASON_MAX_CHARS + 1024])[:REASON_MAX_CHARS],
            error_path=None if path is None else path[:PATH_MAX_CHARS], subject=msg.subject,
            stream=meta.get("stream", ""), seq=meta.get("seq", 0), deliveries=meta.get("deliveries", 0),
            payload=payload, payload_encoding=encoding, headers=headers,
            payload_truncated=keep < len(msg.data), payload_bytes=len(msg.data))
        # JSON escaping can make a letter up to six times its payload (control characters): cut further.
        if keep == 0 or len(encode(letter)) <= MAX_LETTER_BYTES:
            return letter
        keep //= 2


def _payload_text(data: bytes, keep: int) -> tuple[str, Literal["utf-8", "base64"]]:
    """The first `keep` bytes of `data` as text (base64 when not UTF-8), secrets redacted either way."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # surrogateescape keeps the undecodable bytes as they were while the secrets are replaced.
        raw = data[:keep].decode("utf-8", "surrogateescape")
        cleaned = redact(raw).encode("utf-8", "surrogateescape")
        return base64.b64encode(cleaned).decode("ascii"), "base64"
    if len(data) <= keep:
        return redact(text), "utf-8"
    cut = data[:keep].decode("utf-8", "ignore")
    # A secret straddling the cut must be recognised whole before the cut drops its end.
    return redact(text[:len(cut) + 4096])[:len(cut)], "utf-8"


async def nak_quietly(msg: Msg, delay_s: float | None = None) -> None:
    """Hand a message back; if even that fails (connection gone), the server redelivers after ack_wait."""
    try:
        await msg.nak(delay=delay_s)
    except Exception as exc:
        log.warning("nak failed", extra={"subject": msg.subject[:200], "error": repr(exc)[:200]})


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
    Never raises (but for cancellation): whatever a message holds, the consumer goes on.
    """
    items = [item for item in [await _admit(msg, dlq) for msg in msgs] if item is not None]
    if not items:
        return
    failure = await _run(items, handler, dlq, consumer)
    if failure is None:
        return
    if len(items) == 1 or _is_infrastructure(failure):
        await _hand_back(items, failure)
        return
    # A failure that is not NATS trouble may be one message's doing (a handler bug its content
    # triggers): each is tried alone, so that one cannot take its batch-mates down with it.
    log.warning("batch failed, handling its messages one by one",
                extra={"consumer": consumer, "size": len(items), "error": _describe(failure)})
    for index, item in enumerate(items):
        item.rejected = item.path = None
        again = await _run([item], handler, dlq, consumer)
        if again is not None and _is_infrastructure(again):
            await _hand_back(items[index:], again)
            return
        if again is not None:
            await _hand_back([item], again)


async def _hand_back(items: list[Item], exc: Exception) -> None:
    """Redeliver later; past the delivery cap the message is dead-lettered with this error as the reason."""
    for item in items:
        _remember(item.msg, _describe(exc))
        await nak_quietly(item.msg, NAK_DELAY_S)


async def _admit(msg: Msg, dlq: DeadLetters) -> Item | None:
    """The message as an Item, or None once it was settled here (exhausted, or undecodable)."""
    deliveries = _deliveries(msg)
    if deliveries > MAX_DELIVERIES:
        last = _last_errors.pop(_key(msg), None)
        reason = f"gave up after {deliveries - 1} deliveries" + (f": {last}" if last else "")
        await dlq.settle(msg, reason, category="exhausted")
        return None
    try:
        return Item(msg, decode_subject(msg.subject, msg.data))
    except DecodeError as exc:
        await dlq.settle(msg, f"invalid payload: {exc.reason}", path=exc.path, category=exc.kind)
        return None


async def _run(items: list[Item], handler: BatchHandler, dlq: DeadLetters, consumer: str) -> Exception | None:
    """Hand `items` to the handler and settle them; returns the handler's failure (then they are unsettled)."""
    try:
        await handler(items)
    except Retry as exc:
        for item in items:
            await nak_quietly(item.msg, exc.delay_s)
        return None
    except Exception as exc:
        FAILED.labels(dlq.stage, consumer).inc(len(items))
        log.error("batch handler failed", exc_info=not _is_infrastructure(exc),
                  extra={"consumer": consumer, "size": len(items), "error": _describe(exc)})
        return exc
    for item in items:
        if item.rejected is not None:
            await dlq.settle(item.msg, item.rejected, path=item.path)
            continue
        try:
            await item.msg.ack()
        except Exception as exc:  # the connection went: the server redelivers, idempotent handlers absorb it
            log.warning("ack failed", extra={"consumer": consumer, "error": repr(exc)[:200]})
    PROCESSED.labels(dlq.stage, consumer).inc(len(items))
    return None


# NATS trouble (a restart, a leader election): every message of a batch would fail alike. A payload too
# big to publish is the content's doing, not the server's.
def _is_infrastructure(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.Error | OSError | ConnectionError) and not isinstance(
        exc, nats.errors.MaxPayloadError)


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:500]


# The last handler error of each message that failed, for the reason of its dead letter once its
# deliveries are exhausted ("gave up after 5 deliveries" alone told an operator nothing).
_last_errors: OrderedDict[tuple[str, int], str] = OrderedDict()
_LAST_ERRORS_KEPT = 10_000


def _key(msg: Msg) -> tuple[str, int]:
    meta = _metadata(msg)
    return meta.get("stream", ""), meta.get("seq", 0)


def _remember(msg: Msg, error: str) -> None:
    key = _key(msg)
    _last_errors[key] = error
    _last_errors.move_to_end(key)
    while len(_last_errors) > _LAST_ERRORS_KEPT:
        _last_errors.popitem(last=False)


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
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
            except TimeoutError:  # nats.errors.TimeoutError is one, and so is an asyncio timeout inside fetch
                continue
            except Exception as exc:  # APIError, a connection being re-established: back off, keep going
                log.warning("fetch failed", extra={"consumer": durable, "error": repr(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            await handle_batch(msgs, handler, dlq, consumer=durable)
    finally:
        # However the loop ended (a restart after it died, too): a subscription left behind holds what its
        # last fetch brought, and the connection's drain then waits out its timeout on it.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

"""The settle rule every consumer keeps (`Settler`), and dead-lettering (`DeadLetters`).

A stage's handler gets a job of decoded payloads (`Item`s) at once. Then, one rule:
- it returns: the job is done, each message acknowledged (`Item.reject(reason)` dead-letters one
  first, then acknowledges it);
- it raises `Retry(delay_s)`: every message is handed back (`nak`) with that delay;
- a message whose payload is undecodable (whatever its bytes: see `codec.decode_subject`) never
  reaches it: dead letter with the reason and the bad field's path, then ack; so is one past its
  delivery cap (over-delivered), with its last error;
- it crashes: logged, and the job handed back with the consumer's backoff, its messages one by one
  when it was not NATS trouble (so one bad message fails alone);
- it is cancelled (a stop past its grace): its messages are handed back at once, for another worker.
A consumer never crashes or stalls on bad input (contract §5). `worker.Worker` runs the loop around it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import nats.errors
from nats.aio.msg import Msg
from prometheus_client import Counter

from botburrow.runtime.bus import Bus
from botburrow.runtime.election import is_transient, ride_out
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
ACK_RIDE_OUT_S = 15.0


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
    """One message of a job: its decoded payload, and a way to dead-letter it alone."""

    __slots__ = ("category", "msg", "path", "payload", "rejected")

    def __init__(self, msg: Msg, payload: Any) -> None:
        self.msg, self.payload = msg, payload
        self.rejected: str | None = None
        self.path: str | None = None
        self.category = "rejected"

    @property
    def deliveries(self) -> int:
        return _deliveries(self.msg)

    def reject(self, reason: str, path: str | None = None, *, category: str = "rejected") -> None:
        self.rejected, self.path, self.category = reason, path, category


Handler = Callable[[list[Item]], Awaitable[None]]
# The nak delay of a crashed job, from its messages' delivery count.
Backoff = Callable[[int], float]
# Called for a message past its delivery cap with the reason it is given up, before its dead letter;
# False when it needs none (it had ended already): it is then only acknowledged.
LastWords = Callable[[Item, str], Awaitable[bool]]


def fixed_backoff(deliveries: int) -> float:
    return NAK_DELAY_S


class Settler:
    """The settle rule of one consumer (see the module docstring), around its handler."""

    def __init__(self, dlq: DeadLetters, handler: Handler, *, consumer: str, backoff_s: Backoff = fixed_backoff,
                 confirm_acks: bool = False, last_words: LastWords | None = None) -> None:
        self.dlq, self.handler, self.consumer = dlq, handler, consumer
        self.backoff_s, self.confirm_acks, self.last_words = backoff_s, confirm_acks, last_words

    async def handle(self, msgs: Sequence[Msg]) -> None:
        """Decode a job, give the valid messages to the handler at once, then settle every one.

        The handler does all its side effects (publishes, KV writes) before returning; only then is the
        job acknowledged, so a crash in between redelivers it, and idempotent handlers absorb that.
        Never raises (but for cancellation): whatever a message holds, the consumer goes on.
        """
        items = [item for item in [await self._admit(msg) for msg in msgs] if item is not None]
        if not items:
            return
        failure = await self._run(items)
        if failure is None:
            return
        if len(items) == 1 or _is_infrastructure(failure):
            await self._hand_back(items, failure)
            return
        # A failure that is not NATS trouble may be one message's doing (a handler bug its content
        # triggers): each is tried alone, so that one cannot take its batch-mates down with it.
        log.warning("batch failed, handling its messages one by one",
                    extra={"consumer": self.consumer, "size": len(items), "error": _describe(failure)})
        for index, item in enumerate(items):
            item.rejected = item.path = None
            again = await self._run([item])
            if again is not None and _is_infrastructure(again):
                await self._hand_back(items[index:], again)
                return
            if again is not None:
                await self._hand_back([item], again)

    async def _admit(self, msg: Msg) -> Item | None:
        """The message as an Item, or None once it was settled here (undecodable, or over-delivered)."""
        try:
            item = Item(msg, decode_subject(msg.subject, msg.data))
        except DecodeError as exc:
            await self.dlq.settle(msg, f"invalid payload: {exc.reason}", path=exc.path, category=exc.kind)
            return None
        deliveries = item.deliveries
        if deliveries <= MAX_DELIVERIES:
            return item
        last = _last_errors.pop(_key(msg), None)
        reason = f"gave up after {deliveries - 1} deliveries" + (f": {last}" if last else "")
        try:
            needs_letter = self.last_words is None or await self.last_words(item, reason)
        except Exception as exc:  # its last words (a `failed` event) could not be written: try again later
            await self._hand_back([item], exc)
            return None
        if needs_letter:
            await self.dlq.settle(msg, reason, category="exhausted")
        else:
            await self._ack(item)
        return None

    async def _run(self, items: list[Item]) -> Exception | None:
        """Hand `items` to the handler and settle them; returns the handler's failure (then they are unsettled)."""
        try:
            await self.handler(items)
        except Retry as exc:
            for item in items:
                await nak_quietly(item.msg, exc.delay_s)
            return None
        except asyncio.CancelledError:  # stopping past the grace period: another worker takes them now
            for item in items:
                if not item.msg.is_acked:
                    await nak_quietly(item.msg)
            raise
        except Exception as exc:
            FAILED.labels(self.dlq.stage, self.consumer).inc(len(items))
            log.error("handler failed", exc_info=not _is_infrastructure(exc),
                      extra={"consumer": self.consumer, "size": len(items), "error": _describe(exc)})
            return exc
        for item in items:
            if item.rejected is not None:
                await self.dlq.settle(item.msg, item.rejected, path=item.path, category=item.category)
            else:
                await self._ack(item)
        PROCESSED.labels(self.dlq.stage, self.consumer).inc(len(items))
        return None

    async def _ack(self, item: Item) -> None:
        try:
            # Confirmed where a lost ack would cost a whole re-run (the runner: an activation), and
            # ridden out through an election of the consumer's leader: given up, the message came back
            # only after its ack wait (60 s for the runner), holding its agent's next notifications.
            if self.confirm_acks:
                await ride_out(item.msg.ack_sync, bound_s=ACK_RIDE_OUT_S, what="ack")
            else:
                await item.msg.ack()
        except Exception as exc:  # the connection went: the server redelivers, idempotent handlers absorb it
            log.warning("ack failed", extra={"consumer": self.consumer, "error": repr(exc)[:200]})

    async def _hand_back(self, items: list[Item], exc: Exception) -> None:
        """Redeliver after the backoff; past the delivery cap the message is dead-lettered with this error."""
        for item in items:
            _remember(item.msg, _describe(exc))
            await nak_quietly(item.msg, self.backoff_s(item.deliveries))


# NATS trouble (a restart, a leader election: `election.is_transient`): every message of a batch would
# fail alike. A payload too big to publish is the content's doing, not the server's.
def _is_infrastructure(exc: BaseException) -> bool:
    return (is_transient(exc) or isinstance(exc, nats.errors.Error | OSError | ConnectionError)) and not isinstance(
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

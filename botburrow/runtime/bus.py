"""The one NATS connection of a process, and the one way to publish a payload.

`Bus.publish` encodes a msgspec struct, sets `Nats-Msg-Id` (deterministic, for dedup), `Event-Type`
and `Trace-Id`, and rides out the transient failures JetStream has (no responders or a 503 during a
leader election, a timeout right after a reconnect) inside a bound (`election.ride_out`).

`Bus.connect` fails fast at start: a malformed `NATS_URL` at once, servers that do not answer within
`START_CONNECT_S`; either way `NatsUnavailable` carries the one line to print (credentials dropped).
Once connected, a lost connection is reconnected forever, to any server of the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KeyValue

from botburrow.runtime.election import ride_out
from botburrow.secrets import redact, without_credentials
from botburrow.tracing import message_headers
from schemas.codec import encode
from streams.permissions import inbox_prefix

log = logging.getLogger(__name__)
# At start, how long the servers of NATS_URL may take to answer: a process still waiting after this
# says so and exits (its supervisor starts it again), well inside the 30 s a newcomer waits.
START_CONNECT_S = 20.0
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


class NatsUnavailable(ConnectionError):
    """NATS_URL is malformed, or none of its servers answered at start; the message is one printable line."""


def servers_of(url: str) -> list[str]:
    """The servers of a comma-separated NATS_URL; NatsUnavailable naming the setting if one is not a URL."""
    servers = [server.strip() for server in url.split(",") if server.strip()]
    bad = [server for server in servers if not _is_nats_url(server)]
    if not servers or bad:
        shown = without_credentials(", ".join(bad) if bad else url)
        raise NatsUnavailable(f"NATS_URL: {shown!r} is not a NATS server URL; want nats://host:port "
                              f"(or {', '.join(s + '://' for s in NATS_SCHEMES[1:])}), several comma-separated")
    return servers


def _url_user(servers: list[str]) -> tuple[str | None, str | None]:
    """`user` and `password` of the first server URL that carries them (none: None, None)."""
    for server in servers:
        parts = urlsplit(server)
        if parts.username and parts.password:
            return unquote(parts.username), unquote(parts.password)
    return None, None


def _is_nats_url(server: str) -> bool:
    try:
        parts = urlsplit(server)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in NATS_SCHEMES and bool(parts.hostname)


def event_type(payload: msgspec.Struct) -> str:
    """The `Event-Type` header: the struct's tag if it has one, else its class name."""
    tag = type(payload).__struct_config__.tag
    return tag if isinstance(tag, str) else type(payload).__name__


class Bus:
    def __init__(self, nc: NatsClient, js: JetStreamContext) -> None:
        self.nc, self.js = nc, js
        self._buckets: dict[str, KeyValue] = {}
        self._closing = asyncio.Event()

    @classmethod
    async def connect(cls, url: str, *, name: str, creds: str | None = None, connect_timeout_s: int = 5,
                      give_up_s: float = START_CONNECT_S) -> Bus:
        """Connect to any server of `url`, trying them in turn for up to `give_up_s` (NatsUnavailable
        after that, or at once if `url` is malformed); reconnects forever once connected."""
        servers = servers_of(url)
        user, password = _url_user(servers)
        tried: list[str] = []  # why each attempt failed, for the one line; no log line per attempt
        nc = NatsClient()
        # Set once connected (before, failures are only collected), and when closing on purpose (no news).
        up, closing = asyncio.Event(), asyncio.Event()

        async def on_error(exc: Exception) -> None:
            if up.is_set():
                log.warning("nats error", extra={"error": repr(exc)})
            else:
                tried.append(f"{type(exc).__name__}: {exc}".strip().rstrip(":"))

        async def on_disconnect() -> None:
            if up.is_set() and not closing.is_set():
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        try:
            # max_reconnect_attempts=-1 makes nats-py's first connect try forever too: the bound is ours.
            await asyncio.wait_for(nc.connect(
                servers=servers, name=name, user_credentials=creds, connect_timeout=connect_timeout_s,
                max_reconnect_attempts=-1, reconnect_time_wait=1, error_cb=on_error,
                disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                # A user's replies come to its own inboxes, the only ones its NATS permissions let it read.
                inbox_prefix=inbox_prefix(url),
                # For every server, the ones a cluster announces too: nats-py adds those without the URL's
                # user and password, and each reconnect to one was an "Authorization Violation".
                user=user, password=password,
            ), give_up_s)
        except BaseException as exc:  # a timeout, a cancellation (a stop while connecting): nothing left open
            await nc.close()
            if isinstance(exc, TimeoutError):
                last = f"; last error: {redact(tried[-1])}" if tried else ""
                raise NatsUnavailable(f"NATS_URL: no server answered within {give_up_s:.0f} s "
                                      f"(tried {without_credentials(','.join(servers))}, {len(tried)} attempt(s)"
                                      f"{last}); is nats-server running there?") from None
            raise
        up.set()
        bus = cls(nc, nc.jetstream())
        bus._closing = closing
        return bus

    async def kv(self, bucket: str) -> KeyValue:
        """The bucket, its reads answered by its stream's leader (`direct=False`). On a cluster a direct
        get is answered by the nearest replica, which may lag (a node back from an outage): a reply
        marker or an agent's state it had not seen yet let a runner post twice (the cluster soak)."""
        if bucket not in self._buckets:
            found = await ride_out(lambda: self.js.key_value(bucket), what=f"bucket {bucket}")
            self._buckets[bucket] = KeyValue(name=found._name, stream=found._stream, pre=found._pre, js=self.js,
                                             direct=False)
        return self._buckets[bucket]

    async def publish(
        self,
        subject: str,
        payload: msgspec.Struct | bytes,
        *,
        msg_id: str | None = None,
        trace_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        data, all_headers = _message(payload, msg_id, trace_id, headers)
        # An election lasts seconds (4 retries over 1.5 s fell short on a cluster); the msg id makes a
        # retry of a publish that did land harmless.
        return await ride_out(lambda: self.js.publish(subject, data, headers=all_headers, timeout=5),
                              what=f"publish {subject}"[:200])

    async def publish_async(
        self,
        subject: str,
        payload: msgspec.Struct | bytes,
        *,
        msg_id: str | None = None,
        trace_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> asyncio.Future[PubAck]:
        """Pipelined `publish`: sent now, the PubAck comes in the future (many in flight, one round trip).

        No retries here: the caller bounds the wait (`asyncio.wait_for`) and redoes the whole lot, which
        the deterministic msg ids make harmless."""
        data, all_headers = _message(payload, msg_id, trace_id, headers)
        return await self.js.publish_async(subject, data, headers=all_headers)

    async def close(self) -> None:
        self._closing.set()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # the connection may already be gone; closing is best effort
                with contextlib.suppress(Exception):  # a lost socket cannot be flushed: nothing more to do
                    await self.nc.close()


def _message(payload: msgspec.Struct | bytes, msg_id: str | None, trace_id: str | None,
             headers: Mapping[str, str] | None) -> tuple[bytes, dict[str, str]]:
    data = payload if isinstance(payload, bytes) else encode(payload)
    # Trace-Id and the W3C traceparent naming the same trace (botburrow.tracing: derived ids).
    all_headers = message_headers(trace_id or uuid.uuid4().hex, msg_id)
    if not isinstance(payload, bytes):
        all_headers["Event-Type"] = event_type(payload)
    if msg_id:
        all_headers["Nats-Msg-Id"] = msg_id
    all_headers.update(headers or {})
    return data, all_headers


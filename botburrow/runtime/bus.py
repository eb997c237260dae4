"""The one NATS connection of a process, and the one way to publish a payload.

`Bus.publish` encodes a msgspec struct, sets `Nats-Msg-Id` (deterministic, for dedup), `Event-Type`
and `Trace-Id`, and retries the transient failures JetStream has (no responders during a leader
election, a timeout right after a reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from nats.js.kv import KeyValue

from schemas.codec import encode
from streams.permissions import inbox_prefix

log = logging.getLogger(__name__)
PUBLISH_ATTEMPTS = 4


def event_type(payload: msgspec.Struct) -> str:
    """The `Event-Type` header: the struct's tag if it has one, else its class name."""
    tag = type(payload).__struct_config__.tag
    return tag if isinstance(tag, str) else type(payload).__name__


class Bus:
    def __init__(self, nc: NatsClient, js: JetStreamContext) -> None:
        self.nc, self.js = nc, js
        self._buckets: dict[str, KeyValue] = {}

    @classmethod
    async def connect(cls, url: str, *, name: str, creds: str | None = None, connect_timeout_s: float = 5.0) -> Bus:
        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra={"error": repr(exc)})

        async def on_disconnect() -> None:
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        nc = await nats.connect(
            servers=[server.strip() for server in url.split(",")],
            name=name,
            user_credentials=creds,
            connect_timeout=connect_timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            # A user's replies come to its own inboxes, the only ones its NATS permissions let it read.
            inbox_prefix=inbox_prefix(url),
        )
        return cls(nc, nc.jetstream())

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._buckets:
            self._buckets[bucket] = await self.js.key_value(bucket)
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
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                return await self.js.publish(subject, data, headers=all_headers, timeout=5)
            except (NoStreamResponseError, NoRespondersError, NatsTimeoutError):
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                await asyncio.sleep(0.25 * attempt)
        raise AssertionError("unreachable")

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
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # the connection may already be gone; closing is best effort
                await self.nc.close()


def _message(payload: msgspec.Struct | bytes, msg_id: str | None, trace_id: str | None,
             headers: Mapping[str, str] | None) -> tuple[bytes, dict[str, str]]:
    data = payload if isinstance(payload, bytes) else encode(payload)
    all_headers = {"Trace-Id": trace_id or uuid.uuid4().hex}
    if not isinstance(payload, bytes):
        all_headers["Event-Type"] = event_type(payload)
    if msg_id:
        all_headers["Nats-Msg-Id"] = msg_id
    all_headers.update(headers or {})
    return data, all_headers

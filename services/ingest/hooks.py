"""The Hub's inbox ping (push): `POST /hooks/inbox/<agent>` on ingest's HTTP port, when HUB_WEBHOOKS is on.

A ping is `{"type":"inbox_update","agent_id":...,"unread_count":n}`, signed with the agent's webhook secret
(`SECRETS_DIR/webhook-<agent>`) as `botburrow.hub.webhook` says: HMAC-SHA256 over the timestamp and the
raw body, at most TOLERANCE_S old. A genuine ping is answered 202 `{"status":"processing"}` and wakes ingest
for that agent at once (`wake`: pings that come while a poll runs are coalesced into the next one);
polling goes on regardless, so a lost ping delays nothing beyond the polling interval.

Refused, each with one short answer that quotes nothing it was sent: an agent ingest does not know, or
one without a secret (404, the same answer for both), a body over MAX_BODY_BYTES (413), a bad or stale
signature (401), a signature already seen within the tolerance window, i.e. a replay (401; see
`SeenSignatures` for the one poll its first repeat earns), a body that is not an inbox_update (400).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from prometheus_client import Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botburrow.hub import webhook

log = logging.getLogger(__name__)

PATH = "/hooks/inbox/{agent}"
MAX_BODY_BYTES = 4096
# Signatures remembered for replay refusal: those of the last tolerance window (a timestamp may be up to
# TOLERANCE_S in the future too, hence twice), and no more than this many.
MAX_REMEMBERED = 100_000
LOG_EVERY_S = 60.0
# A repeated signature's one poll waits this long (past the second its twin was signed in).
REPEAT_POLL_DELAY_S = 1.0

PINGS = Counter("botburrow_ingest_hook_pings_total", "Inbox pings received, by outcome", ["outcome"])


class InboxPing(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    agent_id: str = ""
    unread_count: int = 0


class SeenSignatures:
    """Signatures of accepted pings until their timestamp is past the tolerance: a second one is a replay.

    A ping carries no nonce and its timestamp is in whole seconds, so the Hub itself may send the same
    bytes twice within a second (two notifications, the first read in between: `unread_count` 1 both
    times). Such a repeat is refused like any replay, but the first repeat of a signature earns one poll
    of that agent a second later (`first_repeat`), so that the second notification is not left to the
    polling interval; an attacker replaying a captured ping gets that one extra poll and no more."""

    def __init__(self, window_s: float = 2 * webhook.TOLERANCE_S, limit: int = MAX_REMEMBERED) -> None:
        self.window_s, self.limit = window_s, limit
        # signature -> (expiry, repeated yet); insertion order = expiry order (one window for all)
        self._until: dict[str, tuple[float, bool]] = {}

    def first_time(self, signature: str, now_s: float) -> bool:
        """True, and remembered, when `signature` was not seen within the window."""
        while self._until and next(iter(self._until.values()))[0] <= now_s:
            del self._until[next(iter(self._until))]
        if signature in self._until:
            return False
        if len(self._until) >= self.limit:  # a flood of genuine pings: forget the oldest first
            del self._until[next(iter(self._until))]
        self._until[signature] = (now_s + self.window_s, False)
        return True

    def first_repeat(self, signature: str) -> bool:
        """After `first_time` said False: True the first time only."""
        until, repeated = self._until.get(signature, (0.0, True))
        if repeated:
            return False
        self._until[signature] = (until, True)
        return True


_last_logged: dict[str, float] = {}


def _refused(status: int, outcome: str, agent: str | None = None) -> Response:
    PINGS.labels(outcome).inc()
    # Logged at most once a minute per reason: a flood of forged pings must not flood the log (the
    # counter has them all). An unknown agent is not logged at all: anyone may probe the path.
    now_s = time.monotonic()
    if agent is not None and now_s - _last_logged.get(outcome, -LOG_EVERY_S) >= LOG_EVERY_S:
        _last_logged[outcome] = now_s
        log.warning("inbox ping refused", extra={"agent": agent, "reason": outcome})
    return JSONResponse({"error": "refused" if status != 404 else "not found"}, status_code=status)


async def _body(request: Request) -> bytes | None:
    """The raw body, or None past MAX_BODY_BYTES (read no further than that)."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


class InboxHooks:
    def __init__(self, resolve: Callable[[str], str | None], secret_of: Callable[[str], str | None],
                 wake: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        """`resolve`: the config name of the agent a hook path names (its config or its Hub name), or None."""
        self.resolve, self.secret_of, self.wake, self.clock = resolve, secret_of, wake, clock
        self.seen = SeenSignatures()

    def route(self) -> Route:
        return Route(PATH, self.inbox, methods=["POST"])

    async def inbox(self, request: Request) -> Response:
        agent = self.resolve(request.path_params["agent"])
        if agent is None:
            return _refused(404, "unknown_agent")
        secret = await asyncio.to_thread(self.secret_of, agent)  # a mounted secret file: off the event loop
        if not secret:
            return _refused(404, "no_secret", agent)
        try:
            body = await _body(request)
        except ClientDisconnect:
            return _refused(400, "disconnected")
        if body is None:
            return _refused(413, "too_large", agent)
        now_s = self.clock()
        signature = request.headers.get(webhook.SIGNATURE_HEADER, "")
        reason = webhook.verify(secret.encode(), body, request.headers.get(webhook.TIMESTAMP_HEADER, ""),
                                signature, now_s)
        if reason is not None:
            return _refused(401, reason.replace(" ", "_"), agent)
        if not self.seen.first_time(signature, now_s):
            if self.seen.first_repeat(signature):
                asyncio.get_running_loop().call_later(REPEAT_POLL_DELAY_S, self.wake, agent)
            return _refused(401, "replayed", agent)
        try:
            ping = msgspec.json.decode(body, type=InboxPing)
        except msgspec.DecodeError:
            return _refused(400, "bad_body", agent)
        if ping.type != "inbox_update":
            return _refused(400, "bad_body", agent)
        PINGS.labels("accepted").inc()
        self.wake(agent)
        return JSONResponse({"status": "processing"}, status_code=202)

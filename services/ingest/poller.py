"""One polling round of the ingest stage: every agent's unread notifications onto NOTIFICATIONS.

Per agent, with that agent's own key: read a page of unread notifications, publish each as a
`NotificationReceived` (`Nats-Msg-Id: ntf:<id>`), and only once JetStream acknowledged every one of
them mark the page read. A crash or a failed publish in between leaves them unread, so the next round
publishes them again and JetStream's dedup (or the scheduler's) absorbs the repeat. Pages are read
until the backlog is drained or a round's page cap is reached. One agent's failure (a rejected key,
a Hub error) is logged and counted and does not stop the others. A Hub that does not serve the route
(`HubEndpointMissing`) is an absent capability, not an agent's failure: the round says so
(`endpoint_missing`) and logs nothing per agent; the stage changes mode. Without mark-read
(`mark_read=False`) a page is published only: JetStream's dedup and the scheduler's absorb the repeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec
from prometheus_client import Counter

from botburrow.hub.errors import HubAuthError, HubEndpointMissing, HubError
from botburrow.secrets import redact
from botburrow.tracing import emit_notifications, emit_poll, now_ns
from schemas.events import NotificationReceived
from schemas.hub import Notification, NotificationPage, clip
from streams import subjects

log = logging.getLogger(__name__)

PAGE_LIMIT = 50
# Bounds one agent's share of a round, so a flooded agent cannot delay every other agent's poll.
MAX_PAGES_PER_ROUND = 20
CONCURRENCY = 16
# A notification's text is cut to this before it is published: the scheduler refuses a notification over
# 32 KiB (schemas/codec.py), and the model sees no more of it than the runner's HUB_COMMENT_MAX_CHARS
# (4000 by default) anyway. 4,000 characters stay under the bound even if every one is escaped in JSON.
NOTIFICATION_CONTENT_MAX_CHARS = 4000

PUBLISHED = Counter("botburrow_ingest_notifications_published_total", "Notifications published to NOTIFICATIONS")
MARKED = Counter("botburrow_ingest_notifications_marked_read_total", "Notifications marked read on the Hub")
POLL_ERRORS = Counter("botburrow_ingest_poll_errors_total", "Agent polls that failed, by kind", ["kind"])


class NotificationHub(Protocol):
    """The two Hub calls ingest makes (a `HubClient` in production)."""

    async def unread_notifications(self, key: str, limit: int = ...) -> NotificationPage: ...

    async def mark_read(self, key: str, ids: list[str]) -> int: ...


class Publisher(Protocol):
    """`Bus.publish`: returns once JetStream acknowledged the message, raises otherwise."""

    async def publish(self, subject: str, payload: NotificationReceived, *, msg_id: str | None = ...,
                      trace_id: str | None = ...) -> object: ...


@dataclass
class PollReport:
    """What one round did, for tests and the round's log line."""

    published: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    without_key: list[str] = field(default_factory=list)
    # Routes the Hub answered "endpoint not found" to this round (`/notifications`, `/notifications/read`).
    endpoint_missing: set[str] = field(default_factory=set)

    @property
    def total_published(self) -> int:
        return sum(self.published.values())


def bounded(notification: Notification) -> Notification:
    """The notification with its text cut to NOTIFICATION_CONTENT_MAX_CHARS (a long or hostile Hub text)."""
    if len(notification.content) <= NOTIFICATION_CONTENT_MAX_CHARS:
        return notification
    return msgspec.structs.replace(notification, content=clip(notification.content, NOTIFICATION_CONTENT_MAX_CHARS))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Poller:
    def __init__(self, hub: NotificationHub, bus: Publisher, key_of: Callable[[str], Awaitable[str | None]], *,
                 concurrency: int = CONCURRENCY, page_limit: int = PAGE_LIMIT,
                 max_pages: int = MAX_PAGES_PER_ROUND, mark_read: bool = True) -> None:
        self.hub, self.bus, self.key_of = hub, bus, key_of
        self.mark_read = mark_read
        self.page_limit, self.max_pages = page_limit, max_pages
        self._slots = asyncio.Semaphore(concurrency)

    async def poll_once(self, agents: Iterable[str]) -> PollReport:
        """Poll every agent once (bounded concurrency); never raises for one agent's failure."""
        report = PollReport()
        await asyncio.gather(*(self._poll_agent(agent, report) for agent in sorted(set(agents))))
        if report.errors:
            kinds = Tally(report.errors.values())
            log.warning("poll round had failures", extra={"failed_agents": len(report.errors), "kinds": dict(kinds)})
        # Every round is logged at debug only: at a short interval, quiet rounds would flood the log.
        level = logging.INFO if report.total_published else logging.DEBUG
        log.log(level, "poll round", extra={"agents_polled": len(report.published),
                                            "published": report.total_published})
        return report

    async def _poll_agent(self, agent: str, report: PollReport) -> None:
        key = await self.key_of(agent)
        if not key:
            report.without_key.append(agent)
            return
        async with self._slots:
            try:
                report.published[agent] = await self._drain(agent, key, report)
            except HubEndpointMissing:
                report.endpoint_missing.add("notifications")
            except HubAuthError as exc:
                self._failed(report, agent, "auth", exc)
            except HubError as exc:
                self._failed(report, agent, "hub", exc)
            except Exception as exc:  # a publish that JetStream did not acknowledge, among others
                self._failed(report, agent, "publish", exc)

    def _failed(self, report: PollReport, agent: str, kind: str, exc: Exception) -> None:
        report.errors[agent] = kind
        POLL_ERRORS.labels(kind).inc()
        # HubError messages are built without keys and redacted by value; of anything else only the type
        # is logged, since its text may quote a request.
        detail = redact(str(exc)) if isinstance(exc, HubError) else ""
        log.warning("poll of agent failed", extra={"agent": agent, "kind": kind, "error": type(exc).__name__,
                                                   "detail": detail})

    async def _drain(self, agent: str, key: str, report: PollReport) -> int:
        published, polled_ns = 0, now_ns()
        seen: set[str] = set()
        for _ in range(self.max_pages):
            page = await self.hub.unread_notifications(key, limit=self.page_limit)
            fresh = [n for n in page.notifications if n.id not in seen]
            if not fresh:
                break  # nothing new: drained (or a Hub that does not honour mark-read: stop, do not spin)
            received_at, started_ns = utc_now(), now_ns()
            await asyncio.gather(*(
                self.bus.publish(subjects.notification(agent),
                                 NotificationReceived(agent=agent, notification=bounded(n), received_at=received_at),
                                 msg_id=f"ntf:{n.id}", trace_id=f"ntf:{n.id}")
                for n in fresh
            ))
            emit_notifications("ingest", agent, fresh, started_ns)  # each notification's span (issue 21)
            PUBLISHED.inc(len(fresh))
            ids = [n.id for n in fresh]
            seen.update(ids)
            published += len(fresh)
            if not self.mark_read:
                break  # the same page would come again: the next round reads it
            try:
                await self.hub.mark_read(key, ids)
            except HubEndpointMissing:
                report.endpoint_missing.add("mark_read")
                break
            MARKED.inc(len(ids))
            if page.next_cursor is None and len(page.notifications) < self.page_limit:
                break
        emit_poll("ingest", agent, sorted(seen), polled_ns)  # only a poll that found some (issue 21)
        return published

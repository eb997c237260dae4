"""Feed-derived ingestion: for a Hub without notifications (Moltbook), the same `NotificationReceived`
events, derived from the posts and comments any agent may read (`derive` says which).

One round, top to bottom, with a bounded number of Hub requests (all as a background caller of the
shared request budget):

1. the agents' Hub names, from KV `ingest-feed` or `GET /agents/me` (at most IDENTITY_READS_PER_ROUND
   new ones a round; until then the config name with `_` for `-`);
2. ONE listing of the newest posts (`sort=new`, FEED_THREADS_NEWEST of them), overall or of one of
   FEED_SUBMOLTS, in turn: a post never seen gives its mentions; a post whose comment count grew is
   queued for a comment read;
3. at most FEED_COMMENT_READS_PER_ROUND comment trees: first the watched threads of agents whose Hub just
   pinged, then the posts whose count grew (oldest news first), then watched threads (each agent's own
   posts and the threads it wrote in or was named in) least recently read first. Each comment not read
   before gives its mentions, replies and comments.

What was read is written to KV after JetStream acknowledged what it gave (a crash in between publishes
the same ids again: absorbed by JetStream's dedup and the scheduler's recent ids). A rate limit or a
spent budget ends the round quietly; the next round goes on from the same KV state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter

from botburrow.hub.errors import HubAuthError, HubError, HubNotFound, HubRateLimited
from botburrow.secrets import redact
from botburrow.tracing import emit_notifications, now_ns
from schemas.events import NotificationReceived
from schemas.hub import AgentProfile, Comment, Notification, Post, walk_comments
from services.ingest.derive import Identities, authors_by_id, from_comment, from_post
from services.ingest.feedstate import FeedState, ThreadState, Watched
from services.ingest.poller import Publisher, bounded, utc_now
from streams import subjects

log = logging.getLogger(__name__)

# Comments one read asks for: Moltbook's most (it returns the shallowest first, so a big thread's deep replies
# are cut first; older ones were read by earlier rounds).
COMMENTS_PER_READ = 500
IDENTITY_READS_PER_ROUND = 10
# Agents whose watched threads are re-read from KV per round (another replica may have added some).
WATCH_REFRESH_PER_ROUND = 100
# An agent whose key the Hub refused is asked its name again after this.
IDENTITY_RETRY_S = 600.0

FEED_PUBLISHED = Counter("botburrow_ingest_feed_notifications_total", "Notifications derived from the feed, by type",
                         ["type"])
FEED_REQUESTS = Counter("botburrow_ingest_feed_requests_total", "Hub requests of feed-derived ingestion, by call",
                        ["call"])
FEED_STOPS = Counter("botburrow_ingest_feed_rounds_cut_total", "Feed rounds ended early, by reason", ["reason"])


class FeedHub(Protocol):
    """The Hub calls feed ingestion makes (a background `HubClient` in production)."""

    async def list_posts(self, key: str, submolt: str | None, sort: str = ..., limit: int = ...,
                         offset: int = ...) -> list[Post]: ...

    async def get_comments(self, key: str, post_id: str, sort: str = ..., limit: int = ...) -> list[Comment]: ...

    async def me(self, key: str) -> AgentProfile: ...


@dataclass
class FeedReport:
    """What one round did, for tests and the round's log line."""

    published: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    threads_read: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the round ended early: rate_limited, hub, publish, other_replica

    @property
    def total_published(self) -> int:
        return sum(self.published.values())


class _PublishFailed(Exception):
    pass


class FeedIngest:
    def __init__(self, hub: FeedHub, bus: Publisher, state: FeedState,
                 key_of: Callable[[str], Awaitable[str | None]], *, newest: int = 50, reads_per_round: int = 4,
                 submolts: Iterable[str] = (), min_gap_s: float = 0.0) -> None:
        """`min_gap_s` > 0: replicas take turns, one round (of any) per `min_gap_s`; a ping's round always runs."""
        self.hub, self.bus, self.state, self.key_of = hub, bus, state, key_of
        self.min_gap_s = min_gap_s
        self.newest, self.reads_per_round = newest, reads_per_round
        self._scopes = itertools.cycle((None, *submolts))
        self._names: dict[str, str] = {}  # config name -> Hub name
        self._no_name_until: dict[str, float] = {}
        self._watched: dict[str, Watched] = {}
        self._changed: dict[str, int] = {}  # post id -> its listed comment count, oldest news first
        self._read_at: dict[str, float] = {}  # post id -> when this process last read its comments
        self._rounds = 0

    def agent_named(self, hub_name: str) -> str | None:
        """The config name of the agent whose Hub name this is (as learned so far), else None."""
        return next((agent for agent, name in self._names.items() if name.lower() == hub_name.lower()), None)

    async def round(self, agents: Iterable[str], urgent: Iterable[str] = ()) -> FeedReport:
        """One round (see the module's docstring); never raises for the Hub's or JetStream's trouble."""
        report = FeedReport()
        urgent = list(urgent)
        if self.min_gap_s and not urgent and not await self.state.claim_round(time.time(), self.min_gap_s):
            report.stopped = "other_replica"  # another replica ran this interval's round: the budget is one
            return report
        keys = {agent: key for agent in sorted(set(agents)) if (key := await self.key_of(agent))}
        if not keys:
            return report
        self._rounds += 1
        reader = list(keys.values())[self._rounds % len(keys)]  # listings are public: any agent's key
        try:
            ids = await self._identities(keys, report)
            await self._refresh_watched(list(keys))
            await self._list(reader, ids, report)
            for post_id in self._pick(urgent):
                await self._read_thread(post_id, reader, ids, report)
        except HubRateLimited:
            report.stopped = "rate_limited"  # budget spent or 429: what is left waits for the next round
        except HubError as exc:
            report.stopped = "hub"
            log.warning("feed round cut by a Hub error", extra={"error": type(exc).__name__,
                                                                 "detail": redact(str(exc))})
        except _PublishFailed as exc:
            report.stopped = "publish"
            log.warning("feed round cut: JetStream did not acknowledge", extra={"error": str(exc)})
        if report.stopped:
            FEED_STOPS.labels(report.stopped).inc()
        level = logging.INFO if report.total_published else logging.DEBUG
        log.log(level, "feed round", extra={"published": report.total_published, "requests": report.requests,
                                            "threads_read": len(report.threads_read), "stopped": report.stopped})
        return report

    async def _identities(self, keys: dict[str, str], report: FeedReport) -> Identities:
        for agent in keys:
            if agent not in self._names and (name := await self.state.hub_name(agent)):
                self._names[agent] = name
        now_s = time.monotonic()
        missing = [a for a in keys if a not in self._names and self._no_name_until.get(a, 0.0) <= now_s]
        for agent in missing[:IDENTITY_READS_PER_ROUND]:
            report.requests += 1
            FEED_REQUESTS.labels("me").inc()
            try:
                profile = await self.hub.me(keys[agent])
            except HubAuthError:
                self._no_name_until[agent] = now_s + IDENTITY_RETRY_S
                log.warning("the Hub refused an agent's key; its mentions are not read", extra={"agent": agent})
                continue
            if profile.name:
                self._names[agent] = profile.name
                await self.state.set_hub_name(agent, profile.name)
        # Until the Hub says, an agent goes by the name a Moltbook-style Hub would give it (`-` is not
        # allowed there): a comment read meanwhile is read once, and must not miss its mentions.
        return Identities({agent: self._names.get(agent) or agent.replace("-", "_") for agent in keys})

    async def _refresh_watched(self, agents: list[str]) -> None:
        start = (self._rounds - 1) * WATCH_REFRESH_PER_ROUND % len(agents)
        for agent in (agents[start:] + agents[:start])[:WATCH_REFRESH_PER_ROUND]:
            self._watched[agent] = await self.state.watched(agent)

    async def _list(self, key: str, ids: Identities, report: FeedReport) -> None:
        report.requests += 1
        FEED_REQUESTS.labels("list_posts").inc()
        posts = await self.hub.list_posts(key, next(self._scopes), sort="new", limit=self.newest)
        for post in reversed(posts):  # oldest first: news is published in the order it happened
            thread = await self.state.thread(post.id)
            if thread is None:
                notes = from_post(post, ids)
                await self._publish(notes, report)
                thread = ThreadState(author=post.author_name.lower())
                await self.state.save_thread(post.id, thread)
                for agent in {agent for agent, _ in notes} | {ids.agent(post.author_name)} - {None}:
                    await self._watch(agent, post.id)  # type: ignore[arg-type]
            if post.comment_count > thread.comments_read:
                self._changed[post.id] = post.comment_count

    def _pick(self, urgent: Iterable[str]) -> list[str]:
        picked: dict[str, None] = {}
        pinged = [p for agent in urgent for p in reversed(self._watched.get(agent, Watched()).posts)]
        watched = {p for w in self._watched.values() for p in w.posts}
        stale = sorted(watched, key=lambda p: self._read_at.get(p, 0.0))
        for post_id in itertools.chain(pinged, list(self._changed), stale):
            if len(picked) >= self.reads_per_round:
                break
            picked[post_id] = None
        return list(picked)

    async def _read_thread(self, post_id: str, key: str, ids: Identities, report: FeedReport) -> None:
        report.requests += 1
        FEED_REQUESTS.labels("get_comments").inc()
        listed_count = self._changed.pop(post_id, 0)
        self._read_at[post_id] = time.monotonic()
        try:
            comments = [c for c, _ in walk_comments(await self.hub.get_comments(key, post_id, sort="new",
                                                                                limit=COMMENTS_PER_READ))]
        except HubNotFound:
            return  # deleted: nothing more to read there
        report.threads_read.append(post_id)
        thread = await self.state.thread(post_id) or ThreadState()
        seen, author_of = set(thread.seen), authors_by_id(comments)
        new = [c for c in comments if c.id not in seen]
        notes: list[tuple[str, Notification]] = []
        for comment in new:
            parent = ids.agent(author_of.get(comment.parent_id, "")) if comment.parent_id else None
            notes += from_comment(comment, post_id, ids.agent(thread.author), parent, ids)
        await self._publish(notes, report)
        await self.state.save_thread(post_id, ThreadState(author=thread.author, seen=tuple(c.id for c in new),
                                                          comments_read=max(len(comments), listed_count)))
        writers = {ids.agent(c.author_name) for c in new} - {None}
        for agent in writers | {agent for agent, _ in notes}:
            await self._watch(agent, post_id)  # type: ignore[arg-type]

    async def _watch(self, agent: str, post_id: str) -> None:
        if post_id in self._watched.get(agent, Watched()).posts:
            return
        await self.state.watch(agent, [post_id])
        self._watched[agent] = await self.state.watched(agent)

    async def _publish(self, notes: list[tuple[str, Notification]], report: FeedReport) -> None:
        if not notes:
            return
        received_at, started_ns = utc_now(), now_ns()
        try:
            await asyncio.gather(*(
                self.bus.publish(subjects.notification(agent),
                                 NotificationReceived(agent=agent, notification=bounded(n), received_at=received_at),
                                 msg_id=f"ntf:{n.id}", trace_id=f"ntf:{n.id}")
                for agent, n in notes))
        except Exception as exc:  # JetStream did not acknowledge: what was read is not recorded, read again
            raise _PublishFailed(type(exc).__name__) from None
        for agent, n in notes:  # each notification's span (issue 21)
            emit_notifications("ingest", agent, [n], started_ns)
        for agent, n in notes:
            report.published[agent] = report.published.get(agent, 0) + 1
            FEED_PUBLISHED.labels(n.type).inc()

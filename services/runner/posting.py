"""Posting as the agent, exactly once, within its limits (contract §4 step 4).

Idempotency: the `replies` bucket holds a marker per (activation id, notification id). It is written
as `pending` with the text *before* the Hub call and as `posted` with the Hub's id after it, so a
runner that dies in between leaves enough behind: the redelivered activation finds the pending
marker, looks for that exact comment in the thread, and posts the stored text only if it is not
there. A `posted` marker means the reply is never sent again.

Limits (daily posts and comments, replies per thread, minimum interval) live in the `limits`
bucket and are updated with compare-and-set, so they hold across every runner.

A thread-wide cap (THREAD_AGENT_REPLIES_MAX) counts the comments every agent posted in one thread, in
the same bucket under `thread.replies.<post>` (kept two days after the thread's last agent reply, the
bucket's TTL), also with compare-and-set: agents that provoke each other in a ring stop there, however
many they are and whichever runners serve them. A comment is counted against the agent's limits first,
then against the thread; if the thread refuses it, the agent's count is given back.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from botburrow.hub.client import HubClient, HubError
from botburrow.runtime.bus import Bus
from botburrow.secrets import redact
from schemas.agent import AgentDefinition, Limits
from schemas.hub import Comment
from services.runner.context import InputBounds
from services.runner.identity import HubNames
from streams.subjects import token
from streams.topology import LIMITS, REPLIES

CAS_ATTEMPTS = 20
S = TypeVar("S", bound=msgspec.Struct)


class ReplyMarker(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["pending", "posted"]
    content: str
    target: Literal["comment", "dm"] = "comment"
    post_id: str | None = None
    parent_id: str | None = None
    dm_id: str | None = None
    hub_id: str | None = None


class Usage(msgspec.Struct, kw_only=True):
    """One agent's counters for one UTC day."""

    posts: int = 0
    comments: int = 0
    last_post_at: float = 0.0
    threads: dict[str, int] = msgspec.field(default_factory=dict)


class ThreadReplies(msgspec.Struct, kw_only=True):
    """Comments posted by agents in one thread (post), every agent and runner together."""

    agent_replies: int = 0


def thread_key(post_id: str) -> str:
    # Three tokens: never one of the `<agent>.<day>` keys of the same bucket.
    return f"thread.replies.{token(post_id)}"


def thread_limit_reason(count: ThreadReplies, max_replies: int) -> str | None:
    if max_replies and count.agent_replies >= max_replies:
        return (f"THREAD_AGENT_REPLIES_MAX ({max_replies}) reached: agents replied {count.agent_replies} times "
                "in this thread")
    return None


@dataclass(frozen=True)
class Target:
    kind: Literal["comment", "dm", "post"]
    post_id: str | None = None
    parent_id: str | None = None
    dm_id: str | None = None
    submolt: str | None = None
    title: str | None = None


class PostOutcome(enum.StrEnum):
    POSTED = "posted"
    ALREADY_POSTED = "already_posted"  # by an earlier attempt (its marker says so, or the Hub shows it)
    LIMITED = "limited"  # a limit refused it; `reason` says which
    UNSUPPORTED = "unsupported"  # the Hub has no route for it (no DMs); `reason` says so


@dataclass(frozen=True)
class PostResult:
    outcome: PostOutcome
    hub_id: str | None = None
    reason: str | None = None


def limit_reason(usage: Usage, limits: Limits, target: Target, now_s: float) -> str | None:
    """Why `target` may not be posted now, or None. DMs are answers to a person: only the interval applies."""
    if target.kind == "post" and usage.posts >= limits.max_daily_posts:
        return f"max_daily_posts ({limits.max_daily_posts}) reached"
    if target.kind == "comment":
        if usage.comments >= limits.max_daily_comments:
            return f"max_daily_comments ({limits.max_daily_comments}) reached"
        if target.post_id and usage.threads.get(target.post_id, 0) >= limits.max_responses_per_thread:
            return f"max_responses_per_thread ({limits.max_responses_per_thread}) reached"
    return None


def interval_wait_s(usage: Usage, limits: Limits, now_s: float) -> float:
    """Seconds until min_interval_seconds has passed since the agent's last post (0 when it has)."""
    return max(0.0, usage.last_post_at + limits.min_interval_seconds - now_s)


class Poster:
    def __init__(self, bus: Bus, hub: HubClient, agent: str, agent_key: str, limits: Limits, *,
                 thread_replies_max: int = 0, input_bounds: InputBounds | None = None,
                 names: HubNames | None = None) -> None:
        self.bus, self.hub, self.agent, self.key, self.limits = bus, hub, agent, agent_key, limits
        self.names = names or HubNames(hub)
        self.thread_replies_max = thread_replies_max  # 0: no thread-wide cap
        # The activation's context.InputBounds, for the Hub tools that post through this Poster.
        self.input_bounds = input_bounds

    def _usage_key(self, now_s: float) -> str:
        return f"{token(self.agent)}.{time.strftime('%Y%m%d', time.gmtime(now_s))}"

    async def usage(self, now_s: float | None = None) -> Usage:
        kv = await self.bus.kv(LIMITS.name)
        try:
            entry = await kv.get(self._usage_key(now_s or time.time()))
        except KeyNotFoundError:
            return Usage()
        return msgspec.json.decode(entry.value, type=Usage) if entry.value else Usage()

    async def _change_usage(self, change: Callable[[Usage, float], str | None],
                            day_s: float | None = None) -> str | None:
        """Apply `change` to today's counters (or those of the day of `day_s`) with compare-and-set, so
        it holds across runners. `change` returns a reason to leave them as they are, or None."""
        return await self._change(lambda now_s: self._usage_key(day_s or now_s), Usage, change)

    async def _change(self, key_at: Callable[[float], str], kind: type[S],
                      change: Callable[[S, float], str | None]) -> str | None:
        """Compare-and-set on one `limits` key: read, `change` (a reason to leave it, or None), write."""
        kv = await self.bus.kv(LIMITS.name)
        for _ in range(CAS_ATTEMPTS):
            now_s = time.time()
            key = key_at(now_s)
            try:
                entry = await kv.get(key)
                value, revision = msgspec.json.decode(entry.value or b"", type=kind), entry.revision
            except KeyNotFoundError:
                value, revision = kind(), None
            reason = change(value, now_s)
            if reason:
                return reason
            try:
                if revision is None:
                    await kv.create(key, msgspec.json.encode(value))
                else:
                    await kv.update(key, msgspec.json.encode(value), last=revision)
                return None
            except KeyWrongLastSequenceError:
                continue  # another runner counted meanwhile: read again
        return "limits bucket contended; try later"

    def _thread_capped(self, target: Target) -> bool:
        return bool(self.thread_replies_max and target.kind == "comment" and target.post_id)

    async def thread_replies(self, post_id: str) -> ThreadReplies:
        kv = await self.bus.kv(LIMITS.name)
        try:
            entry = await kv.get(thread_key(post_id))
        except KeyNotFoundError:
            return ThreadReplies()
        return msgspec.json.decode(entry.value, type=ThreadReplies) if entry.value else ThreadReplies()

    async def refusal(self, usage: Usage, target: Target) -> str | None:
        """Why `target` may not be posted now, read without counting (to spare a model call); posting
        checks again atomically."""
        reason = limit_reason(usage, self.limits, target, time.time())
        if reason or not self._thread_capped(target):
            return reason
        return thread_limit_reason(await self.thread_replies(target.post_id or ""), self.thread_replies_max)

    async def _count_thread(self, target: Target, n: int) -> str | None:
        def count(replies: ThreadReplies, now_s: float) -> str | None:
            if n > 0 and (reason := thread_limit_reason(replies, self.thread_replies_max)):
                return reason
            replies.agent_replies = max(0, replies.agent_replies + n)
            return None

        return await self._change(lambda now_s: thread_key(target.post_id or ""), ThreadReplies, count)

    async def _reserve(self, target: Target) -> tuple[str | None, float, float]:
        """Count this post against the limits; return why it may not be posted (or None), when it was
        counted, and the agent's previous last-post time (for `_release`)."""
        counted: list[float] = [0.0, 0.0]

        def count(usage: Usage, now_s: float) -> str | None:
            reason = limit_reason(usage, self.limits, target, now_s)
            if reason:
                return reason
            _add(usage, target, 1)
            counted[:] = [now_s, usage.last_post_at]
            usage.last_post_at = now_s
            return None

        reason = await self._change_usage(count)
        if reason is None and self._thread_capped(target):
            reason = await self._count_thread(target, 1)
            if reason:  # the agent may, the thread may not: give the agent's count back
                await self._release(target, counted[0], counted[1], thread=False)
        return reason, counted[0], counted[1]

    async def _release(self, target: Target, counted_at_s: float, previous_post_at_s: float, *,
                       thread: bool = True) -> None:
        """Give back a reservation the Hub refused, so a redelivery is not counted twice."""
        if thread and self._thread_capped(target):
            await self._count_thread(target, -1)

        def uncount(usage: Usage, now_s: float) -> None:
            _add(usage, target, -1)
            if usage.last_post_at == counted_at_s:  # nobody posted since: the interval starts where it did
                usage.last_post_at = previous_post_at_s

        await self._change_usage(uncount, day_s=counted_at_s)

    async def _marker(self, key: str) -> ReplyMarker | None:
        kv = await self.bus.kv(REPLIES.name)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value, type=ReplyMarker) if entry.value else None

    async def already_posted(self, idempotency_key: str) -> bool:
        marker = await self._marker(idempotency_key)
        return marker is not None and marker.state == "posted"

    async def _find_existing(self, marker: ReplyMarker) -> str | None:
        """After a crash between posting and marking: is the pending text already in the thread?"""
        if marker.target != "comment" or not marker.post_id:
            return None  # DMs cannot be read back; the pending marker alone decides (at most once)
        comments = await self.hub.get_comments(self.key, marker.post_id)
        stack: list[Comment] = list(comments)
        while stack:
            comment = stack.pop()
            if comment.content == marker.content and await self.names.is_self(self.agent, self.key,
                                                                              comment.author_name):
                return comment.id
            stack.extend(comment.replies)
        return None

    async def publish(self, idempotency_key: str, target: Target, text: str) -> PostResult:
        """Post `text` to `target` once for `idempotency_key` (activation id + notification id)."""
        text = redact(text)  # a model can be talked into repeating a secret: it never reaches the Hub
        kv = await self.bus.kv(REPLIES.name)
        marker = await self._marker(idempotency_key)
        counted_at_s = previous_post_at_s = 0.0
        if marker and marker.state == "posted":
            return PostResult(PostOutcome.ALREADY_POSTED, marker.hub_id)
        if marker and marker.state == "pending":
            found = await self._find_existing(marker)
            if found or marker.target == "dm":
                await kv.put(idempotency_key, msgspec.json.encode(msgspec.structs.replace(
                    marker, state="posted", hub_id=found)))
                return PostResult(PostOutcome.ALREADY_POSTED, found)
            text = marker.content  # post what was decided before the crash, not a new answer
        else:
            reason, counted_at_s, previous_post_at_s = await self._reserve(target)
            if reason:
                return PostResult(PostOutcome.LIMITED, reason=reason)
        pending = ReplyMarker(state="pending", content=text, target="dm" if target.kind == "dm" else "comment",
                              post_id=target.post_id, parent_id=target.parent_id, dm_id=target.dm_id)
        await kv.put(idempotency_key, msgspec.json.encode(pending))
        try:
            hub_id = await self._send(target, text)
        except HubError as exc:
            if not _maybe_sent(exc, pending):
                # The Hub answered with an error, or was never reached: nothing was posted. Drop the
                # pending marker so the redelivered activation sends it, instead of taking it as sent,
                # and give back its count (a marker from before a crash was counted by that run).
                await kv.delete(idempotency_key)
                if not marker:
                    await self._release(target, counted_at_s, previous_post_at_s)
            raise
        await kv.put(idempotency_key, msgspec.json.encode(msgspec.structs.replace(pending, state="posted",
                                                                                   hub_id=hub_id)))
        return PostResult(PostOutcome.POSTED, hub_id)

    async def _send(self, target: Target, text: str) -> str | None:
        if target.kind == "dm":
            response = await self.hub.send_dm(self.key, target.dm_id or "", text)
            message = response.get("message") if isinstance(response, dict) else None
            return str(message.get("id")) if isinstance(message, dict) and message.get("id") else None
        if target.kind == "post":
            post = await self.hub.create_post(self.key, target.submolt or "general", target.title or "", text)
            return post.id
        comment = await self.hub.create_comment(self.key, target.post_id or "", text, target.parent_id)
        return comment.id


@dataclass(frozen=True)
class AgentPosters:
    """`Posters` of a runner: one `Poster` per activation, as the agent, with the runner's thread-wide cap."""

    bus: Bus
    hub: HubClient
    thread_replies_max: int = 0
    input_bounds: InputBounds | None = None
    names: HubNames | None = None  # the runner's one cache of Hub names

    def for_agent(self, definition: AgentDefinition, key: str) -> Poster:
        return Poster(self.bus, self.hub, definition.name, key, definition.config.behavior.limits,
                      thread_replies_max=self.thread_replies_max, input_bounds=self.input_bounds, names=self.names)


def _add(usage: Usage, target: Target, n: int) -> None:
    if target.kind == "post":
        usage.posts = max(0, usage.posts + n)
    elif target.kind == "comment":
        usage.comments = max(0, usage.comments + n)
        if target.post_id:
            usage.threads[target.post_id] = max(0, usage.threads.get(target.post_id, 0) + n)


def _maybe_sent(exc: HubError, marker: ReplyMarker) -> bool:
    """Whether the Hub may have done the write that failed: its outcome is unknown, or it answered 5xx to a
    comment (a server that failed after its insert). The pending marker then stays: a comment is looked
    for in its thread before it is posted again. A DM cannot be read back, so a 5xx DM is sent again."""
    return exc.code == "OUTCOME_UNKNOWN" or (exc.status >= 500 and marker.target == "comment")


def reply_key(activation_id: str, notification_id: str) -> str:
    return f"{token(activation_id)}.{token(notification_id)}"

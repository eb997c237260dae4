"""What feed-derived ingestion remembers, in KV bucket `ingest-feed` (ingest is its only writer).

- `thread.<post>`: a post seen (its own mentions derived), who wrote it, and the comments already read;
- `watch.<agent>`: the threads an agent watches (its own posts, the threads it took part in or was named in);
- `name.<agent>`: the agent's Hub name, as `GET /agents/me` says it for the agent's key;
- `round`: when the last round of any replica began, so that replicas share one round per interval.

Every write is a compare-and-set that merges (union) with what another replica wrote meanwhile, so two
ingest replicas, or one restarted, agree on what was read; the notifications themselves carry ids derived
from the post or comment, so a repeat is absorbed by JetStream's dedup and the scheduler's recent ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from botburrow.runtime.bus import Bus
from streams.topology import INGEST_FEED

# Bounds of one key: a thread keeps the ids of its newest comments read (comment reads see the newest
# COMMENTS_PER_READ anyway); an agent watches its latest threads.
SEEN_COMMENTS_KEPT = 1000
WATCHED_PER_AGENT = 20
CAS_ATTEMPTS = 8
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

T = TypeVar("T", bound=msgspec.Struct)


class ThreadState(msgspec.Struct, frozen=True, kw_only=True):
    author: str = ""  # the post's author, lower case (its Hub name)
    seen: tuple[str, ...] = ()  # comment ids already turned into notifications, oldest first
    comments_read: int = 0  # how many comments the last read found: a listing's larger count means news


class Watched(msgspec.Struct, frozen=True, kw_only=True):
    posts: tuple[str, ...] = ()  # most recent last


def key_part(hub_id: str) -> str:
    """A Hub id as one KV key token: itself when it is plain, else a digest (a hostile id may hold any text)."""
    if _SAFE.match(hub_id):
        return hub_id
    return "h" + hashlib.sha256(hub_id.encode()).hexdigest()[:40]


def merged_thread(old: ThreadState, new: ThreadState) -> ThreadState:
    seen = dict.fromkeys(old.seen)
    seen.update(dict.fromkeys(new.seen))
    return ThreadState(author=new.author or old.author, seen=tuple(seen)[-SEEN_COMMENTS_KEPT:],
                       comments_read=max(old.comments_read, new.comments_read))


def merged_watch(old: Watched, new: Watched) -> Watched:
    posts = [p for p in old.posts if p not in new.posts] + list(new.posts)
    return Watched(posts=tuple(posts[-WATCHED_PER_AGENT:]))


class FeedState:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus) -> FeedState:
        return cls(await bus.kv(INGEST_FEED.name))

    async def thread(self, post_id: str) -> ThreadState | None:
        return await self._get(f"thread.{key_part(post_id)}", ThreadState)

    async def save_thread(self, post_id: str, state: ThreadState) -> None:
        await self._merge(f"thread.{key_part(post_id)}", ThreadState, state, merged_thread)

    async def watched(self, agent: str) -> Watched:
        return await self._get(f"watch.{agent}", Watched) or Watched()

    async def watch(self, agent: str, post_ids: list[str]) -> None:
        await self._merge(f"watch.{agent}", Watched, Watched(posts=tuple(post_ids)), merged_watch)

    async def hub_name(self, agent: str) -> str | None:
        try:
            entry = await self.kv.get(f"name.{agent}")
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def set_hub_name(self, agent: str, hub_name: str) -> None:
        await self.kv.put(f"name.{agent}", hub_name.encode())

    async def claim_round(self, now_s: float, min_gap_s: float) -> bool:
        """Whether this replica may run a round now: the last round of any replica began `min_gap_s` ago
        or more, and no other replica claimed it first (compare-and-set on key `round`, Unix seconds)."""
        try:
            entry = await self.kv.get("round")
        except KeyNotFoundError:
            entry = None
        try:
            last_s = float(entry.value or b"0") if entry else 0.0
        except ValueError:
            last_s = 0.0
        if now_s - last_s < min_gap_s:
            return False
        try:
            if entry is None:
                await self.kv.create("round", str(now_s).encode())
            else:
                await self.kv.update("round", str(now_s).encode(), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False  # another replica took this round
        return True

    async def _get(self, key: str, kind: type[T]) -> T | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:  # a delete or purge marker
            return None
        return msgspec.json.decode(entry.value, type=kind)

    async def _merge(self, key: str, kind: type[T], value: T, merge: Callable[[T, T], T]) -> None:
        """Write `value` merged with what is stored, by compare-and-set: a concurrent writer's part is kept."""
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                entry = None
            try:
                if entry is None or not entry.value:
                    await self.kv.create(key, msgspec.json.encode(value))
                else:
                    old = msgspec.json.decode(entry.value, type=kind)
                    await self.kv.update(key, msgspec.json.encode(merge(old, value)), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another replica wrote meanwhile: merge with its version
        raise RuntimeError(f"ingest-feed key {key} stayed contended")

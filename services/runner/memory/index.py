"""An agent's memories as one snapshot: the item objects are the truth, `index.json` is a cache of them.

Two runners writing one agent's memory at once lose nothing because nothing is ever read-modified-written
that another writer needs: each memory is its own object under a fresh random key (items.py), and the
set of memories is whatever LIST shows. `index.json` only saves GETs: it maps each item's key and etag to
its parsed front matter and text. A reader takes an entry from it only when the key and etag match the
listing; items it lacks are fetched and parsed, entries the listing no longer shows are dropped, and the
merged index is written back. Two writers writing `index.json` at once: the last write wins, and a
memory the losing write held is still listed, so the next reader fetches it and writes it back. A broken
`index.json` is rebuilt the same way (and said so). The runner also keeps parsed entries per process,
keyed by key and etag, so a warm runner needs one LIST per retrieval and no GET.

Eviction (`over_budget`): when the listed objects pass `max_size_mb`, the memories of low importance
(below items.LOW_IMPORTANCE: conversations) go first, oldest first, then the rest, oldest first, until
the total is back under the limit. `index.json` does not count.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

import msgspec

from services.runner.memory.items import INDEX, ITEM_MAX_BYTES, LOW_IMPORTANCE, MemoryItem, Unreadable, parse
from services.runner.memory.store import Listed, MemoryStore

log = logging.getLogger(__name__)

FETCH_PARALLEL = 8
FETCH_MAX = 500  # items fetched by one load (a cold rebuild of 10,000 finishes over several activations)
INDEX_MAX_BYTES = 64 << 20
PROCESS_CACHE_MAX = 50_000  # parsed entries kept per runner process, all agents together (at most ~100 MiB)


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    etag: str
    size: int
    item: MemoryItem


class IndexFile(msgspec.Struct, kw_only=True):
    v: int = 1
    entries: list[Entry] = msgspec.field(default_factory=list)


@dataclass
class Snapshot:
    agent: str
    entries: list[Entry]
    problems: list[str] = field(default_factory=list)  # unreadable objects, a broken index: said in events
    listed_bytes: int | None = None  # every memory object listed, read or not (None: not from a listing)

    @property
    def total_bytes(self) -> int:
        return self.listed_bytes if self.listed_bytes is not None else sum(e.size for e in self.entries)

    @property
    def signature(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((e.key, e.etag) for e in self.entries))


class Index:
    """Loads snapshots of agents' memories from a store, with the per-process cache of parsed entries."""

    def __init__(self, store: MemoryStore, fetch_max: int = FETCH_MAX) -> None:
        self.store, self.fetch_max = store, fetch_max  # the operator's commands read everything at once
        self._parsed: dict[tuple[str, str, str], Entry] = {}  # (agent, key, etag) -> entry

    def forget_cached(self, agent: str, key: str) -> None:
        for cache_key in [k for k in self._parsed if k[0] == agent and k[1] == key]:
            del self._parsed[cache_key]

    def remember_entry(self, agent: str, entry: Entry) -> None:
        if len(self._parsed) >= PROCESS_CACHE_MAX:  # the first tenth cached goes (they come back from index.json)
            for stale in list(itertools.islice(self._parsed, PROCESS_CACHE_MAX // 10)):
                del self._parsed[stale]
        self._parsed[(agent, entry.key, entry.etag)] = entry

    async def load(self, agent: str) -> Snapshot:
        everything = await self.store.listing(agent)
        listed = [x for x in everything if x.key != INDEX and x.key.endswith(".md")]
        snapshot = Snapshot(agent, [], listed_bytes=sum(x.size for x in listed))
        missing = [x for x in listed if (agent, x.key, x.etag) not in self._parsed]
        cached: dict[str, Entry] = {}
        if missing:
            index_size = next((x.size for x in everything if x.key == INDEX), None)
            cached = await self._read_index(agent, snapshot, index_size)
            fetched = await self._fetch(agent, [x for x in missing if _hit(cached, x) is None], snapshot)
            for entry in [*(e for x in missing if (e := _hit(cached, x)) is not None), *fetched]:
                self.remember_entry(agent, entry)
        snapshot.entries = [e for x in listed if (e := self._parsed.get((agent, x.key, x.etag))) is not None]
        if missing and {e.key for e in snapshot.entries} != set(cached):
            await self.write_index(snapshot)
        return snapshot

    async def _read_index(self, agent: str, snapshot: Snapshot, size: int | None) -> dict[str, Entry]:
        if size is None:
            return {}
        if size > INDEX_MAX_BYTES:  # never read whole: a cache that large is rebuilt from the items instead
            snapshot.problems.append(f"{INDEX} is {size} bytes, over {INDEX_MAX_BYTES}: not read, rebuilt")
            return {}
        got = await self.store.get(agent, INDEX)
        if got is None:
            return {}
        data, _ = got
        try:
            if len(data) > INDEX_MAX_BYTES:
                raise ValueError(f"{len(data)} bytes")
            return {e.key: e for e in msgspec.json.decode(data, type=IndexFile).entries}
        except (ValueError, RecursionError) as exc:  # msgspec's errors are ValueErrors
            snapshot.problems.append(f"{INDEX} unreadable ({str(exc)[:120]}): rebuilt from the items")
            return {}

    async def _fetch(self, agent: str, wanted: list[Listed], snapshot: Snapshot) -> list[Entry]:
        if len(wanted) > self.fetch_max:
            snapshot.problems.append(f"{len(wanted) - self.fetch_max} memories not read yet (at most "
                                     f"{self.fetch_max} are fetched per activation; the next ones read the rest)")
            wanted = wanted[:self.fetch_max]
        gate = asyncio.Semaphore(FETCH_PARALLEL)

        async def one(listed: Listed) -> Entry | None:
            if listed.size > ITEM_MAX_BYTES:  # not one we wrote: never read into memory
                snapshot.problems.append(f"{listed.key} unreadable: {listed.size} bytes, over {ITEM_MAX_BYTES}")
                return None
            async with gate:
                got = await self.store.get(agent, listed.key)
            if got is None:
                return None  # deleted since the listing (an eviction, a forget)
            try:
                item = parse(got[0])
            except Unreadable as exc:
                snapshot.problems.append(f"{listed.key} unreadable: {exc}")
                return None
            return Entry(key=listed.key, etag=got[1] or listed.etag, size=listed.size, item=item)

        return [e for e in await asyncio.gather(*(one(x) for x in wanted)) if e is not None]

    async def write_index(self, snapshot: Snapshot) -> None:
        """Best effort: a lost write only costs a later reader GETs (the items are the truth)."""
        from services.runner.memory.store import StoreError

        try:
            await self.store.put(snapshot.agent, INDEX, msgspec.json.encode(IndexFile(entries=snapshot.entries)))
        except StoreError as exc:
            log.info("memory index not written", extra={"agent": snapshot.agent, "reason": exc.reason})


def _hit(cached: dict[str, Entry], listed: Listed) -> Entry | None:
    entry = cached.get(listed.key)
    return entry if entry is not None and entry.etag == listed.etag else None


def over_budget(entries: list[Entry], max_bytes: int, total_bytes: int | None = None) -> list[Entry]:
    """What to evict so the rest fit `max_bytes`: low importance first, oldest first within (module doc).
    `total_bytes`: the agent's whole size, when some of its memories are listed but not read yet."""
    total = sum(e.size for e in entries) if total_bytes is None else total_bytes
    doomed: list[Entry] = []
    for entry in sorted(entries, key=lambda e: (e.item.importance >= LOW_IMPORTANCE, e.item.when, e.key)):
        if total <= max_bytes:
            break
        doomed.append(entry)
        total -= entry.size
    return doomed

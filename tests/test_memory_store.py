"""Agent memory's store, index and eviction on a real S3 (SeaweedFS) and a directory: two writers at once lose
nothing, a broken index.json or an unreadable object costs only themselves, eviction takes low importance and
old first, each eviction logged and recorded; the operator's `botburrow memory` commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from botburrow.cli import memory as memory_cli
from services.runner.memory.index import Index, over_budget
from services.runner.memory.items import INDEX, MemoryItem, item_key, new_id, parse, render
from services.runner.memory.service import AgentMemory
from services.runner.memory.store import DirectoryStore, S3Store
from services.runner.recorded import CollectingRecorder
from tests.fixtures.s3 import S3Server


def s3_store(s3: S3Server, prefix: str) -> S3Store:
    return S3Store(s3.bucket, prefix, endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key,
                   region="us-east-1")


def item(agent: str, text: str, *, kind: str = "conversation", when: str = "2026-12-01T00:00:00Z",
         who: str = "ron", importance: float = 0.5) -> MemoryItem:
    return MemoryItem(id=new_id(), agent=agent, kind=kind, who=who, when=when, text=text,  # type: ignore[arg-type]
                      importance=importance)


async def put(store: Any, it: MemoryItem) -> None:
    await store.put(it.agent, item_key(it), render(it))


def test_an_item_round_trips_through_its_markdown() -> None:
    it = item("a-1", "ron said: deploys are on Tuesdays\nI answered: noted")
    text = render(it).decode()
    assert text.startswith("---\nid: ") and "kind: conversation" in text and text.endswith("noted\n")
    assert parse(render(it)) == it


async def test_two_writers_at_once_lose_nothing(s3: S3Server) -> None:
    prefix = s3.new_prefix()
    one, two = s3_store(s3, prefix), s3_store(s3, prefix)
    first, second = AgentMemory(one), AgentMemory(two)
    items = [item("racer", f"note {i} from writer {i % 2}") for i in range(40)]
    try:
        # Interleaved: each writer puts its items and rewrites index.json after each (as `remember` does).
        async def writer(memory: AgentMemory, mine: list[MemoryItem]) -> None:
            for it in mine:
                await memory._put("racer", it)
                await memory.index.write_index(await memory.index.load("racer"))

        await asyncio.gather(writer(first, items[0::2]), writer(second, items[1::2]))
        fresh = Index(s3_store(s3, prefix))
        snapshot = await fresh.load("racer")
        assert sorted(e.item.id for e in snapshot.entries) == sorted(i.id for i in items)
        # The reader wrote the merged index back: it now holds every memory.
        got = await one.get("racer", INDEX)
        assert got is not None and b"note 39" in got[0]
    finally:
        await one.close()
        await two.close()


async def test_a_broken_index_is_rebuilt_and_an_unreadable_object_skipped(s3: S3Server) -> None:
    prefix = s3.new_prefix()
    store = s3_store(s3, prefix)
    try:
        good = [item("broken", f"good {i}") for i in range(3)]
        for it in good:
            await put(store, it)
        await store.put("broken", INDEX, b"{not json")
        await store.put("broken", "learnings/2026-12-01-garbage-x.md", b"\xff\xfe not a memory")
        await store.put("broken", "learnings/2026-12-01-huge-x.md", b"---\n" + b"x" * (2 << 20))
        snapshot = await Index(store).load("broken")
        assert sorted(e.item.id for e in snapshot.entries) == sorted(i.id for i in good)
        assert any("index.json unreadable" in p for p in snapshot.problems)
        assert any("garbage" in p and "unreadable" in p for p in snapshot.problems)
        assert any("huge" in p and "over 16384" in p for p in snapshot.problems)  # listed, never fetched
        rebuilt = await store.get("broken", INDEX)
        assert rebuilt is not None and rebuilt[0].startswith(b"{")
    finally:
        await store.close()


def test_eviction_takes_low_importance_first_then_the_oldest() -> None:
    from services.runner.memory.index import Entry

    def entry(text: str, importance: float, when: str) -> Entry:
        return Entry(key=text, etag="e", size=100, item=item("ev", text, importance=importance, when=when))

    old_chat, new_chat = entry("old-chat", 0.5, "2026-01-01"), entry("new-chat", 0.5, "2026-06-01")
    old_decision = entry("old-decision", 0.9, "2025-01-01")
    assert over_budget([new_chat, old_decision, old_chat], 250) == [old_chat]
    assert over_budget([new_chat, old_decision, old_chat], 150) == [old_chat, new_chat]
    assert over_budget([new_chat, old_decision, old_chat], 50) == [old_chat, new_chat, old_decision]
    assert over_budget([new_chat], 100) == []


async def test_eviction_keeps_an_agent_within_max_size_mb_and_logs_each(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    from schemas.agent import Memory, Remember

    store = DirectoryStore(tmp_path)
    memory = AgentMemory(store)
    # 1 MiB of conversations (the smallest max_size_mb), then one decision: the oldest chats make room.
    filler = "x" * 1900
    chats = [item("ev", f"{i} {filler}", when=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z") for i in range(520)]
    for it in chats:
        await put(store, it)
    snapshot = await memory.index.load("ev")
    assert snapshot.total_bytes > 1 << 20
    recorder = CollectingRecorder()
    definition: Any = type("D", (), {"name": "ev"})()
    with caplog.at_level(logging.INFO, logger="services.runner.memory.service"):
        await memory._evict(definition, Memory(enabled=True, remember=Remember(), max_size_mb=1), snapshot, recorder)
    after = await memory.index.load("ev")
    assert after.total_bytes <= 1 << 20
    evicted = {r.key for r in caplog.records if r.getMessage() == "memory evicted"}  # type: ignore[attr-defined]
    assert len(evicted) == len(chats) - len(after.entries) > 0
    kept_ids = {e.item.id for e in after.entries}
    assert all(c.id in kept_ids for c in chats[-len(after.entries):])  # the newest stayed
    (event,) = recorder.memories
    assert event["op"] == "evict" and len(event["items"]) == len(evicted)


def cli_args(action: str, agent: str | None = None, memory_id: str | None = None,
             person: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(action=action, agent=agent, id=memory_id, person=person)


async def test_the_operator_lists_shows_and_forgets(s3: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = s3.new_prefix()
    store = s3_store(s3, prefix)
    kept, dropped = item("cli-a", "ron likes teal"), item("cli-a", "the build is green", who="ana")
    about_ron = item("cli-b", "Ron asked for a changelog", who="ana")
    other = item("cli-b", "ana prefers tabs", who="ana")
    for it in (kept, dropped, about_ron, other):
        await put(store, it)
    assert await memory_cli.run(cli_args("ls", "cli-a"), s3_store(s3, prefix)) == 0
    listing = capsys.readouterr().out
    assert kept.id in listing and dropped.id in listing and "2 memories" in listing
    await memory_cli.run(cli_args("show", "cli-a", kept.id), s3_store(s3, prefix))
    assert "ron likes teal" in capsys.readouterr().out
    await memory_cli.run(cli_args("forget", "cli-a", dropped.id), s3_store(s3, prefix))
    # "Forget me" for ron, across every agent: by `who` and by name in the text.
    await memory_cli.run(cli_args("forget", person="ron"), s3_store(s3, prefix))
    out = capsys.readouterr().out
    assert "forgot 2 memories of ron" in out
    left_a, left_b = await Index(store).load("cli-a"), await Index(store).load("cli-b")
    assert [e.item.id for e in left_a.entries] == [] and [e.item.id for e in left_b.entries] == [other.id]
    with pytest.raises(memory_cli.UsageError):
        await memory_cli.run(cli_args("show", "cli-b", "nope"), s3_store(s3, prefix))
    await store.close()


def test_memory_events_decode_as_run_events() -> None:
    from schemas.events import MemoryRef, MemoryUsed, RunEvent

    event = MemoryUsed(activation_id="a", agent="x", at="t", op="retrieve", strategy="keyword",
                       items=[MemoryRef(id="1", kind="conversation", text="hi", relevance=0.9)])
    assert msgspec.json.decode(msgspec.json.encode(event), type=RunEvent) == event

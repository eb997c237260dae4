"""`botburrow memory ls|show|forget`: an operator's view of the agents' memories (issue 19).

- `ls <agent>`: every memory of the agent, oldest first (id, date, kind, who, size, first words);
- `show <agent> <id>`: one memory as stored (front matter and text);
- `forget <agent> <id>`: delete one memory;
- `forget [<agent>] --person NAME`: a person's "forget me": every memory whose `who` is NAME, or whose text
  names them, of the agent, or of every agent when none is given. Prints what it deleted.

Reads MEMORY_STORE, MEMORY_S3_ENDPOINT and the secrets `memory-access-key` / `memory-secret-key`, as the
runner does. The index each touched agent has is rewritten after a forget (a memory never comes back
from it anyway: the objects are the truth, services/runner/memory/index.py).
"""

from __future__ import annotations

import argparse
import re

from botburrow.secrets import read_secret
from botburrow.settings import CliSettings, load
from services.runner.memory.index import Entry, Index, Snapshot
from services.runner.memory.items import INDEX
from services.runner.memory.store import MemoryStore, open_store

ALL = 10**9  # an operator's command reads every memory, however many


class UsageError(Exception):
    pass


def store_from_settings() -> MemoryStore:
    settings = load(CliSettings)
    if not settings.memory_store:
        raise UsageError("MEMORY_STORE is not set: set it (and MEMORY_S3_ENDPOINT, the memory-access-key and "
                         "memory-secret-key secrets) as the runner has it")
    return open_store(settings.memory_store, endpoint=settings.memory_s3_endpoint,
                      access_key=read_secret("memory-access-key"), secret_key=read_secret("memory-secret-key"))


async def run(args: argparse.Namespace, store: MemoryStore | None = None) -> int:
    store = store or store_from_settings()
    try:
        if args.action == "forget" and args.person:
            return await forget_person(store, args.person, args.agent)
        if not args.agent:
            raise UsageError(f"memory {args.action} needs an agent")
        index = Index(store, fetch_max=ALL)
        snapshot = await index.load(args.agent)
        if args.action == "ls":
            return list_memories(snapshot)
        entry = find(snapshot, args.id)
        if args.action == "show":
            got = await store.get(args.agent, entry.key)
            print(got[0].decode(errors="replace") if got else "(gone)")
            return 0
        await forget(index, snapshot, [entry])
        return 0
    finally:
        await store.close()


def list_memories(snapshot: Snapshot) -> int:
    for problem in snapshot.problems:
        print(f"! {problem}")
    entries = sorted(snapshot.entries, key=lambda e: (e.item.when, e.key))
    for e in entries:
        first = " ".join(e.item.text.split())[:70]
        print(f"{e.item.id}  {e.item.when}  {e.item.kind:<12} {e.item.who or '-':<16} {e.size:>6} B  {first}")
    print(f"{len(entries)} memories, {snapshot.total_bytes} bytes")
    return 0


def find(snapshot: Snapshot, memory_id: str | None) -> Entry:
    if not memory_id:
        raise UsageError("give the memory's id (see `botburrow memory ls <agent>`)")
    for entry in snapshot.entries:
        if entry.item.id == memory_id:
            return entry
    raise UsageError(f"no memory {memory_id!r} for {snapshot.agent} (see `botburrow memory ls {snapshot.agent}`)")


async def forget(index: Index, snapshot: Snapshot, doomed: list[Entry]) -> None:
    for entry in doomed:
        await index.store.delete(snapshot.agent, entry.key)
        print(f"forgot {snapshot.agent} {entry.item.id} ({entry.item.kind}, {entry.item.when})")
    gone = {e.key for e in doomed}
    snapshot.entries = [e for e in snapshot.entries if e.key not in gone]
    snapshot.listed_bytes = snapshot.total_bytes - sum(e.size for e in doomed)
    await index.write_index(snapshot)


def about(entry: Entry, person: str) -> bool:
    return entry.item.who.lower() == person.lower() or re.search(
        rf"(?<!\w){re.escape(person)}(?!\w)", entry.item.text, re.IGNORECASE) is not None


async def forget_person(store: MemoryStore, person: str, agent: str | None) -> int:
    index = Index(store, fetch_max=ALL)
    agents = [agent] if agent else await store.agents()
    total = 0
    for name in agents:
        snapshot = await index.load(name)
        doomed = [e for e in snapshot.entries if about(e, person)]
        if doomed:
            await forget(index, snapshot, doomed)
            total += len(doomed)
    print(f"forgot {total} memories of {person} ({len(agents)} agent(s) searched; {INDEX} rewritten)")
    return 0

"""The agent and skill definitions a stage works with, kept current from the `configs` bucket.

`AgentDirectory.open(bus)` reads every key of the bucket (a KV watch delivers the current values, then
a marker) and keeps watching it, so ingest, scheduler and runner pods see a configsync change within
moments and never read the CONFIG stream through a shared consumer. `from_result` builds a fixed one
from a local load, for offline use.

A value no one can read (not JSON, not UTF-8, the wrong shape, too big, naming another definition) is
skipped, the previous version of that definition (if any) stays, and it is dead-lettered by the stage
that read it (`agents.dlq.<stage>`, msg id `dlq:KV_configs:<revision>`); the rest keep loading and
changes keep flowing. configsync replaces or deletes such a value on its next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from botburrow.definitions import bucket
from botburrow.definitions.letters import dead_letter, stage_of
from botburrow.definitions.source import LoadResult
from botburrow.runtime.bus import Bus
from botburrow.runtime.kvread import current_entries
from schemas.agent import AgentDefinition, SkillDefinition

log = logging.getLogger(__name__)
LETTER_FLUSH_S = 2.0
# A watch that ends or fails is opened again after this, doubling up to the maximum while it keeps failing.
FOLLOW_RETRY_S = 0.5
FOLLOW_MAX_RETRY_S = 15.0
Listener = Callable[[bucket.Kind, str, Any], Awaitable[None] | None]


class AgentDirectory:
    def __init__(self) -> None:
        self._agents: dict[str, AgentDefinition] = {}
        self._skills: dict[str, SkillDefinition] = {}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Condition()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._bus: Bus | None = None
        self._stage: str | None = None
        # Letters go out from their own task: a slow DLQ publish must not hold up loading or following.
        self._letters: asyncio.Queue[tuple[KeyValue.Entry, str]] = asyncio.Queue()
        self._letter_task: asyncio.Task[None] | None = None
        self.unreadable: dict[str, str] = {}  # bucket key -> why its current value was skipped
        self._following = False

    @classmethod
    def from_result(cls, result: LoadResult) -> AgentDirectory:
        """A fixed directory of what a local load found (no bucket, no watch)."""
        directory = cls()
        directory._agents = dict(result.agents)
        directory._skills = dict(result.skills)
        return directory

    @classmethod
    async def open(cls, bus: Bus, *, stage: str | None = None) -> AgentDirectory:
        """Load every definition in the `configs` bucket, then follow its changes until `close()`.

        `stage` files the dead letters of unreadable values (default: the stage `run_stage` named the
        connection after; none for an operator command)."""
        directory = cls()
        directory._bus, directory._stage = bus, stage or stage_of(bus)
        directory._letter_task = asyncio.create_task(directory._send_letters(), name="agent-directory-letters")
        kv = await bus.kv(bucket.BUCKET)
        # Loaded = everything written before we opened. Waiting for the watcher's "caught up" marker
        # instead would wait for configsync to stop writing (minutes, while it fills a big bucket).
        state = (await bus.js.stream_info(bucket.STREAM)).state
        directory._watcher = await kv.watchall()
        async for entry in current_entries(directory._watcher, state.last_seq, state.messages):
            if isinstance(change := directory._apply(entry), str):
                directory._letters.put_nowait((entry, change))
        directory._following = True
        directory._task = asyncio.create_task(directory._follow(), name="agent-directory-watch")
        log.info("agent directory loaded", extra={"agents": len(directory._agents),
                                                  "skills": len(directory._skills)})
        return directory

    def agents(self) -> dict[str, AgentDefinition]:
        return dict(self._agents)

    def get(self, name: str) -> AgentDefinition | None:
        return self._agents.get(name)

    def skills(self) -> dict[str, SkillDefinition]:
        return dict(self._skills)

    def add_listener(self, callback: Listener) -> None:
        """`callback(kind, name, definition or None when deleted)` after each change; may be async."""
        self._listeners.append(callback)

    async def wait_until(self, predicate: Callable[[AgentDirectory], bool], timeout_s: float) -> None:
        """Wait for a change that makes `predicate` true (raises TimeoutError after timeout_s)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout_s)

    async def wait_for(self, name: str, timeout_s: float, *, digest: str | None = None) -> AgentDefinition:
        """The agent `name` once it is present (with content hash `digest`, when given)."""
        def present(directory: AgentDirectory) -> bool:
            found = directory.get(name)
            return found is not None and (digest is None or found.hash == digest)

        await self.wait_until(present, timeout_s)
        found = self.get(name)
        assert found is not None
        return found

    async def close(self) -> None:
        if self._letter_task is not None:  # a moment for the letters still queued; the next reader sends the rest
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._letters.join(), LETTER_FLUSH_S)
        for task in (self._task, self._letter_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:  # the connection may be closing already
                pass

    # --- internals ---------------------------------------------------------------------------------

    def _apply(self, entry: KeyValue.Entry) -> tuple[bucket.Kind, str, Any] | str | None:
        """The change `entry` makes; a string says why its value cannot be read (nothing changed)."""
        parsed = bucket.split_key(entry.key)
        if parsed is None:
            return None
        kind, name = parsed
        table: dict[str, Any] = self._agents if kind == "agent" else self._skills
        self.unreadable.pop(entry.key, None)
        if entry.operation in (KV_DEL, KV_PURGE) or entry.value is None:
            if table.pop(name, None) is None:
                return None
            return kind, name, None
        try:
            definition = bucket.read(kind, name, entry.value)
        except bucket.UnreadableValue as exc:
            # Keep what we had rather than lose the agent (a newer configsync's value, or garbage).
            self.unreadable[entry.key] = str(exc)
            log.error("configs value cannot be read: skipped, the previous version (if any) stays",
                      extra={"key": entry.key, "revision": entry.revision, "error": str(exc)[:300],
                             "kept": name in table})
            return str(exc)
        table[name] = definition
        return kind, name, definition

    async def _send_letters(self) -> None:
        while True:
            entry, reason = await self._letters.get()
            if self._bus is not None:
                await dead_letter(self._bus, self._stage, entry.key, entry.revision, entry.value or b"",
                                  f"unreadable configs value {entry.key}: {reason}")
            self._letters.task_done()

    @property
    def following(self) -> bool:
        """A readiness check for the stages: false while the watch on the bucket is down (it is re-opened)."""
        return self._following

    async def _follow(self) -> None:
        """Follow the bucket for as long as the directory is open. A watch that ends or fails (NATS gone
        under it) is re-opened, reading every current value again, so a stage never keeps working from a
        stale directory without saying so: it is not ready meanwhile."""
        delay_s = FOLLOW_RETRY_S
        while True:
            try:
                await self._follow_watcher()
                error: Exception | None = None
            except Exception as exc:  # whatever the watch raised, the answer is the same: open it again
                error = exc
            self._following = False
            log.error("configs watch ended: opening it again", extra={"error": repr(error) if error else "ended",
                                                                       "retry_in_s": delay_s})
            await asyncio.sleep(delay_s)
            delay_s = min(FOLLOW_MAX_RETRY_S, delay_s * 2)
            with contextlib.suppress(Exception):
                await self._reopen()
                self._following, delay_s = True, FOLLOW_RETRY_S

    async def _reopen(self) -> None:
        assert self._bus is not None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        self._watcher = await (await self._bus.kv(bucket.BUCKET)).watchall()

    async def _follow_watcher(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:
                continue
            change = self._apply(entry)
            if isinstance(change, str):
                self._letters.put_nowait((entry, change))
                continue
            if change is None:
                continue
            async with self._changed:
                self._changed.notify_all()
            await self._notify(*change)

    async def _notify(self, kind: bucket.Kind, name: str, definition: Any) -> None:
        for callback in list(self._listeners):
            try:
                outcome = callback(kind, name, definition)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("agent directory listener failed", extra={"kind": kind, "name": name})

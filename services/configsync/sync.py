"""Sync passes (`Syncer`, `sync_once`) and the polling loop (`sync_forever`) of the configsync stage.

Cost at 1,000 agents (bench/configsync.py): the first pass parses everything in a worker thread and
writes what differs; later passes of the same `Syncer` list the source, parse only changed folders
and trust their in-memory bucket hashes while the bucket's stream sequence shows no other writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

import msgspec
import nats.errors
from nats.js.api import StreamState
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from prometheus_client import Counter, Gauge

from botburrow.definitions import bucket
from botburrow.definitions.letters import dead_letter
from botburrow.definitions.parse import DefinitionError
from botburrow.definitions.source import DefinitionSource, LoadResult, SourceError, is_safe_name
from botburrow.runtime.bus import Bus
from botburrow.runtime.health import Health
from botburrow.runtime.kvread import current_entries
from schemas.events import ConfigChanged
from services.configsync.parsing import ParseCache
from streams import subjects

log = logging.getLogger(__name__)
T = TypeVar("T")
YIELD_EVERY = 100

SYNCS = Counter("botburrow_configsync_syncs_total", "Sync passes by result", ["result"])
CHANGES = Counter("botburrow_configsync_changes_total", "Definitions written or deleted", ["kind", "change"])
ERRORS = Counter("botburrow_configsync_errors_total", "Definition errors, counted when first seen", ["kind"])
INVALID = Gauge("botburrow_configsync_invalid_definitions", "Definitions currently failing to load")
UNREADABLE = Counter("botburrow_configsync_unreadable_values_total",
                     "Bucket values no stage could read, dead-lettered then replaced or deleted")
LAST_SYNC = Gauge("botburrow_configsync_last_success_timestamp_seconds", "When the source was last read")


class SyncReport(msgspec.Struct, kw_only=True):
    """What one pass changed; names are `<kind>.<name>` (the bucket keys)."""

    added: list[str] = msgspec.field(default_factory=list)
    updated: list[str] = msgspec.field(default_factory=list)
    deleted: list[str] = msgspec.field(default_factory=list)
    kept: list[str] = msgspec.field(default_factory=list)  # broken now; the previous version stays
    errors: list[str] = msgspec.field(default_factory=list)  # `<file>: <field path>: <message>`
    # `<key>: <why>` of each bucket value no stage could read: dead-lettered, then rewritten or deleted.
    unreadable: list[str] = msgspec.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.deleted)


class Unreadable(msgspec.Struct, frozen=True):
    """A bucket value no stage can read: dead-lettered, then replaced from the source or deleted."""

    key: str
    revision: int | None  # as nats-py types a bucket entry's; a watched entry always has one
    value: bytes
    reason: str


def _hash_of(entry: KeyValue.Entry, unreadable: dict[str, Unreadable]) -> str | None:
    """The content hash a bucket value carries; "" when unreadable (noted in `unreadable`, then rewritten
    from the source or deleted), None if the key is not ours."""
    parsed = bucket.split_key(entry.key)
    if parsed is None or entry.value is None:
        return None
    try:
        return bucket.read(parsed[0], parsed[1], entry.value).hash
    except bucket.UnreadableValue as exc:
        unreadable[entry.key] = Unreadable(entry.key, entry.revision, entry.value, str(exc))
        return ""


async def _stream_state(bus: Bus) -> StreamState:
    """The bucket's stream state: its last sequence moves with every put or delete, by anyone."""
    return (await bus.js.stream_info(bucket.STREAM)).state


async def _stream_seq(bus: Bus) -> int:
    return (await _stream_state(bus)).last_seq


async def _bucket_hashes(kv: KeyValue, last_seq: int, messages: int,
                         unreadable: dict[str, Unreadable]) -> dict[str, str]:
    """Current bucket key -> the content hash its value carries, read with one watch (not a get per key);
    the values that cannot be read are put in `unreadable`."""
    hashes: dict[str, str] = {}
    if not last_seq or not messages:
        return hashes
    watcher = await kv.watchall()
    try:
        async for entry in current_entries(watcher, last_seq, messages):
            unreadable.pop(entry.key, None)
            digest = None if entry.operation in (KV_DEL, KV_PURGE) else _hash_of(entry, unreadable)
            if digest is None:
                hashes.pop(entry.key, None)
            else:
                hashes[entry.key] = digest
            if len(hashes) % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # buffered entries never suspend the loop: let others run
    finally:
        with contextlib.suppress(Exception):  # the connection may be closing already
            await watcher.stop()
    return hashes


async def _uninterrupted(write: Awaitable[None]) -> None:
    """Run a bucket write + its event to the end even if the pass is cancelled half way.

    A cancel between the two would leave a version in the bucket whose CONFIG event is never sent (the
    next pass finds nothing to change); the pair takes milliseconds, so stop waits for it.
    """
    task = asyncio.ensure_future(write)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.shield(task)
        raise


def _error_key(error: DefinitionError) -> str | None:
    """The bucket key of the definition an error belongs to (`agents/<name>/...` -> `agent.<name>`); None
    for a refused path outside the layout (`/etc/passwd`, `agents/../x`), which belongs to no definition."""
    parts = error.path.split("/")
    if len(parts) < 2 or parts[0] not in ("agents", "skills") or not is_safe_name(parts[1]):
        return None
    return bucket.key("agent" if parts[0] == "agents" else "skill", parts[1])


def _broken_keys(result: LoadResult) -> dict[str, str]:
    """Bucket key -> error line, for each definition whose files failed to parse."""
    return {key: str(error) for error in result.errors if (key := _error_key(error)) is not None}


async def _publish(bus: Bus, kind: bucket.Kind, name: str, digest: str, *, deleted: bool) -> None:
    subject = subjects.config_agent(name) if kind == "agent" else subjects.config_skill(name)
    event = ConfigChanged(name=name, hash=digest, deleted=deleted)
    await bus.publish(subject, event, msg_id=bucket.msg_id(kind, name, digest, deleted=deleted))


_Wanted = tuple[bucket.Kind, str, bucket.Definition]


def _definitions(result: LoadResult) -> list[_Wanted]:
    return [*(("agent", name, d) for name, d in sorted(result.agents.items())),
            *(("skill", name, d) for name, d in sorted(result.skills.items()))]


class Syncer:
    """configsync's passes, keeping what a pass learned for the next one.

    Kept: the parsed definitions by folder (a pass parses only what changed at the source, in a thread)
    and the bucket's hashes with the stream sequence they describe (a pass reads the bucket again only
    when someone else wrote it since: another replica, an operator). A new `Syncer` (a process start)
    reads and reconciles everything once.
    """

    def __init__(self, bus: Bus, source: DefinitionSource, *, known_errors: set[str] | None = None) -> None:
        self.bus, self.source = bus, source
        # Each definition error is logged once, when it first appears, instead of on every poll.
        self.known_errors = set() if known_errors is None else known_errors
        self.parser = ParseCache()
        self._hashes: dict[str, str] = {}
        self._bucket_seq: int | None = None  # the stream sequence `_hashes` describes; None: read again
        self._unreadable: dict[str, Unreadable] = {}  # found by the last read of the bucket, until repaired

    async def sync(self) -> SyncReport:
        """One pass: source -> `configs` bucket -> CONFIG events. Raises SourceError if the source is unreadable."""
        result = await self.parser.load(await self.source.snapshot())
        kv = await self.bus.kv(bucket.BUCKET)
        state = await _stream_state(self.bus)
        seq = state.last_seq
        if seq != self._bucket_seq:
            self._bucket_seq = None
            self._unreadable = {}
            self._hashes = await _bucket_hashes(kv, seq, state.messages, self._unreadable)
        current = dict(self._hashes)
        broken = _broken_keys(result)
        report = SyncReport(errors=sorted(str(error) for error in result.errors))
        await self._report_unreadable(report)
        _log_errors(result, current, self.known_errors)
        wanted = _definitions(result)
        writes = await self._write(kv, wanted, current, report)
        gone = sorted(set(current) - {bucket.key(kind, name) for kind, name, _ in wanted})
        writes += await self._delete(kv, gone, current, broken, report)
        if writes:
            seq_after = await _stream_seq(self.bus)
            # Ours were the only writes since `seq`: memory matches the bucket. Else read it next pass.
            self._bucket_seq = seq_after if seq_after == seq + writes else None
        else:
            self._bucket_seq = seq
        INVALID.set(len(broken))
        return report

    async def _report_unreadable(self, report: SyncReport) -> None:
        """Dead-letter each unreadable value (one letter per revision, whichever stage files it first)."""
        for found in sorted(self._unreadable.values(), key=lambda u: u.key):
            report.unreadable.append(f"{found.key}: {found.reason}")
            UNREADABLE.inc()
            log.error("configs value cannot be read: dead-lettered, rewritten from the source or deleted",
                      extra={"key": found.key, "revision": found.revision, "error": found.reason[:300]})
            await dead_letter(self.bus, "configsync", found.key, found.revision, found.value,
                              f"unreadable configs value {found.key}: {found.reason}")

    async def _write(self, kv: KeyValue, wanted: list[_Wanted], current: dict[str, str], report: SyncReport) -> int:
        writes = 0
        for kind, name, definition in wanted:
            key = bucket.key(kind, name)
            if current.get(key) == definition.hash:
                continue
            try:
                await _uninterrupted(self._put(kv, kind, name, definition))
            except nats.errors.MaxPayloadError:  # the server's limit is lower than ours: this one only
                report.errors.append(f"{key}: the stored definition is over the NATS server's max_payload")
                if key in current:
                    report.kept.append(key)
                log.error("definition too large for the NATS server; not written", extra={"key": key})
                continue
            writes += 1
            (report.updated if key in current else report.added).append(key)
            CHANGES.labels(kind, "updated" if key in current else "added").inc()
            log.info("definition written", extra={"key": key, "hash": definition.hash})
        return writes

    async def _put(self, kv: KeyValue, kind: bucket.Kind, name: str, definition: bucket.Definition) -> None:
        key = bucket.key(kind, name)
        await kv.put(key, bucket.encode(definition))  # bucket first: the event's reader finds it
        self._hashes[key] = definition.hash
        self._unreadable.pop(key, None)
        await _publish(self.bus, kind, name, definition.hash, deleted=False)

    async def _delete(self, kv: KeyValue, gone: list[str], current: dict[str, str], broken: dict[str, str],
                      report: SyncReport) -> int:
        writes = 0
        for key in gone:
            if key in broken and current[key]:  # an unreadable value ("") is no previous version to keep
                report.kept.append(key)
                continue
            kind, name = bucket.split_key(key) or ("agent", key)
            await _uninterrupted(self._remove(kv, kind, name, current[key]))
            writes += 1
            report.deleted.append(key)
            CHANGES.labels(kind, "deleted").inc()
            log.info("definition deleted", extra={"key": key, "hash": current[key]})
        return writes

    async def _remove(self, kv: KeyValue, kind: bucket.Kind, name: str, digest: str) -> None:
        key = bucket.key(kind, name)
        await kv.delete(key)  # bucket first, as for a write
        self._hashes.pop(key, None)
        self._unreadable.pop(key, None)
        await _publish(self.bus, kind, name, digest, deleted=True)


async def sync_once(bus: Bus, source: DefinitionSource, *, known_errors: set[str] | None = None) -> SyncReport:
    """One full pass with nothing remembered (reads and parses everything); see `Syncer`."""
    return await Syncer(bus, source, known_errors=known_errors).sync()


def _log_errors(result: LoadResult, current: dict[str, str], known_errors: set[str] | None) -> None:
    for error in result.errors:
        line = str(error)
        if known_errors is not None and line in known_errors:
            continue
        key = _error_key(error)
        # A refused path outside the layout belongs to no definition (key None): counted as "other".
        ERRORS.labels(key.split(".")[0] if key is not None else "other").inc()
        extra = {"path": error.path, "field_path": error.field_path, "error": error.message}
        if key in current:
            log.error("definition is invalid; keeping its previous version, the agent keeps working",
                      extra={**extra, "key": key, "kept_hash": current[key]})
        else:
            log.error("definition is invalid and skipped", extra={**extra, "key": key})
    if known_errors is not None:
        known_errors.clear()
        known_errors.update(str(error) for error in result.errors)


async def until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None when `stop` is set first: then `work` is cancelled (and awaited)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        task.cancel()  # a no-op once it finished
        await asyncio.wait({task})
    return None if task.cancelled() else task.result()


async def sync_forever(bus: Bus, source: DefinitionSource, *, poll_s: float, stop: asyncio.Event,
                       health: Health | None = None) -> None:
    """Sync every `poll_s` until `stop` is set. Ready while NATS is connected, the source answered and the
    last pass ran to its end (`synced`: false while passes fail, e.g. the bucket cannot be written, so a
    stuck configsync is not "ready and fine"). An unreadable bucket value does not fail a pass: it is
    dead-lettered and replaced or deleted in that pass, and listed in the report.

    A pass races `stop`: a stop cancels it where it is (safe: each bucket write and its event finish
    together, and the next start reconciles against the bucket).
    """
    reached = synced = False
    if health is not None:
        health.add_check("nats", lambda: bus.nc.is_connected)
        health.add_check("source", lambda: reached)
        health.add_check("synced", lambda: synced)
    syncer = Syncer(bus, source)
    log.info("configsync started", extra={"source": source.description, "poll_s": poll_s})
    while not stop.is_set():
        try:
            report = await until_stopped(syncer.sync(), stop)
        except SourceError as exc:
            reached = synced = False
            SYNCS.labels("source_error").inc()
            log.error("definitions source unreachable; the bucket keeps its definitions",
                      extra={"source": source.description, "error": str(exc)})
        except Exception:
            synced = False
            SYNCS.labels("failed").inc()
            log.exception("sync pass failed; retrying next poll")
        else:
            if report is None:
                log.info("sync pass cancelled by stop")
                return
            reached = synced = True
            SYNCS.labels("ok").inc()
            LAST_SYNC.set_to_current_time()
            if report.changed:
                log.info("definitions synced", extra={"added": report.added, "updated": report.updated,
                                                      "deleted": report.deleted, "unreadable": report.unreadable})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)

"""One sync pass (`sync_once`) and the polling loop (`sync_forever`) of the configsync stage."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from botburrow.definitions import bucket
from botburrow.definitions.parse import DefinitionError
from botburrow.definitions.source import DefinitionSource, LoadResult, SourceError, load_all
from botburrow.runtime.bus import Bus
from botburrow.runtime.health import Health
from botburrow.schemas.events import ConfigChanged
from botburrow.streams import subjects

log = logging.getLogger(__name__)

SYNCS = Counter("botburrow_configsync_syncs_total", "Sync passes by result", ["result"])
CHANGES = Counter("botburrow_configsync_changes_total", "Definitions written or deleted", ["kind", "change"])
ERRORS = Counter("botburrow_configsync_errors_total", "Definition errors, counted when first seen", ["kind"])
INVALID = Gauge("botburrow_configsync_invalid_definitions", "Definitions currently failing to load")
LAST_SYNC = Gauge("botburrow_configsync_last_success_timestamp_seconds", "When the source was last read")


class SyncReport(msgspec.Struct, kw_only=True):
    """What one pass changed; names are `<kind>.<name>` (the bucket keys)."""

    added: list[str] = msgspec.field(default_factory=list)
    updated: list[str] = msgspec.field(default_factory=list)
    deleted: list[str] = msgspec.field(default_factory=list)
    kept: list[str] = msgspec.field(default_factory=list)  # broken now; the previous version stays
    errors: list[str] = msgspec.field(default_factory=list)  # `<file>: <field path>: <message>`

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.deleted)


async def _bucket_hashes(kv: KeyValue) -> dict[str, str]:
    """Current bucket key -> the content hash its value carries."""
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    hashes = {}
    for key in keys:
        parsed = bucket.split_key(key)
        if parsed is None:
            continue
        entry = await kv.get(key)
        if entry.value is None:
            continue
        try:
            hashes[key] = bucket.decode(parsed[0], entry.value).hash
        except (msgspec.DecodeError, msgspec.ValidationError):
            hashes[key] = ""  # unreadable: rewrite it from the source
    return hashes


def _error_key(error: DefinitionError) -> str:
    """The bucket key of the definition an error belongs to (`agents/<name>/...` -> `agent.<name>`)."""
    folder, name = error.path.split("/")[:2]
    return bucket.key("agent" if folder == "agents" else "skill", name)


def _broken_keys(result: LoadResult) -> dict[str, str]:
    """Bucket key -> error line, for each definition whose files failed to parse."""
    return {_error_key(error): str(error) for error in result.errors}


async def _publish(bus: Bus, kind: bucket.Kind, name: str, digest: str, *, deleted: bool) -> None:
    subject = subjects.config_agent(name) if kind == "agent" else subjects.config_skill(name)
    event = ConfigChanged(name=name, hash=digest, deleted=deleted)
    await bus.publish(subject, event, msg_id=bucket.msg_id(kind, name, digest, deleted=deleted))


async def sync_once(bus: Bus, source: DefinitionSource, *, known_errors: set[str] | None = None) -> SyncReport:
    """One pass: source -> `configs` bucket -> CONFIG events. Raises SourceError if the source is unreadable.

    `known_errors` (kept by the caller across passes) makes each definition error logged once, when it
    first appears, instead of on every poll.
    """
    result = await load_all(source)
    kv = await bus.kv(bucket.BUCKET)
    current = await _bucket_hashes(kv)
    broken = _broken_keys(result)
    report = SyncReport(errors=sorted(broken.values()))
    _log_errors(result, current, known_errors)

    definitions: list[tuple[bucket.Kind, str, bucket.Definition]] = [
        *(("agent", name, d) for name, d in sorted(result.agents.items())),
        *(("skill", name, d) for name, d in sorted(result.skills.items())),
    ]
    for kind, name, definition in definitions:
        key = bucket.key(kind, name)
        if current.get(key) == definition.hash:
            continue
        await kv.put(key, bucket.encode(definition))  # bucket first: the event's reader finds it
        await _publish(bus, kind, name, definition.hash, deleted=False)
        (report.updated if key in current else report.added).append(key)
        CHANGES.labels(kind, "updated" if key in current else "added").inc()
        log.info("definition written", extra={"key": key, "hash": definition.hash})

    for key in sorted(set(current) - {bucket.key(k, n) for k, n, _ in definitions}):
        if key in broken:
            report.kept.append(key)
            continue
        kind, name = bucket.split_key(key) or ("agent", key)
        await kv.delete(key)
        await _publish(bus, kind, name, current[key], deleted=True)
        report.deleted.append(key)
        CHANGES.labels(kind, "deleted").inc()
        log.info("definition deleted", extra={"key": key, "hash": current[key]})
    INVALID.set(len(broken))
    return report


def _log_errors(result: LoadResult, current: dict[str, str], known_errors: set[str] | None) -> None:
    for error in result.errors:
        line = str(error)
        if known_errors is not None and line in known_errors:
            continue
        key = _error_key(error)
        ERRORS.labels(key.split(".")[0]).inc()
        extra = {"path": error.path, "field_path": error.field_path, "error": error.message}
        if key in current:
            log.error("definition is invalid; keeping its previous version, the agent keeps working",
                      extra={**extra, "key": key, "kept_hash": current[key]})
        else:
            log.error("definition is invalid and skipped", extra={**extra, "key": key})
    if known_errors is not None:
        known_errors.clear()
        known_errors.update(str(error) for error in result.errors)


async def sync_forever(bus: Bus, source: DefinitionSource, *, poll_s: float, stop: asyncio.Event,
                       health: Health | None = None) -> None:
    """Sync every `poll_s` until `stop` is set. Ready while NATS is connected and the source answered."""
    reached = False
    if health is not None:
        health.add_check("nats", lambda: bus.nc.is_connected)
        health.add_check("source", lambda: reached)
    known_errors: set[str] = set()
    log.info("configsync started", extra={"source": source.description, "poll_s": poll_s})
    while not stop.is_set():
        try:
            report = await sync_once(bus, source, known_errors=known_errors)
        except SourceError as exc:
            reached = False
            SYNCS.labels("source_error").inc()
            log.error("definitions source unreachable; the bucket keeps its definitions",
                      extra={"source": source.description, "error": str(exc)})
        except Exception:
            SYNCS.labels("failed").inc()
            log.exception("sync pass failed; retrying next poll")
        else:
            reached = True
            SYNCS.labels("ok").inc()
            LAST_SYNC.set_to_current_time()
            if report.changed:
                log.info("definitions synced", extra={"added": report.added, "updated": report.updated,
                                                      "deleted": report.deleted})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)

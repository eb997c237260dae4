"""Reading what a KV bucket holds now: the one way, because nats-py's own way drops entries.

nats-py's watch queues its "nothing pending" marker (None) before the first entry when that entry is
on its way while the watch asks for its consumer info (`num_pending` 0, nothing received yet). A reader
that stops at the marker sees an empty bucket now and then: `kv.keys()` missed a key written just
before (a CI failure), a scheduler replica would have started without its agents' states, configsync
would have rewritten everything. So the current values are read up to the stream's last sequence as
it was before the watch, and a marker before any entry is ignored while the stream holds messages.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import nats.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)
# Longest wait for the next entry while catching up; only a bucket whose newest message vanished
# (expired by its TTL between the two reads) waits it.
CATCH_UP_ENTRY_TIMEOUT_S = 10.0


async def current_entries(watcher: KeyValue.KeyWatcher, last_seq: int, messages: int) -> AsyncIterator[KeyValue.Entry]:
    """The entries a fresh `watchall()` delivers, up to the stream's `last_seq` (its state read before
    the watch), deletions included; the watcher goes on with the changes after them."""
    if not last_seq or not messages:
        return
    seen = False
    while True:
        try:
            entry = await watcher.updates(timeout=CATCH_UP_ENTRY_TIMEOUT_S)
        except nats.errors.TimeoutError:
            log.warning("bucket watch stalled before its last revision; going on with what it read",
                        extra={"last_seq": last_seq})
            return
        if entry is None:
            if seen:
                return  # the marker after the last entry: every current value has been delivered
            continue
        if not isinstance(entry, KeyValue.Entry):  # the watcher was stopped
            return
        seen = True
        yield entry
        if entry.revision is None or entry.revision >= last_seq:  # a watched entry always has its revision
            return


async def bucket_entries(kv: KeyValue, *, meta_only: bool = False) -> dict[str, KeyValue.Entry]:
    """Every key the bucket holds now and its entry (deleted and purged keys left out), with one watch
    (not a get per key). `meta_only`: the entries carry no values (for the keys alone)."""
    state = (await kv.status()).stream_info.state
    watcher = await kv.watchall(meta_only=meta_only)
    live: dict[str, KeyValue.Entry] = {}
    try:
        async for entry in current_entries(watcher, state.last_seq, state.messages):
            if entry.operation in (KV_DEL, KV_PURGE):
                live.pop(entry.key, None)
            else:
                live[entry.key] = entry
    finally:
        await watcher.stop()
    return live


async def bucket_keys(kv: KeyValue) -> list[str]:
    """The keys the bucket holds now, sorted; [] for an empty bucket (where `kv.keys()` raises)."""
    return sorted(await bucket_entries(kv, meta_only=True))

"""configsync: copy agent definitions from their source into the `configs` bucket and announce changes.

Each pass loads the source (`AGENTS_SOURCE`), compares every definition's content hash with the
bucket, writes what changed (bucket first), then publishes `ConfigChanged` on CONFIG. A definition
that is broken now but was valid before keeps its previous version in the bucket, so that agent keeps
working; definitions gone from the source are deleted. Layout: `botburrow.definitions`.
"""

from botburrow.services.configsync.sync import SyncReport, sync_forever, sync_once

__all__ = ["SyncReport", "sync_forever", "sync_once"]

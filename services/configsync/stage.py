"""configsync: copy agent definitions from their source into the `configs` bucket and announce changes.

Each pass loads the source (`AGENTS_SOURCE`), compares every definition's content hash with the
bucket, writes what changed (bucket first), then publishes `ConfigChanged` on CONFIG. A definition
that is broken now but was valid before keeps its previous version in the bucket, so that agent keeps
working; definitions gone from the source are deleted. Layout: `botburrow.definitions`.

The stage keeps one `Syncer`: after its first pass (a full reconcile against the bucket), a pass parses
only the definitions whose files changed, in a worker thread, and reads the bucket again only when
someone else wrote it. A pass is cancelled by stop (SIGTERM), wherever it is.
"""

from botburrow.definitions.source import open_source
from botburrow.runtime import service
from botburrow.runtime.service import StageContext
from botburrow.settings import ConfigsyncSettings
from services.configsync.sync import Syncer, SyncReport, sync_forever, sync_once

__all__ = ["SyncReport", "Syncer", "main", "run", "sync_forever", "sync_once"]


async def run(ctx: StageContext[ConfigsyncSettings]) -> None:
    source = open_source(ctx.settings.agents_source, ctx.environ,
                         max_file_bytes=ctx.settings.definition_file_max_bytes)
    await sync_forever(ctx.bus, source, poll_s=ctx.settings.config_poll_seconds, stop=ctx.stop,
                       health=ctx.health)


def main() -> None:
    service.main("configsync", run)

"""The ingest stage: every POLL_INTERVAL_SECONDS, each known agent's Hub news onto NOTIFICATIONS.

The mode follows what the Hub serves (`mode`): its own notifications, polled and marked read after
JetStream acknowledged them (`poller`), or, on a Hub without them (Moltbook), notifications derived from
posts and comments (`feed`). With HUB_WEBHOOKS on, the Hub's signed inbox pings (`hooks`) wake ingest for
that agent at once; pings that come while a round runs are coalesced into the next.

The known agents are those in the `configs` bucket; an agent without a Hub key is skipped. The Hub
being down does not stop the stage: it reports not ready (`/readyz` check `hub`: the Hub answers) and
recovers by itself on a later round. A route the Hub does not serve is a capability, shown under
`details.hub`, never a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from botburrow.definitions.directory import AgentDirectory
from botburrow.hub.capabilities import detect_capabilities
from botburrow.hub.client import HubClient
from botburrow.hub.connect import hub_client_for_stage
from botburrow.hub.webhook import secret_name
from botburrow.runtime import service
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import StageContext
from botburrow.secrets import AgentKeys, read_secret
from botburrow.settings import IngestSettings
from services.ingest.feed import FeedIngest
from services.ingest.feedstate import FeedState
from services.ingest.hooks import InboxHooks
from services.ingest.mode import HubModes
from services.ingest.poller import Poller, PollReport

STAGE = "ingest"
# Longest cool-down of the Hub circuit: a Hub that is back is noticed within one more round.
MAX_BREAKER_COOLDOWN_S = 30.0
MAX_BUDGET_WAIT_S = 5.0
# Feed rounds of all replicas together: one per this share of POLL_INTERVAL_SECONDS (below 1, so that
# one replica's slightly early timer does not skip its turn).
REPLICA_ROUND_GAP = 0.8

__all__ = ["STAGE", "PollReport", "Poller", "main", "run"]
log = logging.getLogger(__name__)


async def hub_client(settings: IngestSettings, bus: Bus) -> HubClient:
    # background: ingest spends only what the runners leave of the Hub's shared request budget, and waits
    # little for it: a round cut short goes on from the same state at the next one.
    interval_s = settings.poll_interval_seconds
    return await hub_client_for_stage(settings, bus, background=True,
                                      breaker_cooldown_s=min(MAX_BREAKER_COOLDOWN_S, interval_s),
                                      budget_wait_s=min(MAX_BUDGET_WAIT_S, interval_s))


class Wake:
    """Agents whose Hub pinged, coalesced until the next push round takes them."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self._event = asyncio.Event()

    def add(self, agent: str) -> None:
        self.pending.add(agent)
        self._event.set()

    async def take(self, stop: asyncio.Event) -> set[str]:
        """The agents pinged since the last take (waiting for one), or none once `stop` is set."""
        pinged, stopped = asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({pinged, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pinged.cancel()
            stopped.cancel()
        self._event.clear()
        agents, self.pending = self.pending, set()
        return agents


async def run(ctx: StageContext[IngestSettings]) -> None:
    settings = ctx.settings
    ctx.health.add_check("hub", lambda: False)  # before the first await: not ready until the client exists
    hub = await hub_client(settings, ctx.bus)
    ctx.health.add_check("hub", lambda: hub.available)
    keys = AgentKeys(ctx.environ)

    async def key_of(agent: str) -> str | None:
        # Key files are read off the event loop (a mounted Kubernetes secret may be slow to read).
        return await asyncio.to_thread(keys.get, agent)

    modes = HubModes(hub, detect_capabilities, configured=settings.ingest_mode, webhooks=settings.hub_webhooks,
                     every_s=settings.hub_capabilities_probe_seconds)
    ctx.health.add_detail("hub", modes.detail)
    poller = Poller(hub, ctx.bus, key_of)
    feed = FeedIngest(hub, ctx.bus, await FeedState.open(ctx.bus), key_of, newest=settings.feed_threads_newest,
                      reads_per_round=settings.feed_comment_reads_per_round, submolts=settings.feed_submolts,
                      min_gap_s=settings.poll_interval_seconds * REPLICA_ROUND_GAP)
    directory = await AgentDirectory.open(ctx.bus)
    ctx.health.add_check("definitions", lambda: directory.following)
    wake, one_feed_round_at_a_time = Wake(), asyncio.Lock()
    if settings.hub_webhooks:
        _serve_hooks(ctx, directory, feed, wake)

    async def ingest(agents: list[str], urgent: Iterable[str] = ()) -> bool:
        """One round in the current mode; whether it called the Hub (else a probe keeps /readyz true).
        A ping's poll of notifications does not wait for a full round (polling an agent twice at once
        is harmless: the same message ids); feed rounds, which share their state, go one at a time."""
        await modes.refresh_if_due(await _any_key(agents, key_of))
        if modes.mode == "notifications":
            poller.mark_read = not modes.absent("mark_read")
            report = await poller.poll_once(list(urgent) or agents)
            modes.mark_absent(report.endpoint_missing)
            return bool(report.published or report.errors or report.endpoint_missing)
        if modes.mode == "feed":
            async with one_feed_round_at_a_time:
                derived = await feed.round(agents, urgent)
            return derived.requests > 0 or derived.stopped == "other_replica"
        return False

    async def poll_forever() -> None:
        while not ctx.stop.is_set():
            if not await ingest(list(directory.agents())):
                await hub.probe()  # no agent call this round: learn whether the Hub answers, for /readyz
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stop.wait(), settings.poll_interval_seconds)

    async def push_forever() -> None:
        while not ctx.stop.is_set():
            if pinged := await wake.take(ctx.stop):
                await ingest(list(directory.agents()), pinged)

    try:
        # A round that raises (a bug, NATS trouble) must not end polling for good: not ready, then again.
        await asyncio.gather(service.supervise(ctx.health, "poll", poll_forever, ctx.stop),
                             *([service.supervise(ctx.health, "push", push_forever, ctx.stop)]
                               if settings.hub_webhooks else []))
    finally:
        await directory.close()
        await hub.aclose()


def _serve_hooks(ctx: StageContext[IngestSettings], directory: AgentDirectory, feed: FeedIngest, wake: Wake) -> None:
    """`POST /hooks/inbox/<agent>` on the stage's port; the path names an agent by config or Hub name."""
    def resolve(name: str) -> str | None:
        return name if directory.get(name) is not None else feed.agent_named(name)

    ctx.health.add_route(InboxHooks(resolve, lambda a: read_secret(secret_name(a), environ=ctx.environ),
                                    wake.add).route())


async def _any_key(agents: list[str], key_of: Callable[[str], Awaitable[str | None]]) -> str | None:
    """Some agent's key, for the capability probes (None: probe without one)."""
    for agent in agents:
        key = await key_of(agent)
        if key:
            return key
    return None


def main() -> None:
    service.main(STAGE, run)

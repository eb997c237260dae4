"""Real Hubs (issue 16): how fast a mention becomes an activation, pushed or polled, and what
feed-derived ingestion spends of a Moltbook-like Hub's shared budget.

1. `latency`: mention -> activation requested (the scheduler's ActivationRequested on NATS naming the
   notification), p50 and p99, on `LocalStack` (every stage a real process, the Hub emulator's default
   profile): `push` with the emulator's signed inbox pings to ingest's hook (HUB_WEBHOOKS) and
   `polling` without, both at the same POLL_INTERVAL_SECONDS, MENTIONS mentions at random gaps.
2. `feed`: the requests one ingest's feed rounds make on the `moltbook` profile for 10, 100 and 1,000
   agents (`FeedIngest.round`, in-process, counted at the emulator): the warm-up (each agent's Hub name is
   learnt from GET /agents/me, 10 a round), then ROUNDS steady rounds with new posts, mentions and
   comments on the agents' older threads each round. Per minute at the default POLL_INTERVAL_SECONDS
   (30 s: one round per interval plus the round's own time), against the profile's 100 requests a
   minute per client address; `derived` says which planted items the run saw, i.e. what it gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from botburrow.dev.stack import LocalStack
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub.client import HubClient
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from botburrow.settings import IngestSettings
from services.ingest.feed import FeedIngest
from services.ingest.feedstate import FeedState
from streams.apply import ensure

MENTIONS = 40
GAP_S = (0.3, 1.2)  # between two mentions, at random: they fall anywhere in the polling interval
POLL_INTERVAL_S = 5.0  # both latency runs; the default (30 s) only makes polling slower
PROFILE_LIMIT_PER_MIN = 100  # moltbook: every stage and replica on one address shares it
AGENT_COUNTS = (10, 100, 1_000)
ROUNDS = 20
DEFAULT_POLL_S = float(IngestSettings.poll_interval_seconds)
NEWEST = int(IngestSettings.feed_threads_newest)
READS_PER_ROUND = int(IngestSettings.feed_comment_reads_per_round)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary_ms(latencies_s: list[float]) -> dict[str, float | int]:
    ms = [s * 1000 for s in latencies_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "max_ms": round(max(ms), 1)}


# --- 1. mention -> activation requested -------------------------------------------------------------


async def mention_latencies(pings: bool, rng: random.Random) -> list[float]:
    stack = LocalStack.in_temp_dir(pings=pings, poll_interval_s=POLL_INTERVAL_S,
                                   extra_env={"EXPLORE_MIN_GAP_SECONDS": "86400"})
    sent: dict[str, float] = {}  # notification id -> when the mention was made
    took: dict[str, float] = {}
    all_in = asyncio.Event()

    async def on_activation(msg: Msg) -> None:
        at = time.perf_counter()
        for note in json.loads(msg.data).get("notifications", []):
            if note.get("id") in sent and note["id"] not in took:
                took[note["id"]] = at - sent[note["id"]]
        if len(took) == MENTIONS:
            all_in.set()

    try:
        await stack.start()
        assert stack.hub is not None
        bus = await Bus.connect(stack.nats_url, name="bench-hub")
        try:
            await bus.nc.subscribe("agents.sched.activation.>", cb=on_activation)
            agents = stack.answering_agents()
            for i in range(MENTIONS):
                await asyncio.sleep(rng.uniform(*GAP_S))
                sent_at = time.perf_counter()
                note = stack.hub.mention(agents[i % len(agents)], f"bench question {i}")
                sent[note.id] = sent_at
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), POLL_INTERVAL_S * 3 + 30)
        finally:
            await bus.close()
    finally:
        await stack.stop()
        shutil.rmtree(stack.work_dir, ignore_errors=True)
    if len(took) < len(sent):
        raise RuntimeError(f"{'push' if pings else 'polling'}: {len(sent) - len(took)} mentions never activated")
    return list(took.values())


# --- 2. feed-derived ingestion's requests --------------------------------------------------------------


class World:
    """The moltbook Hub of `agents` agents with a past (posts by people, agents' comments on them), one
    post per agent made during the warm-up (fewer a round than a listing shows, so ingest sees each and
    watches it), and each round's news: 2 new posts naming an agent (one a link post), a comment naming
    one on a new post, and 3 comments on older posts of agents (watched threads, beyond the newest listed)."""

    def __init__(self, hub: HubEmulator, agents: int, rng: random.Random) -> None:
        self.hub, self.rng = hub, rng
        self.names = [f"agent_{i:04d}" for i in range(agents)]
        self.keys = {name.replace("_", "-"): hub.add_agent(name) for name in self.names}
        self.own_posts: list[str] = []
        self._to_post = list(self.names)
        for i in range(2 * NEWEST):
            post = hub.add_post(f"old {i}", "text", age_s=1800.0 - i)
            hub.add_comment(post.id, "agreed", author=rng.choice(self.names), notify=False)
        self.planted: dict[str, list[str]] = {"new_post_mentions": [], "new_comment_mentions": [],
                                              "comments_on_older_own_posts": []}

    def own_posts_made(self, at_most: int) -> bool:
        """Up to `at_most` more of the agents' own posts; whether every agent has posted."""
        for name in self._to_post[:at_most]:
            self.own_posts.append(self.hub.add_post(f"notes of {name}", "text", author=name).id)
        del self._to_post[:at_most]
        return not self._to_post

    def news(self) -> None:
        name = self.rng.choice(self.names)
        self.planted["new_post_mentions"].append(self.hub.add_post(f"for @{name}", f"@{name} a question").id)
        name = self.rng.choice(self.names)
        link = self.hub.add_post(f"@{name} look at this", url="https://example.com/x")
        self.planted["new_post_mentions"].append(link.id)
        comment = self.hub.add_comment(link.id, f"@{self.rng.choice(self.names)} and you?", notify=False)
        self.planted["new_comment_mentions"].append(comment.id)
        for post_id in self.rng.sample(self.own_posts, 3):
            older = self.hub.add_comment(post_id, "a comment", notify=False)
            self.planted["comments_on_older_own_posts"].append(older.id)


async def derived_ids(bus: Bus) -> set[str]:
    """The post or comment id of every notification on NOTIFICATIONS."""
    info = await bus.js.stream_info("NOTIFICATIONS")
    if not info.state.messages:
        return set()
    sub = await bus.js.pull_subscribe("agents.ingest.notification.>", stream="NOTIFICATIONS")
    found: set[str] = set()
    try:
        while len(found) < info.state.messages:
            try:
                batch = await sub.fetch(500, timeout=2)
            except TimeoutError:
                break
            for msg in batch:
                note = json.loads(msg.data)["notification"]
                found.add(note.get("comment_id") or note.get("post_id") or "")
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return found


async def feed_run(agents: int, work: Path, rng: random.Random) -> dict[str, Any]:
    server = await natsserver.start_async(work / f"nats-{agents}")
    hub = HubEmulator(profile="moltbook", rate_limits=False)  # counted, not limited: what it would spend
    await hub.start()
    bus = await Bus.connect(server.url, name="bench-hub-feed")
    client = HubClient(hub.url)
    try:
        await ensure(bus.js)
        world = World(hub, agents, rng)

        async def key_of(agent: str) -> str | None:
            return world.keys.get(agent)

        feed = FeedIngest(client, bus, await FeedState.open(bus), key_of, newest=NEWEST,
                          reads_per_round=READS_PER_ROUND)
        names = sorted(world.keys)
        warm_up, warm_requests = 0, 0
        while warm_up < 2 * agents:  # until every agent posted and no Hub name is asked any more
            posted = world.own_posts_made(NEWEST // 2)
            before = len(hub.requests.records)
            report = await feed.round(names)
            if posted and not [r for r in hub.requests.records[before:] if r.path.endswith("/agents/me")]:
                break
            warm_up, warm_requests = warm_up + 1, warm_requests + report.requests
        requests, round_s = [], []
        for _ in range(ROUNDS):
            world.news()
            before = len(hub.requests.records)
            started = time.perf_counter()
            await feed.round(names)
            round_s.append(time.perf_counter() - started)
            requests.append(len(hub.requests.records) - before)
        seen = await derived_ids(bus)
    finally:
        await client.aclose()
        await bus.close()
        await hub.stop()
        await asyncio.to_thread(server.stop)
    return per_minute(agents, warm_up, warm_requests, requests, round_s, world, seen)


def per_minute(agents: int, warm_up: int, warm_requests: int, requests: list[int], round_s: list[float],
               world: World, seen: set[str]) -> dict[str, Any]:
    rounds_per_min = 60.0 / (DEFAULT_POLL_S + statistics.fmean(round_s))
    steady = statistics.fmean(requests) * rounds_per_min
    warm = (warm_requests / warm_up) * rounds_per_min if warm_up else 0.0
    return {
        "agents": agents,
        "requests_per_round": {"steady_mean": round(statistics.fmean(requests), 2), "max": max(requests),
                               "warm_up_mean": round(warm_requests / warm_up, 2) if warm_up else 0},
        "warm_up_rounds": warm_up, "warm_up_minutes": round(warm_up / rounds_per_min, 1),
        "requests_per_minute": round(steady, 1), "warm_up_requests_per_minute": round(warm, 1),
        "within_budget": max(steady, warm) <= PROFILE_LIMIT_PER_MIN,
        "budget_left_for_runners_per_minute": round(PROFILE_LIMIT_PER_MIN - max(steady, warm), 1),
        "derived_within_run": {kind: f"{sum(i in seen for i in ids)}/{len(ids)}"
                               for kind, ids in world.planted.items()},
        "watched_threads": len(world.own_posts),
        "watched_thread_reread_every_min": round(len(world.own_posts) / READS_PER_ROUND / rounds_per_min, 1),
    }


async def main(results_dir: Path) -> dict[str, Any]:
    rng = random.Random(16)
    push = summary_ms(await mention_latencies(True, rng))
    polling = summary_ms(await mention_latencies(False, rng))
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        feed = [await feed_run(n, Path(tmp), rng) for n in AGENT_COUNTS]
    return {
        "latency": {"mention_to_activation_requested": {"push": push, "polling": polling},
                    "poll_interval_s": POLL_INTERVAL_S, "mentions": MENTIONS,
                    "goal": "push p50 under 200 ms", "goal_met": push["p50_ms"] < 200},
        "feed": {"profile_limit_per_minute": PROFILE_LIMIT_PER_MIN, "poll_interval_s": DEFAULT_POLL_S,
                 "threads_newest": NEWEST, "comment_reads_per_round": READS_PER_ROUND, "steady_rounds": ROUNDS,
                 "runs": feed},
        "gives_up": ("requests are bounded per round (1 listing + at most FEED_COMMENT_READS_PER_ROUND comment "
                     "reads; + 10 GET /agents/me a round until every Hub name is learnt), whatever the agents: "
                     "at 1,000 agents each watched thread (an agent's older post) is re-read only every "
                     "watched_thread_reread_every_min minutes, so a comment there is derived that late; "
                     "names take warm_up_minutes to learn (until then an agent goes by its config name with _)"),
    }

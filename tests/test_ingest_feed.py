"""Feed-derived ingestion: mentions, replies and comments derived from posts and comment trees, on a real
nats-server and the Hub emulator; never twice, whatever restarts, replicas or re-reads."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from nats.js.kv import KeyValue

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub.client import HubClient
from botburrow.runtime.bus import Bus
from botburrow.runtime.kvread import bucket_keys
from botburrow.runtime.service import run_stage
from schemas.codec import decode_subject
from schemas.events import NotificationReceived
from services.ingest import stage as ingest
from services.ingest.derive import Identities
from services.ingest.feed import FeedIngest, FeedReport
from services.ingest.feedstate import FeedState
from streams.topology import INGEST_FEED
from tests.fixtures.wait import until
from tests.test_ingest import WAIT_S, add_agents, detected_hub, keys_lookup, stream_messages, wait_ready


@pytest.fixture
async def feed_bus(bus: Bus) -> Bus:
    """The bus, with the feed's bucket emptied (the shared fixture recreates the streams only)."""
    kv = await bus.kv(INGEST_FEED.name)
    await kv.purge_deletes(olderthan=-1)
    for key in await _keys(kv):
        await kv.purge(key)
    return bus


async def _keys(kv: KeyValue) -> list[str]:
    return await bucket_keys(kv)


@pytest.fixture
async def client(hub_emulator: HubEmulator) -> AsyncIterator[HubClient]:
    hub = HubClient(hub_emulator.url, backoff_base_s=0.01)
    try:
        yield hub
    finally:
        await hub.aclose()


async def feed(bus: Bus, hub: HubClient, keys: dict[str, str], **options: int) -> FeedIngest:
    return FeedIngest(hub, bus, await FeedState.open(bus), keys_lookup(keys), **options)  # type: ignore[arg-type]


async def settle(ingest: FeedIngest, agents: list[str], rounds: int = 10) -> list[FeedReport]:
    """Rounds until one reads nothing new and publishes nothing (the feed is caught up)."""
    reports = []
    for _ in range(rounds):
        report = await ingest.round(agents)
        reports.append(report)
        assert report.stopped is None
        if not report.total_published and not ingest._changed:
            return reports
    raise AssertionError(f"not caught up after {rounds} rounds: {reports}")


async def derived(bus: Bus) -> set[tuple[str, str, str]]:
    """(agent, type, post or comment id) of every notification on NOTIFICATIONS."""
    found: set[tuple[str, str, str]] = set()
    if not (await bus.js.stream_info("NOTIFICATIONS")).state.messages:
        return found
    for _, event in await stream_messages(bus):
        n = event.notification
        found.add((event.agent, n.type, n.comment_id or n.post_id or ""))
    return found


async def test_mentions_replies_and_comments_are_derived_once(feed_bus: Bus, hub_emulator: HubEmulator,
                                                              client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann"), "bob": hub_emulator.add_agent("bob")}
    asked = hub_emulator.add_post("Question", "hey @ann, and @anna and mail@bob.com are not you")
    titled = hub_emulator.add_post("@BOB: look at this link", "")
    own = hub_emulator.add_post("Ann's notes", "I am @ann", author="ann")
    on_own = hub_emulator.add_comment(own.id, "nice notes", notify=False)
    under = hub_emulator.add_comment(own.id, "agreed", parent_id=on_own.id, notify=False)
    ann_says = hub_emulator.add_comment(asked.id, "my answer", author="ann", notify=False)
    replied = hub_emulator.add_comment(asked.id, "thanks!", parent_id=ann_says.id, notify=False)
    bob_names = hub_emulator.add_comment(asked.id, "@ann see @bob", author="bob", parent_id=ann_says.id,
                                         notify=False)
    ingest = await feed(feed_bus, client, keys)

    await settle(ingest, ["ann", "bob"])
    expected = {("ann", "mention", asked.id), ("bob", "mention", titled.id), ("ann", "comment", on_own.id),
                ("ann", "reply", replied.id), ("ann", "mention", bob_names.id)}
    assert await derived(feed_bus) == expected  # not: `under` (a reply between others), own items, @anna
    assert under.id not in {i for _, _, i in expected}
    [(headers, event)] = [(h, e) for h, e in await stream_messages(feed_bus) if e.notification.post_id == titled.id]
    assert headers["Nats-Msg-Id"] == f"ntf:{event.notification.id}" and event.notification.content.startswith("@BOB")

    # Later news in a watched thread (ann wrote in it) and a new post: only those, once.
    again = hub_emulator.add_comment(asked.id, "one more thing", parent_id=ann_says.id, notify=False)
    newer = hub_emulator.add_post("hi", "ping @bob")
    await settle(ingest, ["ann", "bob"])
    assert await derived(feed_bus) == expected | {("ann", "reply", again.id), ("bob", "mention", newer.id)}
    assert (await feed_bus.js.stream_info("NOTIFICATIONS")).state.messages == len(expected) + 2


async def test_a_hub_name_with_underscores_maps_to_the_config_name(feed_bus: Bus, hub_emulator: HubEmulator,
                                                                    client: HubClient) -> None:
    keys = {"sprint-helper": hub_emulator.add_agent("sprint_helper")}
    post = hub_emulator.add_post("standup", "@Sprint_Helper what is left? (not @sprint-helper, not @sprint)")
    ingest = await feed(feed_bus, client, keys)
    await settle(ingest, ["sprint-helper"])
    assert await derived(feed_bus) == {("sprint-helper", "mention", post.id)}
    assert await (await FeedState.open(feed_bus)).hub_name("sprint-helper") == "sprint_helper"


def test_mentions_match_names_on_a_word_boundary_case_insensitively() -> None:
    ids = Identities({"ann": "ann", "bob-1": "bob_1"})
    assert ids.named_in("@ANN, @Bob_1!") == ["ann", "bob-1"]
    assert ids.named_in("x@ann @annie @ann_x @ann-bot @@ann e@bob_1") == []
    assert ids.named_in("(@ann) @ann- @ann.") == ["ann"]


async def test_two_replicas_and_a_restart_never_emit_twice(feed_bus: Bus, nats_url: str, hub_emulator: HubEmulator,
                                                           client: HubClient) -> None:
    keys = {name: hub_emulator.add_agent(name) for name in ("ann", "bob", "cid")}
    ann_post = hub_emulator.add_post("ann asks", "anyone?", author="ann")
    for i in range(12):
        post = hub_emulator.add_post(f"post {i}", f"@{'abc'[i % 3]}nn? @bob @cid" if i % 2 else "quiet")
        hub_emulator.add_comment(post.id, f"@ann comment {i}", notify=False)
        hub_emulator.add_comment(ann_post.id, f"answer {i}", notify=False)
    other_bus = await Bus.connect(nats_url, name="second-ingest")
    try:
        first, second = await feed(feed_bus, client, keys), await feed(other_bus, client, keys)
        agents = list(keys)
        await asyncio.gather(settle(first, agents), settle(second, agents))
        emitted = await derived(feed_bus)
        assert len(emitted) == (await feed_bus.js.stream_info("NOTIFICATIONS")).state.messages
        assert ("ann", "comment", hub_emulator.comments_on(ann_post.id)[-1].id) in emitted

        restarted = await feed(feed_bus, client, keys)  # a new process: only KV remembers
        reports = await settle(restarted, agents)
        assert sum(r.total_published for r in reports) == 0
        assert (await feed_bus.js.stream_info("NOTIFICATIONS")).state.messages == len(emitted)
    finally:
        await other_bus.close()


async def test_a_round_makes_a_bounded_number_of_requests(feed_bus: Bus, hub_emulator: HubEmulator,
                                                          client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    posts = [hub_emulator.add_post(f"post {i}", "text") for i in range(30)]
    for post in posts:
        hub_emulator.add_comment(post.id, "@ann look", notify=False)
    ingest = await feed(feed_bus, client, keys, reads_per_round=3)
    before = len(hub_emulator.requests.records)
    first = await ingest.round(["ann"])
    assert first.requests == len(hub_emulator.requests.records) - before == 1 + 1 + 3  # me, listing, 3 trees
    rounds = [first]
    while ingest._changed:
        before = len(hub_emulator.requests.records)
        rounds.append(await ingest.round(["ann"]))
        assert rounds[-1].requests == len(hub_emulator.requests.records) - before <= 1 + 3
    assert len(rounds) == 10 and sum(r.total_published for r in rounds) == 30


async def test_hostile_text_is_cut_before_it_is_published(feed_bus: Bus, hub_emulator: HubEmulator,
                                                          client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    post = hub_emulator.add_post("t", "@ann " + "\x01" * 9_000, author="\x02" * 20_000)
    await settle(await feed(feed_bus, client, keys), ["ann"])
    [(_, event)] = await stream_messages(feed_bus)
    assert event.notification.post_id == post.id and len(event.notification.content) < 4100
    assert len(event.notification.from_.name) < 200
    decode_subject("agents.ingest.notification.ann", msgspec.json.encode(event))
    assert isinstance(event, NotificationReceived)


async def test_the_stage_on_a_moltbook_hub_derives_from_the_feed_quietly(
        feed_bus: Bus, nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """auto mode on the moltbook profile: the missing /notifications is a capability (feed mode, shown in
    /readyz, the Hub still `ready`), never a warning per poll; a mention, a link post's title and a reply
    to the agent's comment each come once. The config name `sprint-helper` is `sprint_helper` there."""
    await add_agents(feed_bus, "sprint-helper", "pirate")
    emulator = HubEmulator(profile="moltbook")
    await emulator.start()
    keys = {"sprint-helper": emulator.add_agent("sprint_helper"), "pirate": emulator.add_agent("pirate")}
    asked = emulator.add_post("standup", "@sprint_helper what is left?")
    linked = emulator.add_post("@Pirate ahoy, a map", url="https://example.com/map")
    mine = emulator.add_comment(asked.id, "two tickets", author="sprint_helper")
    replied = emulator.add_comment(asked.id, "which ones?", parent_id=mine.id)
    environ = {"NATS_URL": nats_url, "HUB_URL": emulator.url, "METRICS_PORT": "0", "POLL_INTERVAL_SECONDS": "0.2",
               "BOTBURROW_AGENT_KEYS": json.dumps(keys)}
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(run_stage("ingest", ingest.run, environ=environ, stop=stop,
                                         on_ready_port=port.set_result))
    expected = {("sprint-helper", "mention", asked.id), ("pirate", "mention", linked.id),
                ("sprint-helper", "reply", replied.id)}
    try:
        async with httpx.AsyncClient() as http:
            readyz = f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz"
            await wait_ready(http, readyz, ready=True)
            up = await until(lambda: detected_hub(http, readyz), WAIT_S, "the Hub's capabilities detected")
            assert up["details"]["hub"]["profile"] == "moltbook" and up["details"]["hub"]["mode"] == "feed"
            assert up["details"]["hub"]["notifications"] is False and up["checks"]["hub"] is True
            metrics = (await http.get(readyz.replace("/readyz", "/metrics"))).text
            assert 'botburrow_ingest_hub_profile{profile="moltbook"} 1.0' in metrics
            assert 'botburrow_ingest_hub_capability{capability="notifications"} 0.0' in metrics
            assert 'botburrow_ingest_mode{mode="feed"} 1.0' in metrics

            async def all_derived() -> bool:
                return await derived(feed_bus) == expected

            await until(all_derived, WAIT_S, "the three notifications")
            rounds_before = sum(r.path.endswith("/posts") for r in emulator.requests.records)
            await until(lambda: sum(r.path.endswith("/posts") for r in emulator.requests.records) > rounds_before + 3,
                        WAIT_S, "three more rounds")
        assert (await feed_bus.js.stream_info("NOTIFICATIONS")).state.messages == len(expected)
        ingest_logs = [r for r in caplog.records if r.name.startswith("services.ingest")]
        assert not [r for r in ingest_logs if r.levelno >= logging.WARNING]
        assert sum(r.getMessage() == "hub capabilities" for r in caplog.records) == 1
        # The two probes at start (the client's budget profile, ingest's capabilities), never per round.
        assert sum(r.path.endswith("/notifications") for r in emulator.requests.records) == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        await emulator.stop()


async def test_a_rate_limit_cuts_the_round_and_nothing_is_lost(feed_bus: Bus, hub_emulator: HubEmulator,
                                                               client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    posts = [hub_emulator.add_post(f"post {i}", "@ann first") for i in range(3)]
    replies = [hub_emulator.add_comment(p.id, "@ann second", notify=False) for p in posts]
    ingest = await feed(feed_bus, client, keys)
    # Comment reads answer 429 with a Retry-After past the client's cap: the round ends there, quietly.
    hub_emulator.set_fault(status=429, retry_after_s=3600, path_prefix=f"/api/v1/posts/{posts[0].id}/comments")
    cut = await ingest.round(["ann"])
    assert cut.stopped == "rate_limited" and cut.threads_read == []
    hub_emulator.clear_faults()
    await settle(ingest, ["ann"])
    expected = {("ann", "mention", p.id) for p in posts} | {("ann", "mention", c.id) for c in replies}
    assert await derived(feed_bus) == expected
    assert (await feed_bus.js.stream_info("NOTIFICATIONS")).state.messages == len(expected)


async def test_an_agent_not_yet_asked_for_its_name_is_not_missed(feed_bus: Bus, hub_emulator: HubEmulator,
                                                                 client: HubClient) -> None:
    """Names are learnt 10 a round: the 12th agent's mention, read in the first round, still reaches it."""
    names = [f"agent-{i:02d}" for i in range(12)]
    keys = {name: hub_emulator.add_agent(name.replace("-", "_")) for name in names}
    post = hub_emulator.add_post("roll call", "@agent_11 last but not least")
    ingest = await feed(feed_bus, client, keys)
    first = await ingest.round(names)
    assert first.published == {"agent-11": 1} and first.requests == 10 + 1 + 1  # me, listing, the watched thread
    assert await derived(feed_bus) == {("agent-11", "mention", post.id)}


async def test_a_pinged_agents_threads_are_read_first(feed_bus: Bus, hub_emulator: HubEmulator,
                                                      client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann"), "bob": hub_emulator.add_agent("bob")}
    ann_post = hub_emulator.add_post("ann's", "text", author="ann")
    busy = [hub_emulator.add_post(f"busy {i}", "text") for i in range(3)]
    ingest = await feed(feed_bus, client, keys, reads_per_round=1)
    await settle(ingest, ["ann", "bob"])
    for post in busy:  # news elsewhere, listed first in line
        hub_emulator.add_comment(post.id, "@bob more", notify=False)
    answer = hub_emulator.add_comment(ann_post.id, "a comment for ann", notify=False)
    report = await ingest.round(["ann", "bob"], urgent=["ann"])
    assert report.threads_read == [ann_post.id] and report.published == {"ann": 1}
    assert ("ann", "comment", answer.id) in await derived(feed_bus)


@pytest.mark.slow
async def test_two_ingest_stages_and_a_restart_answer_each_item_once(feed_bus: Bus, nats_url: str) -> None:
    """Two ingest replicas on one moltbook Hub, then one restarted while the other runs: each derived
    notification is on NOTIFICATIONS once (that a restarted reader publishes nothing again, JetStream's
    dedup aside, is test_two_replicas_and_a_restart_never_emit_twice)."""
    names = ["ann", "bob"]
    await add_agents(feed_bus, *names)
    emulator = HubEmulator(profile="moltbook", rate_limits=False)
    await emulator.start()
    keys = {name: emulator.add_agent(name) for name in names}
    items = []
    for i in range(8):
        post = emulator.add_post(f"post {i}", f"@{names[i % 2]} question {i}")
        items.append(("ann" if i % 2 == 0 else "bob", "mention", post.id))
        comment = emulator.add_comment(post.id, f"and @{names[(i + 1) % 2]}?")
        items.append((names[(i + 1) % 2], "mention", comment.id))
    environ = {"NATS_URL": nats_url, "HUB_URL": emulator.url, "METRICS_PORT": "0", "POLL_INTERVAL_SECONDS": "0.1",
               "FEED_COMMENT_READS_PER_ROUND": "2", "BOTBURROW_AGENT_KEYS": json.dumps(keys)}

    def start(stop: asyncio.Event) -> asyncio.Task[None]:
        return asyncio.create_task(run_stage("ingest", ingest.run, environ=environ, stop=stop))

    async def all_there() -> bool:
        return await derived(feed_bus) == set(items)

    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [start(stop) for stop in stops]
    try:
        await until(all_there, 20.0, "every item derived by the two replicas")
        stops[0].set()
        await asyncio.wait_for(tasks[0], WAIT_S)
        stops[0] = asyncio.Event()
        tasks[0] = start(stops[0])  # the restart, while the other replica goes on
        later = emulator.add_post("later", "@ann one more")
        items.append(("ann", "mention", later.id))
        await until(all_there, 20.0, "the later item derived")
        listings = sum(r.path.endswith("/posts") for r in emulator.requests.records)
        await until(lambda: sum(r.path.endswith("/posts") for r in emulator.requests.records) > listings + 6,
                    WAIT_S, "more rounds of both replicas")
        assert (await feed_bus.js.stream_info("NOTIFICATIONS")).state.messages == len(items)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
        await emulator.stop()


async def test_replicas_take_turns_one_round_per_interval(feed_bus: Bus, nats_url: str, hub_emulator: HubEmulator,
                                                          client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    other_bus = await Bus.connect(nats_url, name="second-ingest")
    try:
        first = FeedIngest(client, feed_bus, await FeedState.open(feed_bus), keys_lookup(keys), min_gap_s=3600)
        second = FeedIngest(client, other_bus, await FeedState.open(other_bus), keys_lookup(keys), min_gap_s=3600)
        reports = await asyncio.gather(first.round(["ann"]), second.round(["ann"]))
        assert sorted(r.stopped or "ran" for r in reports) == ["other_replica", "ran"]
        assert sum(r.requests for r in reports) == 1 + 1  # one replica's: me, the listing
        pinged = await second.round(["ann"], urgent=["ann"])  # a ping's round is never skipped
        assert pinged.stopped is None and pinged.requests >= 1
    finally:
        await other_bus.close()

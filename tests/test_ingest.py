"""Ingest: Hub notifications onto NOTIFICATIONS, marked read only after JetStream acknowledged them."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from botburrow.definitions import bucket
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub.client import HubClient
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from schemas.agent import AgentConfig, AgentDefinition, Brain, Capabilities
from schemas.codec import decode_subject
from schemas.events import NotificationReceived
from services.ingest import stage as ingest
from services.ingest.poller import Poller
from streams.apply import ensure
from tests.fixtures.wait import until

WAIT_S = 10.0


def definition(name: str) -> AgentDefinition:
    config = AgentConfig(name=name, type="native", brain=Brain(model="claude-test"), capabilities=Capabilities())
    return AgentDefinition(name=name, hash=f"h-{name}", config=config, system_prompt="")


async def add_agents(bus: Bus, *names: str) -> None:
    configs = await bus.kv(bucket.BUCKET)
    for name in names:
        await configs.put(bucket.key("agent", name), bucket.encode(definition(name)))


def keys_lookup(keys: dict[str, str]) -> Any:
    async def key_of(agent: str) -> str | None:
        return keys.get(agent)

    return key_of


@pytest.fixture
async def client(hub_emulator: HubEmulator) -> AsyncIterator[HubClient]:
    hub = HubClient(hub_emulator.url, backoff_base_s=0.01)
    try:
        yield hub
    finally:
        await hub.aclose()


async def stream_messages(bus: Bus) -> list[tuple[dict[str, str], NotificationReceived]]:
    info = await bus.js.stream_info("NOTIFICATIONS")
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await bus.js.get_msg("NOTIFICATIONS", seq)
        found.append((dict(raw.headers or {}), msgspec.json.decode(raw.data or b"", type=NotificationReceived)))
    return found


async def test_publishes_each_notification_then_marks_it_read(bus: Bus, hub_emulator: HubEmulator,
                                                              client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann"), "bob": hub_emulator.add_agent("bob")}
    first = hub_emulator.mention("ann", "hello?")
    second = hub_emulator.dm("bob", "psst")
    poller = Poller(client, bus, keys_lookup(keys))

    report = await poller.poll_once(["ann", "bob", "no-key"])
    assert report.published == {"ann": 1, "bob": 1} and report.without_key == ["no-key"] and not report.errors
    published = {event.notification.id: (headers, event) for headers, event in await stream_messages(bus)}
    assert set(published) == {first.id, second.id}
    headers, event = published[first.id]
    assert headers["Nats-Msg-Id"] == f"ntf:{first.id}" and headers["Event-Type"] == "NotificationReceived"
    assert event.agent == "ann" and event.notification.type == "mention" and event.received_at
    assert all(n.read for agent in keys for n in hub_emulator.notifications_of(agent))

    again = await poller.poll_once(["ann", "bob"])
    assert again.total_published == 0 and (await bus.js.stream_info("NOTIFICATIONS")).state.messages == 2


async def test_a_long_or_escaped_text_is_cut_to_fit_the_schedulers_bound(bus: Bus, hub_emulator: HubEmulator,
                                                                      client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    long = hub_emulator.mention("ann", "ahoy " * 1_800)  # 9,000 characters, the Hub allows 10,000
    escaped = hub_emulator.mention("ann", "\x01" * 9_000)  # 6 bytes each in JSON: 54 KB encoded
    report = await Poller(client, bus, keys_lookup(keys)).poll_once(["ann"])
    assert report.published == {"ann": 2}
    published = {event.notification.id: event for _, event in await stream_messages(bus)}
    for note in (long, escaped):
        content = published[note.id].notification.content
        assert len(content) < 4100 and content.endswith("more characters not shown]")
        raw = msgspec.json.encode(published[note.id])
        decode_subject("agents.ingest.notification.ann", raw)  # within the scheduler's bound: no DecodeError


async def test_nothing_is_marked_read_when_jetstream_does_not_acknowledge(
        bus: Bus, hub_emulator: HubEmulator, client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    hub_emulator.mention("ann", "one")
    poller = Poller(client, bus, keys_lookup(keys))
    await bus.js.delete_stream("NOTIFICATIONS")

    report = await poller.poll_once(["ann"])
    assert report.errors == {"ann": "publish"}
    assert [n.read for n in hub_emulator.notifications_of("ann")] == [False]

    await ensure(bus.js)  # the stream is back: the next round delivers and marks
    assert (await poller.poll_once(["ann"])).published == {"ann": 1}
    assert [n.read for n in hub_emulator.notifications_of("ann")] == [True]


async def test_a_rejected_key_fails_only_that_agent(bus: Bus, hub_emulator: HubEmulator, client: HubClient,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    keys = {"ann": hub_emulator.add_agent("ann"), "bob": "wrong-key-for-bob-123456"}
    hub_emulator.add_agent("bob")
    hub_emulator.mention("ann", "hi")
    hub_emulator.mention("bob", "hi")
    caplog.set_level(logging.DEBUG)

    report = await Poller(client, bus, keys_lookup(keys)).poll_once(["ann", "bob"])
    assert report.published == {"ann": 1} and report.errors == {"bob": "auth"}
    assert [n.read for n in hub_emulator.notifications_of("bob")] == [False]
    assert "wrong-key-for-bob-123456" not in caplog.text and keys["ann"] not in caplog.text
    assert any(getattr(r, "agent", None) == "bob" and getattr(r, "kind", None) == "auth" for r in caplog.records)


async def test_a_backlog_drains_in_one_round(bus: Bus, hub_emulator: HubEmulator, client: HubClient) -> None:
    keys = {"ann": hub_emulator.add_agent("ann")}
    for i in range(27):
        hub_emulator.mention("ann", f"question {i}")
    report = await Poller(client, bus, keys_lookup(keys), page_limit=10).poll_once(["ann"])
    assert report.published == {"ann": 27}
    assert all(n.read for n in hub_emulator.notifications_of("ann"))
    assert (await bus.js.stream_info("NOTIFICATIONS")).state.messages == 27


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(client: httpx.AsyncClient, url: str, ready: bool) -> dict[str, Any]:
    async def answer() -> dict[str, Any] | None:
        response = await client.get(url)
        # Once the body runs (its `hub` check exists; ready: all its checks, the poll task's last):
        # before, the stage is not ready for other reasons.
        if (response.status_code == 200) == ready and ("task:poll" if ready else "hub") in response.json()["checks"]:
            return dict(response.json())
        return None

    return await until(answer, WAIT_S, f"the stage {'ready' if ready else 'not ready'}")


async def test_stage_starts_with_the_hub_down_and_recovers(bus: Bus, nats_url: str) -> None:
    await add_agents(bus, "ann")
    hub_port = free_port()
    emulator = HubEmulator(system_key="sys-key-for-ingest")
    key = emulator.add_agent("ann")
    note = emulator.mention("ann", "are you there?")
    environ = {"NATS_URL": nats_url, "HUB_URL": f"http://127.0.0.1:{hub_port}", "METRICS_PORT": "0",
               "POLL_INTERVAL_SECONDS": "0.2", "BOTBURROW_AGENT_KEYS": json.dumps({"ann": key})}
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", ingest.run, environ=environ, stop=stop,
                                          on_ready_port=port.set_result))
    try:
        async with httpx.AsyncClient() as http:
            readyz = f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz"
            down = await wait_ready(http, readyz, ready=False)
            assert down["checks"]["hub"] is False
            await emulator.start(port=hub_port)
            up = await wait_ready(http, readyz, ready=True)
            assert {"nats", "streams", "body", "hub", "task:poll", "definitions"} <= set(up["checks"])
            up = await until(lambda: detected_hub(http, readyz), WAIT_S, "the Hub's capabilities detected")
            assert up["details"]["hub"] == {"mode": "notifications", "profile": "botburrow", "notifications": True,
                                            "mark_read": True, "dms": True, "system": False, "webhooks": False}

        await until(lambda: emulator.notifications_of("ann")[0].read, WAIT_S, "the notification marked read")
        [(headers, event)] = await stream_messages(bus)
        assert headers["Nats-Msg-Id"] == f"ntf:{note.id}" and event.notification.content == note.content
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)
        await emulator.stop()


async def detected_hub(http: httpx.AsyncClient, readyz: str) -> dict[str, Any] | None:
    answer = (await http.get(readyz)).json()
    return dict(answer) if answer.get("details", {}).get("hub", {}).get("mode") else None

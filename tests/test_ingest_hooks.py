"""The Hub's inbox ping on ingest's port: a genuine ping polls that agent at once; bad, stale, replayed,
oversized or unknown ones are refused without saying more. Real stage, real nats-server, real emulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub import webhook
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from services.ingest import stage as ingest
from services.ingest.hooks import SeenSignatures
from tests.fixtures.wait import until
from tests.test_ingest import add_agents, stream_messages

WAIT_S = 10.0
SECRET = "whsec-ann-0123456789abcdef"


@dataclass
class Running:
    url: str
    http: httpx.AsyncClient


@pytest.fixture
async def stage(bus: Bus, nats_url: str, hub_emulator: HubEmulator, tmp_path: Path) -> AsyncIterator[Running]:
    """Ingest with pings on, polling only once a minute: within a test, only a ping makes it poll again."""
    await add_agents(bus, "ann", "bob")
    keys = {"ann": hub_emulator.add_agent("ann"), "bob": hub_emulator.add_agent("bob")}
    (tmp_path / "webhook-ann").write_text(SECRET)  # bob has none
    environ = {"NATS_URL": nats_url, "HUB_URL": hub_emulator.url, "METRICS_PORT": "0", "HUB_WEBHOOKS": "true",
               "POLL_INTERVAL_SECONDS": "60", "SECRETS_DIR": str(tmp_path),
               "BOTBURROW_AGENT_KEYS": json.dumps(keys)}
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(run_stage("ingest", ingest.run, environ=environ, stop=stop,
                                         on_ready_port=port.set_result))
    try:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}"

            async def ready() -> bool:
                answer = await http.get(f"{url}/readyz")
                return answer.status_code == 200 and "task:push" in answer.json()["checks"]

            await until(ready, WAIT_S, "ingest ready with its push task")
            # The first round ran: the only poll within this test from now on is one a ping starts.
            await until(lambda: any(r.path.endswith("/notifications") for r in hub_emulator.requests.records),
                        WAIT_S, "the first poll")
            yield Running(url, http)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def signed(body: bytes, secret: str = SECRET, at_s: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if at_s is None else at_s)
    return {webhook.TIMESTAMP_HEADER: str(timestamp), webhook.SIGNATURE_HEADER: webhook.sign(secret.encode(), body,
                                                                                             timestamp),
            "Content-Type": "application/json"}


def ping(agent: str = "ann", unread: int = 1) -> bytes:
    return msgspec.json.encode({"type": "inbox_update", "agent_id": agent, "unread_count": unread})


async def test_a_signed_ping_from_the_hub_polls_that_agent_at_once(bus: Bus, hub_emulator: HubEmulator,
                                                                   stage: Running) -> None:
    hub_emulator.configure_pings(stage.url, {"ann": SECRET})
    note = hub_emulator.mention("ann", "quick, @ann!")  # the emulator pings ingest, signed
    # Polling is a minute away: only the ping can bring it this soon.
    await until(lambda: hub_emulator.notifications_of("ann")[0].read, WAIT_S, "the pinged agent polled")
    [(headers, event)] = await stream_messages(bus)
    assert event.notification.id == note.id and headers["Nats-Msg-Id"] == f"ntf:{note.id}"
    pinger = hub_emulator.pinger
    assert pinger is not None
    await until(lambda: pinger.delivered == 1, WAIT_S, "the ping answered")


async def test_bad_stale_replayed_and_unknown_pings_are_refused(bus: Bus, hub_emulator: HubEmulator,
                                                                stage: Running) -> None:
    hook = f"{stage.url}/hooks/inbox"
    body = ping()
    answer = await stage.http.post(f"{hook}/ann", content=body, headers=signed(body))
    assert answer.status_code == 202 and answer.json() == {"status": "processing"}

    replayed = await stage.http.post(f"{hook}/ann", content=body, headers=signed(body))
    forged = await stage.http.post(f"{hook}/ann", content=body, headers=signed(body, "not-the-secret-at-all"))
    stale = await stage.http.post(f"{hook}/ann", content=ping(unread=2),
                                  headers=signed(ping(unread=2), at_s=time.time() - webhook.TOLERANCE_S - 5))
    tampered = await stage.http.post(f"{hook}/ann", content=ping(unread=9), headers=signed(body))
    for refused in (replayed, forged, stale, tampered):
        assert refused.status_code == 401 and refused.json() == {"error": "refused"}

    unknown = await stage.http.post(f"{hook}/nobody", content=body, headers=signed(body))
    without_secret = await stage.http.post(f"{hook}/bob", content=ping("bob"), headers=signed(ping("bob")))
    assert unknown.status_code == without_secret.status_code == 404
    assert unknown.json() == without_secret.json() == {"error": "not found"}

    huge = b'{"type":"inbox_update","pad":"' + b"x" * 10_000 + b'"}'
    assert (await stage.http.post(f"{hook}/ann", content=huge, headers=signed(huge))).status_code == 413
    other = msgspec.json.encode({"type": "something_else"})
    assert (await stage.http.post(f"{hook}/ann", content=other, headers=signed(other))).status_code == 400
    assert (await stage.http.get(f"{hook}/ann")).status_code == 405
    ready = (await stage.http.get(f"{stage.url}/readyz")).json()
    assert ready["ready"] and ready["details"]["hub"]["webhooks"] is True


async def test_a_burst_of_pings_is_coalesced(bus: Bus, hub_emulator: HubEmulator, stage: Running) -> None:
    polls_before = sum(r.path.endswith("/notifications") for r in hub_emulator.requests.records)
    hub_emulator.mention("ann", "one")
    bodies = [ping(unread=n) for n in range(1, 21)]
    answers = await asyncio.gather(*(stage.http.post(f"{stage.url}/hooks/inbox/ann", content=b, headers=signed(b))
                                     for b in bodies))
    assert all(a.status_code == 202 for a in answers)
    await until(lambda: hub_emulator.notifications_of("ann")[0].read, WAIT_S, "the pinged agent polled")
    polls = sum(r.path.endswith("/notifications") for r in hub_emulator.requests.records) - polls_before
    assert 1 <= polls < len(bodies)


async def test_a_repeated_ping_is_refused_yet_its_twin_notification_is_polled(
        bus: Bus, hub_emulator: HubEmulator, stage: Running) -> None:
    """The Hub may send the same bytes twice in one second (unread_count 1 both times): the repeat is
    refused as a replay, and still brings the second notification in a second, not a polling interval."""
    body, hook = ping(), f"{stage.url}/hooks/inbox/ann"
    headers = signed(body)
    hub_emulator.mention("ann", "first")
    assert (await stage.http.post(hook, content=body, headers=headers)).status_code == 202
    await until(lambda: all(n.read for n in hub_emulator.notifications_of("ann")), WAIT_S, "the first polled")
    hub_emulator.mention("ann", "second")
    assert (await stage.http.post(hook, content=body, headers=headers)).status_code == 401
    await until(lambda: all(n.read for n in hub_emulator.notifications_of("ann")), WAIT_S, "the second polled")


def test_signatures_are_remembered_for_the_window_only() -> None:
    seen = SeenSignatures(window_s=10.0, limit=3)
    assert seen.first_time("a", 0.0) and not seen.first_time("a", 5.0)
    assert seen.first_repeat("a") and not seen.first_repeat("a")  # one poll for a repeat, not one per replay
    assert seen.first_time("a", 10.5)  # the first one expired: its timestamp is now refused as stale anyway
    for sig in ("b", "c", "d"):
        assert seen.first_time(sig, 11.0)
    assert len(seen._until) == 3

"""The emulator's signed inbox pings over real HTTP: a tiny receiver checks each with `webhook.verify`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.hub_emulator.pings import secrets_from_dir
from botburrow.hub.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from botburrow.runtime.http import RunningServer, serve
from tests.fixtures.wait import until

SECRETS = {"helper": "helper-webhook-secret-1", "other": "other-webhook-secret-2"}


@dataclass
class Ping:
    agent: str
    body: dict[str, object]
    refused: str | None  # what webhook.verify said; None: genuine


@dataclass
class Receiver:
    server: RunningServer
    pings: asyncio.Queue[Ping] = field(default_factory=asyncio.Queue)
    # Cleared: the receiver holds every ping until it is set (to show nobody waits for it).
    open: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def hook(request: Request) -> Response:
        me = holder[0]
        await me.open.wait()
        agent, raw = request.path_params["agent"], await request.body()
        secret = SECRETS.get(agent, "unknown").encode()
        refused = verify(secret, raw, request.headers.get(TIMESTAMP_HEADER, ""),
                         request.headers.get(SIGNATURE_HEADER, ""), time.time())
        await me.pings.put(Ping(agent, json.loads(raw), refused))
        return JSONResponse({"status": "processing"}, 401 if refused else 202)

    server = await serve(Starlette(routes=[Route("/hooks/inbox/{agent}", hook, methods=["POST"])]))
    holder.append(Receiver(server))
    holder[0].open.set()
    try:
        yield holder[0]
    finally:
        holder[0].open.set()
        await server.stop()


@pytest.fixture
async def pinging(receiver: Receiver) -> AsyncIterator[HubEmulator]:
    emulator = HubEmulator(hook_url=receiver.url, webhook_secrets=SECRETS)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_each_new_notification_pings_the_agents_hook_signed(pinging: HubEmulator, receiver: Receiver) -> None:
    helper, other = pinging.add_agent("helper"), pinging.add_agent("other")
    async with httpx.AsyncClient(base_url=pinging.api_url) as http:
        post = (await http.post("/posts", json={"submolt": "general", "title": "Hi", "content": "..."},
                                headers=auth(helper))).json()["post"]
        await http.post(f"/posts/{post['id']}/comments", json={"content": "nice"}, headers=auth(other))
        first = await asyncio.wait_for(receiver.pings.get(), 10)
        assert (first.agent, first.refused) == ("helper", None)
        assert first.body == {"type": "inbox_update", "agent_id": "helper", "unread_count": 1}
        pinging.mention("helper", "and you?")
        second = await asyncio.wait_for(receiver.pings.get(), 10)
        assert second.body["unread_count"] == 2 and second.refused is None
    assert receiver.pings.empty() and pinging.pinger is not None and pinging.pinger.delivered == 2


async def test_the_request_never_waits_for_the_ping(pinging: HubEmulator, receiver: Receiver) -> None:
    receiver.open.clear()  # the hook hangs until told otherwise
    key = pinging.add_agent("helper")
    async with httpx.AsyncClient(base_url=pinging.url) as http:
        made = await http.post("/admin/mention", json={"agent": "helper", "content": "hello"},
                               headers=auth(pinging.system_key))
        assert made.status_code == 201
        notes = await http.get("/api/v1/notifications", headers=auth(key))
        assert len(notes.json()["notifications"]) == 1
    assert receiver.pings.empty()  # answered while the ping is still held
    receiver.open.set()
    assert (await asyncio.wait_for(receiver.pings.get(), 10)).agent == "helper"


async def test_no_secret_no_ping_and_a_dead_receiver_is_not_fatal(receiver: Receiver) -> None:
    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    emulator = HubEmulator(hook_url=f"http://127.0.0.1:{dead_port}", webhook_secrets=SECRETS)
    await emulator.start()
    try:
        emulator.add_agent("helper")
        emulator.add_agent("stranger")
        async with httpx.AsyncClient(base_url=emulator.url) as http:
            for agent in ("helper", "stranger"):
                made = await http.post("/admin/mention", json={"agent": agent, "content": "hi"},
                                       headers=auth(emulator.system_key))
                assert made.status_code == 201
        pinger = emulator.pinger
        assert pinger is not None
        await until(lambda: pinger.failed == 1 and pinger.skipped == 1, 10, "a failed and a skipped ping")
        assert pinger.delivered == 0
        # Pointed at a live receiver at run time (the admin API), the next one arrives.
        async with httpx.AsyncClient(base_url=emulator.url) as http:
            hooked = await http.post("/admin/hooks", json={"url": receiver.url, "secrets": SECRETS},
                                     headers=auth(emulator.system_key))
            assert hooked.json() == {"success": True, "url": receiver.url}
            await http.post("/admin/mention", json={"agent": "helper", "content": "again"},
                            headers=auth(emulator.system_key))
        ping = await asyncio.wait_for(receiver.pings.get(), 10)
        assert (ping.agent, ping.body["unread_count"], ping.refused) == ("helper", 2, None)
    finally:
        await emulator.stop()


async def test_secrets_read_like_the_stages_read_them(tmp_path: Path, receiver: Receiver) -> None:
    (tmp_path / "webhook-helper").write_text(SECRETS["helper"] + "\n")
    emulator = HubEmulator(hook_url=receiver.url, webhook_secrets=secrets_from_dir(tmp_path))
    await emulator.start()
    try:
        emulator.add_agent("helper")
        emulator.mention("helper", "hi")
        ping = await asyncio.wait_for(receiver.pings.get(), 10)
        assert (ping.agent, ping.refused) == ("helper", None)
    finally:
        await emulator.stop()
    with pytest.raises(ValueError, match="no notifications"):
        HubEmulator(profile="moltbook", hook_url=receiver.url, webhook_secrets=SECRETS)


@pytest.mark.slow
async def test_cli_hook_url_and_secrets_dir(tmp_path: Path, receiver: Receiver) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "webhook-helper").write_text(SECRETS["helper"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow.doubles.hub_emulator.cli", "--port", "0", "--system-key", "sys-key-123",
        "--hook-url", receiver.url, "--secrets-dir", str(secrets_dir), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        async with httpx.AsyncClient(base_url=url) as http:
            await http.post("/admin/agents", json={"name": "helper"}, headers=auth("sys-key-123"))
            await http.post("/admin/mention", json={"agent": "helper", "content": "hi"}, headers=auth("sys-key-123"))
        ping = await asyncio.wait_for(receiver.pings.get(), 20)
        assert (ping.agent, ping.body["unread_count"], ping.refused) == ("helper", 1, None)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

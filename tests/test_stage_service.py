"""How every stage process starts (botburrow.runtime.service), against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest

from botburrow.dev.stack import start_nats_on_port
from botburrow.runtime import natsserver
from botburrow.runtime.service import StageContext, run_stage
from tests.fixtures.wait import until

WAIT_S = 20.0


async def test_a_stage_is_not_ready_while_its_streams_are_not_made(tmp_path: Path) -> None:
    # A server without JetStream: connecting works, making the streams never does. Before the body runs,
    # /readyz must say 503: a runner's replacement, say, is ready only once it has swept its
    # predecessor's sandboxes, which it does in its body.
    server = await natsserver.start_async(tmp_path / "nats", jetstream=False)
    body_started = asyncio.Event()

    async def body(ctx: StageContext) -> None:
        body_started.set()
        await ctx.stop.wait()

    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", body, environ={
        "NATS_URL": server.url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"},
        stop=stop, on_ready_port=port.set_result))
    try:
        readyz = f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz"
        async with httpx.AsyncClient() as http:
            async def connected_not_ready() -> dict[str, Any] | None:
                response = await http.get(readyz)
                if response.json()["checks"].get("nats"):
                    return {"status": response.status_code, **response.json()}
                return None

            seen = await until(connected_not_ready, WAIT_S, "the stage connected")
        assert seen["status"] == 503 and seen["checks"] == {
            "nats": True, "jetstream": False, "streams": False, "body": False}
        assert not body_started.is_set()
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)
        await asyncio.to_thread(server.stop)


async def _readyz(http: httpx.AsyncClient, url: str, wanted: Any) -> dict[str, Any]:
    """Poll /readyz (a state with no event to await) until `wanted(answer)`."""
    async def answer_if() -> dict[str, Any] | None:
        response = await http.get(url)
        answer = {"status": response.status_code, **response.json()}
        return answer if wanted(answer) else None

    return await until(answer_if, WAIT_S, "a readiness answer")


async def test_a_body_nats_interrupts_is_not_ready_until_it_runs_again(nats_url: str) -> None:
    # No silent stall: between a NATS failure and the body's restart, the body's own checks may still say
    # ready (they are the old run's), so the stage says not ready itself.
    runs: list[int] = []

    async def body(ctx: StageContext) -> None:
        runs.append(len(runs) + 1)
        ctx.health.add_check("own", lambda: True)
        if len(runs) == 1:
            raise nats.errors.NoServersError
        await ctx.stop.wait()

    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", body, environ={
        "NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"},
        stop=stop, on_ready_port=port.set_result))
    try:
        readyz = f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz"
        async with httpx.AsyncClient() as http:
            down = await _readyz(http, readyz, lambda a: a["checks"].get("own") is True and a["status"] == 503)
            assert down["checks"]["body"] is False and runs == [1]
            up = await _readyz(http, readyz, lambda a: a["status"] == 200)
            assert up["checks"]["body"] is True and runs == [1, 2]
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)


async def test_a_body_that_fails_otherwise_ends_the_stage(nats_url: str) -> None:
    async def body(ctx: StageContext) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # `main` then exits non-zero: its supervisor restarts it
        await asyncio.wait_for(run_stage("ingest", body, environ={
            "NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"}), WAIT_S)


async def _stage_process(nats_url: str) -> asyncio.subprocess.Process:
    """A real stage process (ingest: no Hub needed to start), configured only through its environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9",
           "METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "botburrow", "ingest", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


def _problems(stderr: bytes) -> list[str]:
    """The stage's log lines above info: what it said went wrong."""
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    return [line["event"] for line in lines if line["level"] not in ("info", "debug")]


@pytest.mark.parametrize("url", ["garbage", "nats://user:hunter2@127.0.0.1:notaport"])
async def test_a_stage_exits_at_once_on_a_malformed_nats_url_naming_it_once(url: str) -> None:
    process = await _stage_process(url)
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 1
    problems = _problems(stderr)
    assert len(problems) == 1 and problems[0].startswith("NATS_URL: ") and "not a NATS server URL" in problems[0]
    assert "hunter2" not in stderr.decode()


@pytest.mark.slow
async def test_a_stage_gives_up_on_an_unreachable_nats_after_20_s_with_one_line() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await _stage_process(f"nats://user:hunter2@127.0.0.1:{port}")
    # The 20 s are the stage's own count (the line says so); the wait here also covers a busy machine.
    _, stderr = await asyncio.wait_for(process.communicate(), 20 + WAIT_S)
    assert process.returncode == 1
    problems = _problems(stderr)
    assert len(problems) == 1, problems
    assert problems[0].startswith("NATS_URL: no server answered within 20 s")
    assert f"nats://127.0.0.1:{port}" in problems[0]
    assert "ConnectionRefusedError" in problems[0] and "hunter2" not in stderr.decode()


async def test_a_stage_is_not_ready_while_connecting_and_stops_while_connecting() -> None:
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", _idle_body, environ={
        "NATS_URL": "nats://127.0.0.1:1", "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"},
        stop=stop, on_ready_port=port.set_result))
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz")
    assert response.status_code == 503 and response.json()["checks"]["nats"] is False
    stop.set()
    await asyncio.wait_for(stage, 5)  # not the 20 s the connection would still be tried


async def _idle_body(ctx: StageContext) -> None:
    ctx.health.add_check("own", lambda: True)
    await ctx.stop.wait()


async def test_a_lost_connection_is_reconnected_to_any_server_of_the_list(tmp_path: Path) -> None:
    # The first server of the list never answers; the second goes away and comes back on its port: the
    # stage says not ready meanwhile, then ready again, without restarting.
    server = await natsserver.start_async(tmp_path / "nats")
    url = f"nats://127.0.0.1:1,{server.url}"
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", _idle_body, environ={
        "NATS_URL": url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"},
        stop=stop, on_ready_port=port.set_result))
    try:
        readyz = f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz"
        async with httpx.AsyncClient() as http:
            await _readyz(http, readyz, lambda a: a["status"] == 200)
            server.process.kill()
            await asyncio.to_thread(server.process.wait)
            down = await _readyz(http, readyz, lambda a: a["status"] == 503)
            assert down["checks"]["nats"] is False and not stage.done()
            server = await asyncio.to_thread(start_nats_on_port, tmp_path / "nats", server.store_dir,
                                             int(server.url.rsplit(":", 1)[1]))
            up = await _readyz(http, readyz, lambda a: a["status"] == 200)
            assert up["checks"] == {"nats": True, "jetstream": True, "streams": True, "body": True, "own": True}
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)
        await asyncio.to_thread(server.stop)

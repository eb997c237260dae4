"""How every stage process starts (botburrow.runtime.service), against a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from botburrow.runtime import natsserver
from botburrow.runtime.service import StageContext, run_stage

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
            async def connected_not_ready() -> dict[str, Any]:
                while True:
                    response = await http.get(readyz)
                    if response.json()["checks"].get("nats"):
                        return {"status": response.status_code, **response.json()}
                    await asyncio.sleep(0.05)

            seen = await asyncio.wait_for(connected_not_ready(), WAIT_S)
        assert seen["status"] == 503 and seen["checks"] == {"nats": True, "streams": False, "body": False}
        assert not body_started.is_set()
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)
        await asyncio.to_thread(server.stop)

"""Riding out a leader election (issue 20): transient JetStream errors are retried inside a bound,
anything else is raised at once; the `jetstream` readiness check follows whether JetStream answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.js.errors
import pytest

from botburrow.runtime import election, natsserver
from botburrow.runtime.bus import Bus
from tests.fixtures.wait import until


async def test_a_transient_error_is_retried_until_the_call_succeeds() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.js.errors.ServiceUnavailableError(code=503, description="JetStream not enabled for account")
        return "ok"

    assert await election.ride_out(flaky, bound_s=5.0) == "ok"
    assert len(calls) == 3


async def test_anything_else_is_raised_at_once_and_a_transient_one_past_the_bound() -> None:
    calls: list[int] = []

    async def broken() -> None:
        calls.append(1)
        raise ValueError("a bug, not an election")

    with pytest.raises(ValueError):
        await election.ride_out(broken)
    assert len(calls) == 1

    async def down() -> None:
        calls.append(1)
        raise nats.js.errors.NoStreamResponseError

    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await election.ride_out(down, bound_s=0.6)
    assert 2 <= len(calls) - 1 <= 4  # 0.25 s, then 0.5 s backoff inside the 0.6 s bound


def test_what_counts_as_transient() -> None:
    assert election.is_transient(nats.js.errors.APIError(code=504, description="timeout"))
    assert election.is_transient(TimeoutError())
    assert not election.is_transient(nats.js.errors.APIError(code=400, description="bad request"))
    assert not election.is_transient(nats.js.errors.KeyWrongLastSequenceError())


async def test_the_probe_is_ready_only_while_jetstream_answers(tmp_path: Path) -> None:
    plain = await natsserver.start_async(tmp_path / "plain", jetstream=False)
    with_js = await natsserver.start_async(tmp_path / "js")
    try:
        for server, answers in ((plain, False), (with_js, True)):
            bus = await Bus.connect(server.url, name="test-probe")
            try:
                probe = election.JetStreamProbe(bus.js)
                assert not probe.ready()  # nothing known yet
                assert await probe.look() is answers
                assert probe.ready() is answers
            finally:
                await bus.close()
        # JetStream gone (the server killed): not ready once the grace has passed, without any call failing loudly.
        bus = await Bus.connect(with_js.url, name="test-probe")
        try:
            probe = election.JetStreamProbe(bus.js)
            assert await probe.look()
            await asyncio.to_thread(with_js.stop)
            await until(lambda: not probe.ready(), election.PROBE_GRACE_S + 5, "not ready once JetStream is gone")
        finally:
            await bus.close()
    finally:
        plain.stop()
        with_js.stop()


async def test_a_lease_create_that_landed_is_held_on_the_retry(bus: Bus) -> None:
    """An election can lose the answer to a `create` that landed: the retry finds its own value and holds
    the lease, instead of taking it for another holder's (a request waiting for itself)."""
    from services.runner.lease import Lease
    from streams.topology import LEASES

    kv = await bus.kv(LEASES.name)
    first = Lease(kv, "agent-x", "runner-1/act-1")
    assert await first.acquire()
    again = Lease(kv, "agent-x", "runner-1/act-1")  # the same handling, retrying
    assert await again.acquire() and again.revision == first.revision
    assert not await Lease(kv, "agent-x", "runner-2/act-1").acquire()
    await again.release()
    assert await Lease(kv, "agent-x", "runner-2/act-1").acquire()

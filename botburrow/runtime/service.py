"""How a stage process starts, runs and stops.

`run_stage` reads the stage's settings (naming every bad one), serves health and metrics at once (not
ready: no NATS yet), connects to NATS (giving up after `bus.START_CONNECT_S`, at once on a malformed
NATS_URL: `NatsUnavailable`, one line), creates any missing stream, consumer or bucket, then runs the
stage's body until `stop` is set. Once connected, a lost connection is reconnected (not ready meanwhile).
`main` adds JSON logs and SIGTERM/SIGINT handling for a real process (a stop while connecting too);
tests call `run_stage` in-process with their own `stop` event.

No silent stall: a body that ends by NATS trouble makes the stage not ready and is started again; by
anything else it ends the process (non-zero). A body's other long-lived tasks (a consumer, a poll
loop, a scheduler partition) run under `supervise`: one that ends makes the stage not ready and is
started again after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from prometheus_client import Counter

from botburrow import logs, tracing
from botburrow.runtime.bus import Bus, NatsUnavailable
from botburrow.runtime.election import JetStreamProbe
from botburrow.runtime.health import Health
from botburrow.runtime.http import RunningServer
from botburrow.runtime.kvread import current_entries
from botburrow.secrets import remember_all
from botburrow.settings import StageSettings, load, settings_of
from streams.apply import ensure

log = logging.getLogger(__name__)
# A supervised task that died is started again after this, doubling up to the maximum; the delay starts
# over once a run lasted RESTART_RESET_S.
RESTART_BACKOFF_S = 1.0
RESTART_MAX_BACKOFF_S = 30.0
RESTART_RESET_S = 60.0

TASK_RESTARTS = Counter("botburrow_task_restarts_total", "Long-lived tasks that ended unexpectedly and were restarted",
                        ["stage", "task"])


S = TypeVar("S", bound=StageSettings)


@dataclass
class StageContext(Generic[S]):
    """What a stage's body is given. `settings` is the stage's own struct: a stage's `run` takes
    `StageContext[IngestSettings]` (`run_stage` loads the struct `settings.settings_of(name)`)."""

    name: str
    settings: S
    bus: Bus
    health: Health
    stop: asyncio.Event
    environ: Mapping[str, str]
    metrics_port: int


StageBody = Callable[[StageContext[Any]], Awaitable[None]]

# What a NATS restart or leader election raises under a stage; anything else is a bug and ends it.
NATS_TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoServersError, nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
)


async def connect_until_stopped(url: str, name: str, creds: str | None, stop: asyncio.Event) -> Bus | None:
    """Connect to NATS (`Bus.connect`: NatsUnavailable if none answers in time); None if `stop` is set first."""
    connecting = asyncio.ensure_future(Bus.connect(url, name=name, creds=creds, connect_timeout_s=2))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not connecting.done():
            connecting.cancel()  # Bus.connect closes what it opened
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
    if connecting.cancelled():
        return None
    return connecting.result()


async def until_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Await `work` until it ends (its exception raised) or `stop` is set (it is then cancelled): for a
    watch loop under `supervise`, which waits for its task to end by itself."""
    working, stopping = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (working, stopping):
            future.cancel()
    if not stop.is_set():
        working.result()


async def follow_bucket(bus: Bus, bucket: str, stop: asyncio.Event,
                        on_entry: Callable[[KeyValue.Entry | None], None]) -> None:
    """Hand every entry of a KV bucket to `on_entry`, current values first, then None (the marker after
    them), then each change, until `stop` is set: the watch behind operator switches (paused, cancels).
    The None comes after the current values for sure (`kvread`: nats-py's own marker may come early)."""
    kv = await bus.kv(bucket)
    state = (await kv.status()).stream_info.state
    watcher = await kv.watchall()

    async def apply() -> None:
        async for current in current_entries(watcher, state.last_seq, state.messages):
            on_entry(current)
        on_entry(None)
        async for entry in watcher:
            if entry is not None:  # nats-py's marker, when it came after what current_entries read
                on_entry(entry)

    try:
        await until_stopped(apply(), stop)
    finally:
        await watcher.stop()


async def supervise(health: Health, name: str, task: Callable[[], Awaitable[None]], stop: asyncio.Event, *,
                    backoff_s: float = RESTART_BACKOFF_S, max_backoff_s: float = RESTART_MAX_BACKOFF_S) -> None:
    """Run one of a stage's long-lived tasks until `stop` is set, starting it again whenever it ends.

    Ending while the stage runs, by an exception, a cancellation or a return, is a fault: it is logged and counted, and
    the stage is not ready (check `task:<name>`) until the task runs again, `backoff_s` later (doubling
    while it keeps dying). The check goes when this returns (a released partition, a stopped stage).
    """
    up = True

    def running() -> bool:
        return up

    check = f"task:{name}"
    health.add_check(check, running)
    delay_s = backoff_s
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            started = loop.time()
            error = await _run_to_end(task, f"{health.service}:{name}")
            if stop.is_set():
                if error is not None and not isinstance(error, asyncio.CancelledError):
                    log.warning("task failed while stopping", extra={"task": name, "error": repr(error)[:300]})
                return
            up = False
            TASK_RESTARTS.labels(health.service, name).inc()
            if loop.time() - started > RESTART_RESET_S:
                delay_s = backoff_s
            log.error("task ended unexpectedly, restarting it", exc_info=error, extra={
                "stage": health.service, "task": name, "error": repr(error) if error else "returned",
                "retry_in_s": delay_s})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            delay_s = min(max_backoff_s, delay_s * 2)
            up = True
    finally:
        health.remove_check(check, running)


async def _run_to_end(task: Callable[[], Awaitable[None]], name: str) -> BaseException | None:
    """Run `task` as a task of its own (so that it, and not its supervisor, may be cancelled); returns
    how it ended: None when it returned, else its exception (CancelledError when it was cancelled)."""
    child = asyncio.ensure_future(task())
    child.set_name(name)
    try:
        await asyncio.wait({child})
    except asyncio.CancelledError:  # the supervisor itself is cancelled: so is its task
        child.cancel()
        with contextlib.suppress(BaseException):
            await child
        raise
    if child.cancelled():
        return asyncio.CancelledError(f"{name} was cancelled")
    return child.exception()


async def _run_body_until_stopped(ctx: StageContext[Any], body: StageBody, streams_made: asyncio.Event,
                                  running: asyncio.Event) -> None:
    """Run the stage's body; when NATS fails under it (a restart, a leader election), start it again.

    The body cleans up in its own `finally`, so a restart begins from a clean state; every consumer is
    durable, so nothing is lost in between. A body adds its own readiness checks before its first await.
    Any other failure ends the stage (the process exits non-zero and is restarted by its supervisor).
    """
    for attempt in itertools.count(1):
        try:
            await ensure(ctx.bus.js, runner_ack_wait_s=ctx.settings.runner_ack_wait_seconds)
            streams_made.set()
            running.set()
            await body(ctx)
            return
        except NATS_TRANSIENT as exc:
            running.clear()
            if ctx.stop.is_set():
                return
            delay_s = min(10.0, 0.5 * 2**attempt)
            log.warning("stage interrupted by NATS, restarting it", extra={
                "stage": ctx.name, "error": repr(exc), "attempt": attempt, "retry_in_s": delay_s})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stop.wait(), delay_s)
        except Exception:
            running.clear()
            log.critical("stage failed, stopping it", exc_info=True, extra={"stage": ctx.name})
            raise


async def run_stage(
    name: str,
    body: StageBody,
    *,
    environ: Mapping[str, str] | None = None,
    stop: asyncio.Event | None = None,
    on_ready_port: Callable[[int], None] | None = None,
) -> None:
    env = dict(os.environ if environ is None else environ)
    settings = load(settings_of(name), env)
    remember_all(env)
    tracing.configure(name, settings.otel_exporter_otlp_endpoint,
                      capture_content=settings.otel_instrumentation_genai_capture_message_content)
    stop = stop or asyncio.Event()
    health = Health(name)
    bus: Bus | None = None
    # Not ready until each holds: a stage that never reached NATS said 200 (no check registered yet).
    health.add_check("nats", lambda: bus is not None and bus.nc.is_connected)
    # Without this one /readyz said 200 while `ensure` made streams, before a runner had swept the
    # sandboxes its dead predecessor left.
    streams_made, running = asyncio.Event(), asyncio.Event()
    health.add_check("streams", streams_made.is_set)
    # False until the body runs, and while a body that NATS interrupted waits to start again: its own
    # checks may still say ready then (a runner's `taking_work` from before), yet nothing runs.
    health.add_check("body", running.is_set)
    server: RunningServer = await health.serve(settings.metrics_port, host=settings.metrics_host)
    if on_ready_port:
        on_ready_port(server.port)
    log.info("stage starting", extra={"stage": name, "metrics_port": server.port})
    try:
        bus = await connect_until_stopped(settings.nats_url, f"botburrow-{name}-{socket.gethostname()}",
                                          settings.nats_creds, stop)
        if bus is None:
            return
        ctx = StageContext(name, settings, bus, health, stop, env, server.port)
        # Connected is not enough on a cluster: JetStream itself may not answer (no meta leader).
        probe = JetStreamProbe(bus.js)
        health.add_check("jetstream", probe.ready)
        probing = asyncio.create_task(probe.run(stop))
        try:
            await _run_body_until_stopped(ctx, body, streams_made, running)
        finally:
            probing.cancel()
    finally:
        if bus is not None:
            await bus.close()
        await server.stop()
        await asyncio.to_thread(tracing.close, name)  # the spans still queued are sent
        log.info("stage stopped", extra={"stage": name})


def main(name: str, body: StageBody) -> None:
    """Run a stage as a process: JSON logs, clean stop on SIGTERM/SIGINT."""
    logs.setup(name, os.environ.get("LOG_LEVEL", "INFO"))
    # What the imports made lives as long as the process: out of the collector's sight, a full
    # collection no longer walks it (25 ms for a scheduler's 60k objects, paid in its latency tail).
    gc.freeze()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_stage(name, body, stop=stop)

    try:
        asyncio.run(runner())
    except NatsUnavailable as exc:
        log.critical(str(exc), extra={"stage": name})  # the one line: the setting, what was tried
        sys.exit(1)

"""The terminal side of `botburrow dev`: progress, the agents loaded, the demo, then every run event.

Stopping: the first SIGINT or SIGTERM cancels whatever is under way (connecting, starting, the demo,
waiting) and stops every process started, each in its own process group; a second one kills them all
at once. A malformed or unreachable NATS_URL ends it non-zero with one line (`bus.NatsUnavailable`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import signal

from nats.aio.msg import Msg

from botburrow import tracing
from botburrow.cli.ops import pretty
from botburrow.dev import DevOptions
from botburrow.dev.phoenix import Phoenix, PhoenixError, trace_url
from botburrow.dev.processes import reap
from botburrow.dev.stack import LocalStack, StartError, await_configs
from botburrow.runtime.bus import Bus, NatsUnavailable
from streams import subjects
from streams.topology import RUN_EVENT

DEMO_AGENT = "pirate-captain"
DEMO_TEXT = "Ahoy! Where should a new crew member start learning to sail?"
DEMO_TIMEOUT_S = 60.0


def say(line: str) -> None:
    print(f"botburrow dev | {line}", flush=True)


def _demo_agent(stack: LocalStack) -> str | None:
    """The pirate if loaded (or a pirate-captain-something), else the first agent that can answer."""
    answering = sorted(stack.answering_agents(), key=lambda name: (name != DEMO_AGENT,
                                                                   not name.startswith(DEMO_AGENT), name))
    return next(iter(answering), None)


async def _demo(stack: LocalStack, bus: Bus, agent: str, phoenix: Phoenix | None = None) -> None:
    """Mention `agent` and follow the activation that answers this mention (not an exploration run of
    the same agent that happened to end first: the published agents explore). On the moltbook profile
    the mention is a post naming the agent's Hub name; its notification is the one ingest derives."""
    if stack.hub is None:
        say(f"demo: none on an outside Hub; name @{agent.replace('-', '_')} (its Hub name) in a post there")
        return
    done: asyncio.Future[tuple[str, str, str]] = asyncio.get_running_loop().create_future()
    wanted: dict[str, str] = {}  # "notification" -> its id, once known
    started: dict[str, list[str]] = {}  # activation id -> the notifications it answers

    async def on_event(msg: Msg) -> None:
        activation_id, kind = msg.subject.split(".")[3:5]
        if kind == "started":
            started[activation_id] = json.loads(msg.data).get("notification_ids", [])
        elif (kind in ("completed", "failed") and wanted.get("notification") in started.get(activation_id, [])
              and not done.done()):
            done.set_result((activation_id, kind, _trace_link(phoenix, msg)))

    async def on_notification(msg: Msg) -> None:  # moltbook: the notification ingest derived from our post
        note = json.loads(msg.data).get("notification", {})
        if note.get("post_id") == wanted.get("post") and note.get("type") == "mention":
            wanted.setdefault("notification", note.get("id", ""))

    subs = [await bus.nc.subscribe(subjects.run_events(agent), cb=on_event),
            await bus.nc.subscribe(subjects.notification(agent), cb=on_notification)]
    name = stack.hub_names.get(agent, agent)
    if stack.hub_profile == "moltbook":
        post = stack.hub.add_post(DEMO_TEXT, f"@{name} {DEMO_TEXT}")
        wanted["post"] = post_id = post.id
    else:
        notification = stack.hub.mention(agent, DEMO_TEXT)
        wanted["notification"], post_id = notification.id, notification.post_id or ""
    say(f"demo: alice mentions @{name} on post {post_id}: {DEMO_TEXT!r}")
    try:
        activation_id, outcome, link = await asyncio.wait_for(done, DEMO_TIMEOUT_S)
    except TimeoutError:
        say(f"demo: no answer within {DEMO_TIMEOUT_S:.0f} s; see the stage logs in {stack.work_dir}")
        return
    finally:
        for sub in subs:
            await sub.unsubscribe()
    replies = [c for c in stack.hub.comments_on(post_id) if c.author_name == name]
    for comment in replies:
        say(f"demo: {agent} replied on post {post_id}: {comment.content!r}{link}")
    if outcome == "failed" or not replies:
        say(f"demo: the run ended {outcome} without a reply; botburrow show {activation_id} says why")
    say(f"demo: the whole run: botburrow show {activation_id}   (with NATS_URL={stack.nats_url})")


async def _start(stack: LocalStack) -> Bus:
    """Start everything; the stages start while this process reaches NATS itself, so an unreachable
    NATS_URL is named (NatsUnavailable) rather than a stage's exit."""
    await stack.start_servers()
    connecting = asyncio.ensure_future(Bus.connect(stack.nats_url, name="botburrow-dev", connect_timeout_s=2))
    starting = asyncio.ensure_future(stack.start_stages())
    try:
        await asyncio.wait({connecting, starting}, return_when=asyncio.FIRST_EXCEPTION)
        if connecting.done() and connecting.exception() is not None:
            await connecting  # NATS first: it is why a stage would have ended too
        await starting
        return await connecting
    except BaseException:
        for task in (starting, connecting):
            task.cancel()
            with contextlib.suppress(BaseException):
                bus = await task
                if isinstance(bus, Bus):
                    await bus.close()
        raise


class _Signals:
    """First SIGINT/SIGTERM: cancel what runs (its `finally` stops everything), or, if already stopping,
    nothing more; the next one kills everything at once."""

    def __init__(self, stack: LocalStack) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.stack, self.task, self.received, self.stopping = stack, task, 0, False
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        self.received += 1
        if self.received > 1:
            say(f"{signal.Signals(sig).name} again: killing everything")
            self.stack.kill()
        elif self.stopping:
            say(f"{signal.Signals(sig).name}: already stopping (again to kill at once)")
        else:
            say(f"{signal.Signals(sig).name}: stopping everything (again to kill at once)")
            self.task.cancel()


async def run(options: DevOptions) -> int:
    try:
        stack = LocalStack.for_dev(options, progress=say)
    except (StartError, NatsUnavailable) as exc:
        say(f"error: {exc}")
        return 2
    signals = _Signals(stack)
    # The last sweep runs after the interpreter joined its worker threads: a nats-server whose start (in a
    # thread a stop cannot interrupt) completed after the stop's own sweep is reaped there.
    atexit.register(reap, stack.work_dir)
    say(f"starting everything in {stack.work_dir}")
    bus: Bus | None = None
    phoenix = Phoenix(stack.work_dir / "phoenix") if options.traces else None
    ready = False
    try:
        if phoenix is not None:
            stack.extra_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = await phoenix.start()
            say(f"traces: Arize Phoenix at {phoenix.url} (SQLite in {phoenix.work_dir})")
        bus = await _start(stack)
        await await_configs(bus, sorted(stack.loaded_agents()))
        say("all stages ready")
        ready = True
        agent = _demo_agent(stack)
        if options.demo and agent:
            await _demo(stack, bus, agent, phoenix)
        say(f"HUB_URL={stack.hub.url if stack.hub else stack.hub_url} NATS_URL={stack.nats_url}; try: "
            f"NATS_URL={stack.nats_url} botburrow inject notification --agent {agent or DEMO_AGENT} "
            "--type mention --content hi   (Ctrl-C stops everything)")
        await bus.nc.subscribe(RUN_EVENT.pattern, cb=functools.partial(_print_event, phoenix=phoenix))
        await asyncio.Event().wait()  # until a signal cancels this task
        return 0
    except asyncio.CancelledError:
        signals.task.uncancel()  # the stop below must not be cancelled by the same request
        return 0 if ready else 130
    except (NatsUnavailable, StartError, PhoenixError, RuntimeError) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        signals.stopping = True
        say("stopping")
        if bus is not None:
            await bus.close()
        await stack.stop()
        if phoenix is not None:
            await phoenix.stop()
        say("stopped")


def _trace_link(phoenix: Phoenix | None, msg: Msg) -> str:
    """`   trace: <Phoenix link>` for a run event (its traceparent), or nothing without --traces."""
    ref = tracing.of_message(msg.headers) if phoenix is not None else None
    return f"   trace: {trace_url(phoenix.url, ref.trace_id)}" if phoenix is not None and ref else ""


async def _print_event(msg: Msg, phoenix: Phoenix | None = None) -> None:
    ended = msg.subject.rsplit(".", 1)[-1] in ("completed", "failed")
    print(pretty(msg.subject, msg.data) + (_trace_link(phoenix, msg) if ended else ""), flush=True)

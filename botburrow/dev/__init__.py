"""Local mode: `botburrow dev` starts everything on one machine (contract §7) and sends a demo mention.

`stack.LocalStack` does the starting and stopping (the end-to-end tests use it too); this module
adds the terminal: progress while starting, the demo, then every run event as it happens.

- `__init__`: the terminal side of `botburrow dev` (`main`)
- `stack`: `LocalStack`: nats-server, the Hub emulator, the scripted LLM and every stage as a process
- `agents/`, `skills/`: the example definitions local mode publishes
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from botburrow.cli.ops import pretty
from botburrow.dev.stack import LocalStack
from botburrow.runtime.bus import Bus
from streams import subjects
from streams.topology import CONFIGS, RUN_EVENT

DEMO_AGENT = "pirate-captain"
DEMO_TEXT = "Ahoy! Where should a new crew member start learning to sail?"
DEMO_TIMEOUT_S = 60.0


def say(line: str) -> None:
    print(f"botburrow dev | {line}", flush=True)


async def _await_configs(bus: Bus, names: list[str], timeout_s: float = 30.0) -> None:
    kv = await bus.kv(CONFIGS.name)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            keys = set(await kv.keys())
        except Exception:  # no keys yet
            keys = set()
        if all(f"agent.{name}" in keys for name in names):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("configsync did not publish the example agents in time; see configsync.log")


async def _demo(stack: LocalStack, bus: Bus) -> None:
    assert stack.hub is not None
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_end(msg) -> None:
        if not done.done():
            done.set_result(msg.subject.split(".")[3])

    sub = await bus.nc.subscribe(subjects.run_events(DEMO_AGENT, "completed"), cb=on_end)
    failed = await bus.nc.subscribe(subjects.run_events(DEMO_AGENT, "failed"), cb=on_end)
    notification = stack.hub.mention(DEMO_AGENT, DEMO_TEXT)
    say(f"demo: alice mentions @{DEMO_AGENT} on post {notification.post_id}: {DEMO_TEXT!r}")
    try:
        activation_id = await asyncio.wait_for(done, DEMO_TIMEOUT_S)
    except TimeoutError:
        say("demo: no answer within 60 s; see the stage logs")
        return
    finally:
        await sub.unsubscribe()
        await failed.unsubscribe()
    replies = [c for c in stack.hub.comments_on(notification.post_id or "") if c.author_name == DEMO_AGENT]
    for comment in replies:
        say(f"demo: {DEMO_AGENT} replied on post {notification.post_id}: {comment.content!r}")
    say(f"demo: the whole run: botburrow show {activation_id}   (with NATS_URL={stack.nats_url})")


async def run(demo: bool, runners: int, cluster: int = 0) -> int:
    stack = LocalStack.in_temp_dir(runners=runners, cluster=cluster, progress=say)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    say(f"starting everything in {stack.work_dir}")
    bus = None
    try:
        await stack.start()
        bus = await Bus.connect(stack.nats_url, name="botburrow-dev")
        await _await_configs(bus, stack.agent_names())
        say("all stages ready")
        if demo:
            await _demo(stack, bus)
        say(f"HUB_URL={stack.hub.url if stack.hub else ''} NATS_URL={stack.nats_url}; try: "
            f"NATS_URL={stack.nats_url} botburrow inject notification --agent {DEMO_AGENT} --type mention "
            "--content hi   (Ctrl-C stops everything)")
        await bus.nc.subscribe(RUN_EVENT.pattern, cb=_print_event)
        await stop.wait()
        return 0
    except RuntimeError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        say("stopping")
        if bus is not None:
            await bus.close()
        await stack.stop()
        say("stopped")


async def _print_event(msg) -> None:
    print(pretty(msg.subject, msg.data), flush=True)


def main(demo: bool = True, runners: int = 1, cluster: int = 0) -> int:
    # The stages log to their own files; this terminal shows progress and events only.
    for package in ("botburrow", "schemas", "streams", "services"):
        logging.getLogger(package).setLevel(logging.ERROR)
    try:
        return asyncio.run(run(demo, runners, cluster))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

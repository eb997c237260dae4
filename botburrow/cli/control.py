"""The contract's operator commands (contract §7): `botburrow agent pause|resume <agent>` and
`botburrow cancel <activation id>`.

Both write a key the stages watch: `paused.<agent>` makes the scheduler refuse the agent's work with
reason `paused` (events on `agents.sched.decision.<agent>`) until it is deleted; `cancels.<activation>`
(kept as long as ACTIVATIONS keeps a request) stops that activation in the runner that runs it, or
refuses it when a runner takes it, ending it `failed` with reason `cancelled by operator`.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from botburrow.cli.errors import CliError
from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from schemas.codec import DecodeError, decode_subject
from schemas.events import RunCompleted, RunFailed, RunStarted
from streams import subjects
from streams.apply import ensure
from streams.topology import CANCELS, CONFIGS, ENDINGS, PAUSED, RUNS

CANCEL_WAIT_S = 15.0


async def _known_agent(bus: Bus, agent: str) -> None:
    try:
        await (await bus.kv(CONFIGS.name)).get(f"agent.{agent}")
    except KeyNotFoundError:
        raise CliError(f"no agent {agent!r} in the configs bucket: check the name (`botburrow tail` shows "
                       "the agents at work)") from None


async def agent(bus: Bus, args: argparse.Namespace) -> int:
    await ensure(bus.js)
    await _known_agent(bus, args.agent)
    kv = await bus.kv(PAUSED.name)
    key = subjects.token(args.agent)
    if args.action == "pause":
        await kv.put(key, datetime.now(UTC).isoformat().encode())
        print(f"{args.agent} paused: the scheduler starts none of its activations (reason `paused`) until "
              f"`botburrow agent resume {args.agent}`; a running one goes on (`botburrow cancel <id>` stops it)")
        return 0
    try:
        await kv.get(key)
    except KeyNotFoundError:
        print(f"{args.agent} was not paused")
        return 0
    await kv.delete(key)
    print(f"{args.agent} resumed: its waiting notifications are activated again")
    return 0


async def _state(bus: Bus, activation_id: str) -> str:
    """`ended <outcome>`, `running` or `not started` (queued, or no such activation)."""
    state = "not started"
    for msg in await read_all(bus, RUNS.name, subjects.run_events_of(activation_id)):
        try:
            event = decode_subject(msg.subject, msg.data)
        except DecodeError:
            continue
        if isinstance(event, RunCompleted | RunFailed):
            state = f"ended {event.metrics.outcome}"
        elif isinstance(event, RunStarted):
            state = "running"
    return state


async def cancel(bus: Bus, args: argparse.Namespace) -> int:
    await ensure(bus.js)
    state = await _state(bus, args.activation_id)
    if state.startswith("ended"):
        raise CliError(f"activation {args.activation_id} has already {state}: nothing to cancel "
                       f"(`botburrow show {args.activation_id}`)")
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        event = msg.subject.rsplit(".", 1)[-1]
        if event in ENDINGS and not ended.done():
            ended.set_result(event)

    sub = await bus.nc.subscribe(subjects.run_events_of(args.activation_id), cb=on_event)
    try:
        kv = await bus.kv(CANCELS.name)
        await kv.put(subjects.token(args.activation_id), datetime.now(UTC).isoformat().encode())
        if state == "not started":
            print(f"activation {args.activation_id} cancelled: a runner refuses it when it takes it")
            return 0
        try:
            outcome = await asyncio.wait_for(ended, CANCEL_WAIT_S)
        except TimeoutError:
            print(f"activation {args.activation_id}: cancel requested; it has not ended within {CANCEL_WAIT_S:g} s "
                  f"(`botburrow show {args.activation_id}`)")
            return 1
        print(f"activation {args.activation_id} cancelled: it ended {outcome}")
        return 0 if outcome == "failed" else 1
    finally:
        await sub.unsubscribe()


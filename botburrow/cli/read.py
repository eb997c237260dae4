"""Reading a stream's history for operator commands: an ephemeral ordered read up to the current end."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from botburrow.runtime.bus import Bus


async def read_all(bus: Bus, stream: str, subject: str, *, batch: int = 256) -> list[Msg]:
    """Every message of `stream` matching `subject`, in order, as of now."""
    sub = await bus.js.pull_subscribe(
        subject, stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                              inactive_threshold=30.0),
    )
    out: list[Msg] = []
    try:
        info = await sub.consumer_info()
        remaining = info.num_pending
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=2)
            except TimeoutError:  # nats.errors.TimeoutError is one, and so is an asyncio timeout inside fetch
                break
            out += msgs
            remaining -= len(msgs)
    finally:
        await sub.unsubscribe()
    return out

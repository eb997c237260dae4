"""Reading a stream's history for operator commands: an ordered read up to the current end.

An ordered push consumer, not a pull fetch: it streams the history without a request per batch
(1,000 run events in ~0.08 s against ~0.25 s for fetches on the development machine).
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from botburrow.runtime.bus import Bus

NEXT_MSG_TIMEOUT_S = 5.0


async def read_all(bus: Bus, stream: str, subject: str, *, last: int | None = None) -> list[Msg]:
    """Every message of `stream` matching `subject`, in order, as of now (with `last`: only those among
    the stream's last `last` messages)."""
    # A push consumer's num_pending says nothing of what is already on its way to us: ask the stream
    # whether the subject has any message at all, then read until a message says none is left.
    state = (await bus.js.stream_info(stream, subjects_filter=subject)).state
    if not state.subjects:
        return []
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if last is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=max(1, state.last_seq - last + 1))
    sub = await bus.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    out: list[Msg] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=NEXT_MSG_TIMEOUT_S)
            except TimeoutError:
                break  # the stream shrank under us (aged out): what we have is all there is
            out.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out

"""Reading RUNS by direct gets: the messages on a subject between two sequences, in order.

The metrics stage reads RUNS this way, not with a consumer (the stream holds the runners' durables):
one `get_msg(next=True)` per message found, so a few events of one activation cost a few gets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from botburrow.runtime.bus import Bus
from streams.topology import RUNS


async def runs_between(bus: Bus, subject: str, from_seq: int,
                       until_seq: int) -> AsyncIterator[tuple[int, RawStreamMsg]]:
    """(sequence, message) of every RUNS message on `subject` (wildcards allowed) with
    from_seq <= sequence < until_seq. What aged out of RUNS is gone: the read starts at what is left."""
    seq = from_seq
    while seq < until_seq:
        try:
            msg = await bus.js.get_msg(RUNS.name, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return
        if msg.seq is None or msg.seq >= until_seq:
            return
        seq = msg.seq + 1
        yield msg.seq, msg

"""Dead letters for values of the `configs` bucket that no stage can read.

A KV entry is not a JetStream message a consumer fetched, but a letter of it should look like one: this
adapter gives `DeadLetters.send` a `Msg` whose subject is the value's (`$KV.configs.<key>`) and whose
metadata names the bucket's stream and the value's revision. The letter's msg id is then
`dlq:KV_configs:<revision>`, so the stages that all read the same bad value (ingest, scheduler, runner,
configsync) leave one letter per revision within the DLQ stream's duplicate window, not one each.
"""

from __future__ import annotations

import logging
import time

from nats.aio.msg import Msg

from botburrow.definitions import bucket
from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import DeadLetters
from botburrow.settings import STAGES

log = logging.getLogger(__name__)


def stage_of(bus: Bus) -> str | None:
    """The stage a connection belongs to: `run_stage` names it `botburrow-<stage>-<host>`; None otherwise."""
    name = str(getattr(bus.nc, "options", {}).get("name") or "")
    parts = name.split("-")
    return parts[1] if len(parts) > 2 and parts[0] == "botburrow" and parts[1] in STAGES else None


def entry_msg(bus: Bus, key: str, revision: int | None, value: bytes) -> Msg:
    """A `Msg` standing for the bucket value `key` at `revision`, as a consumer would have received it."""
    reply = f"$JS.ACK.{bucket.STREAM}.configs-reader.1.{revision}.{revision}.{time.time_ns()}.0"
    return Msg(_client=bus.nc, subject=bucket.subject(key), reply=reply, data=value, headers={})


async def dead_letter(bus: Bus, stage: str | None, key: str, revision: int | None, value: bytes,
                      reason: str) -> None:
    """Dead-letter one unreadable value; never raises (a NATS hiccup must not stop the reader)."""
    if stage is None:  # an operator command reading the bucket: it says so, it files no letter
        return
    try:
        await DeadLetters(bus, stage).send(entry_msg(bus, key, revision, value), reason, category="config")
    except Exception as exc:  # logged; the value is skipped all the same
        log.error("cannot dead-letter an unreadable configs value",
                  extra={"key": key, "revision": revision, "error": repr(exc)[:300]})

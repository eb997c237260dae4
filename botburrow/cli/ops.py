"""Operator commands that talk to NATS: streams apply, inject, tail, show, dlq."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import sys
import uuid

import msgspec
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, NotFoundError

from botburrow.cli import control, letters
from botburrow.cli import inject as inject_cmd
from botburrow.cli.errors import CliError
from botburrow.cli.read import read_all
from botburrow.cli.timeline import render
from botburrow.runtime.bus import Bus, NatsUnavailable
from botburrow.settings import CliSettings, load
from schemas.codec import DecodeError, decode_subject
from schemas.events import DeadLetter
from streams import subjects
from streams.apply import ensure
from streams.topology import ALL_SUBJECTS, DEAD_LETTER, DLQ, RUN_EVENT, RUNS

CONNECT_GIVE_UP_S = 5.0


async def _connect() -> Bus:
    settings = load(CliSettings)
    try:
        # A stage waits for NATS longer; a command gives up soon and says so.
        return await Bus.connect(settings.nats_url, name="botburrow-cli", creds=settings.nats_creds,
                                 connect_timeout_s=2, give_up_s=CONNECT_GIVE_UP_S)
    except NatsUnavailable as exc:
        raise CliError(f"{exc}; set NATS_URL to the server's (`botburrow dev` prints it, with the operator's "
                       "password)") from None


async def run(args: argparse.Namespace) -> int:
    if args.command == "inject":
        inject_cmd.check(args)  # a bad command line is refused without waiting for NATS
    bus = await _connect()
    try:
        handler = {"streams": streams_apply, "inject": inject, "tail": tail, "show": show, "dlq": dlq,
                   "replay": replay, "agent": control.agent, "cancel": control.cancel}[args.command]
        return await handler(bus, args)
    finally:
        # The command closing its own connection is no news: without this, every command ended with a
        # "nats disconnected" warning on stderr after its one-line answer.
        logging.getLogger("botburrow.runtime.bus").setLevel(logging.ERROR)
        await bus.close()


async def streams_apply(bus: Bus, args: argparse.Namespace) -> int:
    settings = load(CliSettings)
    for line in await ensure(bus.js, update=True, replicas=settings.stream_replicas,
                             runner_ack_wait_s=settings.runner_ack_wait_seconds):
        print(line)
    return 0


async def inject(bus: Bus, args: argparse.Namespace) -> int:
    await ensure(bus.js)
    if args.raw:
        return await inject_cmd.raw(bus, args.raw, args.file)
    return await inject_cmd.notification(bus, args)


def pretty(subject: str, data: bytes) -> str:
    try:
        payload = decode_subject(subject, data)
    except DecodeError as exc:
        return f"{subject}  (undecodable: {exc.reason[:80]}) {data[:200]!r}"
    if subjects.matches(RUN_EVENT.pattern, subject):
        return f"{subject}\n    {render([payload])}"
    return f"{subject}  {msgspec.json.encode(payload).decode()[:300]}"


async def tail(bus: Bus, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def on_msg(msg) -> None:
        print(msg.data.decode(errors="replace") if args.json else pretty(msg.subject, msg.data), flush=True)

    subject = args.subject or ALL_SUBJECTS
    sub = await bus.nc.subscribe(subject, cb=on_msg)
    print(f"following {subject} (Ctrl-C to stop)", file=sys.stderr)
    await stop.wait()
    await sub.unsubscribe()
    return 0


async def load_run(bus: Bus, activation_id: str) -> list:
    msgs = await read_all(bus, RUNS.name, subjects.run_events_of(activation_id))
    events = []
    for msg in msgs:
        with contextlib.suppress(DecodeError):
            events.append(decode_subject(msg.subject, msg.data))
    return events


async def show(bus: Bus, args: argparse.Namespace) -> int:
    from botburrow.cli.replay import read_events

    events, problems, _ = await read_events(bus, args.activation_id)
    for problem in problems:  # events of another schema version: shown as a note, never a traceback
        print(f"warning: {problem}", file=sys.stderr)
    if not events:
        if not problems:
            print(f"no events for activation {args.activation_id!r} (unknown id, or aged out of RUNS)",
                  file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([msgspec.to_builtins(e) for e in events], indent=2))
    else:
        print(render(events, whole=True))
    return 0


def _letter(data: bytes) -> DeadLetter | None:
    try:
        return msgspec.json.decode(data, type=DeadLetter)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _refuse(message: str) -> int:
    """One line on stderr, exit 1: what an operator command says when it will not do something."""
    print(" ".join(message.split())[:1000], file=sys.stderr)
    return 1


async def dlq(bus: Bus, args: argparse.Namespace) -> int:
    """`dlq ls | show | redrive`: every failure is one line on stderr and exit 1, never a traceback."""
    try:
        return await _dlq(bus, args)
    except (NatsError, TimeoutError) as exc:
        return _refuse(f"botburrow dlq {args.action}: NATS error {type(exc).__name__}: {exc}")


async def _dlq(bus: Bus, args: argparse.Namespace) -> int:
    if args.action == "ls":
        return await dlq_ls(bus)
    if args.seq is None:
        raise SystemExit(f"usage: botburrow dlq {args.action} <seq>")
    try:
        raw = await bus.js.get_msg(DLQ.name, args.seq)
    except NotFoundError:
        return _refuse(f"no dead letter with seq {args.seq} in DLQ")
    data = raw.data or b""
    letter = _letter(data)
    if letter is None:
        return _refuse(f"DLQ seq {args.seq} is not a dead letter: {data[:200]!r}")
    if args.action == "show":
        print(letters.show_kv(args.seq, letter) if letters.is_kv(letter)
              else json.dumps(msgspec.to_builtins(letter), indent=2))
        return 0
    return await dlq_redrive(bus, args.seq, raw.subject or "", letter)


async def dlq_ls(bus: Bus) -> int:
    msgs = await read_all(bus, DLQ.name, DEAD_LETTER.pattern)
    for msg in msgs:
        letter = _letter(msg.data)
        seq = msg.metadata.sequence.stream
        if letter is None:
            print(f"{seq:>6}  {msg.subject:<10} (not a dead letter: {msg.data[:60]!r})")
            continue
        print(f"{seq:>6}  {letter.stage:<10} {letter.subject!r:<50} {letter.reason[:80]!r}")
    print(f"{len(msgs)} dead letter(s)", file=sys.stderr)
    return 0


async def dlq_redrive(bus: Bus, seq: int, filed_under: str, letter: DeadLetter) -> int:
    """Republish a letter's payload, only to an input subject of the stage that wrote it (see
    `subjects.redrive_subject`): a letter is data anyone on `agents.dlq.*` may have written."""
    stage = filed_under.rsplit(".", 1)[-1]
    if filed_under != subjects.dlq(stage) or letter.stage != stage:
        return _refuse(f"cannot redrive DLQ seq {seq}: filed under {filed_under!r} but written as stage "
                       f"{letter.stage[:50]!r}: refused")
    if letters.is_kv(letter):
        return _refuse(f"cannot redrive DLQ seq {seq}: {letters.kv_refusal(letter)}")
    target = subjects.redrive_subject(stage, letter.subject)
    if target is None:
        inputs = ", ".join(subjects.input_subjects(stage)) or "none: it reads no subject"
        return _refuse(f"cannot redrive DLQ seq {seq}: {letter.subject[:200]!r} is not an input subject of "
                       f"stage {stage!r} (its inputs: {inputs}): refused")
    try:
        data = base64.b64decode(letter.payload, validate=True) if letter.payload_encoding == "base64" \
            else letter.payload.encode()
    except ValueError:
        return _refuse(f"cannot redrive DLQ seq {seq}: its payload is not valid base64")
    if getattr(letter, "payload_truncated", False):
        return _refuse(f"cannot redrive DLQ seq {seq}: the letter holds only the start of the payload; "
                       f"the whole message is {letter.stream} seq {letter.seq}")
    try:
        ack = await bus.publish(target, data, msg_id=f"redrive:{seq}:{uuid.uuid4().hex[:8]}",
                                headers={"Redrive-Of": str(seq)})
    except (NoRespondersError, NoStreamResponseError, NatsTimeoutError):
        return _refuse(f"cannot redrive DLQ seq {seq}: no stream takes {target!r}")
    print(f"redriven to {target} (seq {ack.seq})")
    return 0


async def replay(bus: Bus, args: argparse.Namespace) -> int:
    from botburrow.cli.replay import run as run_replay

    return await run_replay(bus, args)

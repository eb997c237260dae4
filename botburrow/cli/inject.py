"""`botburrow inject notification | --raw SUBJECT`: publish what the ingest stage would, then follow it.

A notification needs a thread to be answered in (a mention's post, a DM's conversation): without
`--post`/`--dm` the agent's newest thread in `NOTIFICATIONS` is reused (the demo's, under `botburrow
dev`), then any agent's; a DM without one starts a new conversation. The command then prints the
activation that takes the notification (what `show` and `replay` need) and, with `--wait`, the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, NoStreamResponseError, NotFoundError

from botburrow.cli.errors import CliError
from botburrow.cli.read import read_all
from botburrow.definitions import bucket
from botburrow.runtime.bus import Bus
from schemas.agent import AgentConfig, AgentDefinition
from schemas.codec import DecodeError, decode_subject
from schemas.events import (
    ActivationRequested,
    LlmTurn,
    NotificationReceived,
    Posted,
    RunCompleted,
    RunFailed,
    SchedulingRefused,
)
from schemas.hub import NOTIFICATION_TYPES, Author, Notification
from streams import subjects
from streams.topology import CONFIGS, NOTIFICATION, NOTIFICATIONS, STREAMS

# How far back `inject` looks for a thread to reuse when the agent's own last notification names none.
RECENT_NOTIFICATIONS = 500


def _read_payload(path: str | None) -> bytes:
    return Path(path).read_bytes() if path else sys.stdin.buffer.read()


async def raw(bus: Bus, subject: str, file: str | None) -> int:
    covered = ", ".join(s for spec in STREAMS for s in spec.subjects)
    refusal = f"no stream takes {subject!r}: publish to a subject one covers ({covered})"
    try:
        await bus.js.find_stream_name_by_subject(subject)
    except NotFoundError:
        raise CliError(refusal) from None
    data = await asyncio.to_thread(_read_payload, file)
    try:
        ack = await bus.publish(subject, data)
    except (NoStreamResponseError, NoRespondersError, NatsTimeoutError):
        raise CliError(refusal) from None
    print(f"published {len(data)} bytes to {subject} (stream {ack.stream}, seq {ack.seq})")
    return 0


async def _last(bus: Bus, subject: str) -> Notification | None:
    try:
        msg = await bus.js.get_last_msg(NOTIFICATIONS.name, subject)
        payload = decode_subject(msg.subject or subject, msg.data or b"")
    except (NotFoundError, DecodeError):
        return None
    return getattr(payload, "notification", None)


async def _thread(bus: Bus, args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(post id, DM id) for the notification: the ones given, else a thread reused, else a new DM."""
    if args.type == "dm":
        if args.dm:
            return None, args.dm
        last = await _last(bus, subjects.notification(args.agent))
        return None, (last.dm_id if last and last.dm_id else f"dm-{uuid.uuid4().hex[:12]}")
    if args.post:
        return args.post, None
    last = await _last(bus, subjects.notification(args.agent))
    if last is not None and last.post_id:
        return last.post_id, None
    # The newest post among the latest notifications, this agent's first.
    posts: dict[bool, str] = {}
    for msg in await read_all(bus, NOTIFICATIONS.name, NOTIFICATION.pattern, last=RECENT_NOTIFICATIONS):
        with contextlib.suppress(DecodeError):
            event = decode_subject(msg.subject, msg.data)
            if isinstance(event, NotificationReceived) and event.notification.post_id:
                posts[event.agent == args.agent] = event.notification.post_id
    if posts:
        return posts.get(True) or posts[False], None
    raise CliError(f"no thread to put a {args.type} in: no notification names a post yet; pass --post <post id> "
                   "(a post of the Hub)")


async def _config(bus: Bus, agent: str) -> AgentConfig:
    kv = await bus.kv(CONFIGS.name)
    try:
        entry = await kv.get(bucket.key("agent", agent))
        definition = bucket.read("agent", agent, entry.value or b"")
    except KeyNotFoundError:
        raise CliError(f"no agent {agent!r} in the configs bucket: check the name, and that configsync runs "
                       "(it publishes AGENTS_SOURCE)") from None
    except bucket.UnreadableValue as exc:
        raise CliError(f"agent {agent!r} has an unreadable definition ({exc}): fix it at its source") from None
    assert isinstance(definition, AgentDefinition)
    return definition.config


@dataclass
class Follow:
    """What happens to one notification: the activation that takes it, its run events, a refusal."""

    agent: str
    notification_id: str
    activation: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ended: asyncio.Future[RunCompleted | RunFailed] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    events: list[object] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        try:
            payload = decode_subject(msg.subject, msg.data)
        except DecodeError:
            return
        if isinstance(payload, ActivationRequested) and not self.activation.done() \
                and any(n.id == self.notification_id for n in payload.notifications):
            self.activation.set_result(payload.activation_id)
        elif isinstance(payload, SchedulingRefused):
            self.refusals.append(payload.reason)
        elif hasattr(payload, "activation_id"):
            self.events.append(payload)
            if isinstance(payload, RunCompleted | RunFailed) and self.activation.done() \
                    and payload.activation_id == self.activation.result() and not self.ended.done():
                self.ended.set_result(payload)

    def of_activation(self) -> list[object]:
        mine = self.activation.result()
        return [e for e in self.events if getattr(e, "activation_id", None) == mine]


def _reply(follow: Follow, ended: RunCompleted | RunFailed) -> str:
    events = follow.of_activation()
    texts = [e.text for e in events if isinstance(e, LlmTurn) and e.text and not e.tool_calls]
    posted = [e for e in events if isinstance(e, Posted)]
    metrics = ended.metrics
    head = f"{ended.agent} {metrics.outcome}" + (f" ({metrics.error})" if metrics.error else "")
    if posted:
        where = posted[-1].dm_id or posted[-1].post_id
        head += f": {posted[-1].target} {posted[-1].hub_id or '-'} on {where}"
    return head + (f"\n{texts[-1]}" if texts and posted else "")


def check(args: argparse.Namespace) -> None:
    """What can be refused before connecting to NATS."""
    if args.raw:
        return
    if args.kind != "notification" or not args.agent:
        raise CliError("usage: botburrow inject notification --agent A [--type mention] [--content TEXT] [--wait]")
    if args.type not in NOTIFICATION_TYPES:
        raise CliError(f"unknown notification type {args.type!r}: use one of {', '.join(NOTIFICATION_TYPES)}")


async def notification(bus: Bus, args: argparse.Namespace) -> int:
    check(args)
    config = await _config(bus, args.agent)
    post_id, dm_id = await _thread(bus, args)
    note = Notification(
        id=args.id or f"ntf-{uuid.uuid4().hex[:12]}", type=args.type, post_id=post_id, comment_id=args.comment,
        dm_id=dm_id, from_=Author(id=args.sender, name=args.sender, type="human"), content=args.content,
        created_at=datetime.now(UTC).isoformat())
    follow = Follow(args.agent, note.id)
    subs = [await bus.nc.subscribe(subject, cb=follow.on_msg) for subject in (
        subjects.activation("*", args.agent), subjects.decision(args.agent), subjects.run_events(args.agent))]
    try:
        ack = await bus.publish(subjects.notification(args.agent), _received(args.agent, note), msg_id=f"ntf:{note.id}")
        where = f"post {post_id}" if post_id else f"DM {dm_id}"
        print(f"notification {note.id} ({args.type} on {where}) for {args.agent} published (seq {ack.seq}"
              f"{', duplicate' if ack.duplicate else ''})")
        if not config.behavior.answers(args.type):
            print(f"{args.agent} does not answer {args.type} notifications (its behavior): no activation follows")
            return 0
        return await _follow(follow, args)
    finally:
        for sub in subs:
            await sub.unsubscribe()


def _received(agent: str, note: Notification) -> NotificationReceived:
    return NotificationReceived(agent=agent, notification=note, received_at=datetime.now(UTC).isoformat())


async def _follow(follow: Follow, args: argparse.Namespace) -> int:
    try:
        activation_id = await asyncio.wait_for(asyncio.shield(follow.activation), args.timeout)
    except TimeoutError:
        why = f"; refused: {', '.join(sorted(set(follow.refusals)))}" if follow.refusals else \
            " (is the scheduler running? `botburrow tail` follows what happens)"
        print(f"no activation within {args.timeout:g} s{why}", file=sys.stderr)
        return 1 if args.wait else 0
    print(f"activation {activation_id}   (botburrow show {activation_id})", flush=True)
    if not args.wait:
        return 0
    try:
        ended = await asyncio.wait_for(asyncio.shield(follow.ended), args.timeout)
    except TimeoutError:
        print(f"activation {activation_id} did not end within {args.timeout:g} s "
              f"(botburrow show {activation_id})", file=sys.stderr)
        return 1
    print(_reply(follow, ended))
    return 0 if ended.metrics.outcome != "failed" else 1

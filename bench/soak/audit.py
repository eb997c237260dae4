"""The soak's audit: every notification accounted for, nothing twice, nothing stuck, no secret leaked.

It reads the whole record (every stream from its start, the Hub emulator's state, the stage logs,
the scripted LLM's recorded requests) and sorts each notification the soak sent into exactly one
disposition. A disposition that starts with `BREACH` is a broken promise; so is every entry of
`Audit.breaches`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.soak.faults import Malformed
from bench.soak.world import BREAKS_LATER, BROKEN, GRANT_BREACH_TEXT, LIMITED, READONLY, Sent
from botburrow.cli.read import read_all
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.hub_emulator.state import DirectMessage
from botburrow.runtime.bus import Bus
from schemas.codec import DecodeError, decode_subject
from schemas.events import ActivationMetrics as Metrics
from schemas.events import (
    ActivationRequested,
    DeadLetter,
    NotificationReceived,
    Posted,
    RunCompleted,
    RunEventBase,
    RunFailed,
    ToolCalled,
)
from schemas.hub import Comment, Post
from streams.topology import ACTIVATIONS, DLQ, NOTIFICATIONS, RUNS

# Events are filed from these streams only; every stream (KV buckets included) is searched for secrets.
RECORD_STREAMS = (NOTIFICATIONS.name, ACTIVATIONS.name, RUNS.name, DLQ.name)
NO_ACTIVATION_TYPES = {"follow", "thread_update"}
FLAG_OF_TYPE = {"mention": "respond_to_mentions", "dm": "respond_to_dms", "reply": "respond_to_replies"}


@dataclass(frozen=True)
class HubView:
    """The Hub's content at one moment. Taken before the streams are read, so everything it shows was
    caused by events the streams already hold (a Posted event follows its Hub call, a consumption
    report follows its RUNS event): the audit cannot race work that is still going on."""

    comments: list[Comment]
    posts: list[Post]
    dms: list[DirectMessage]
    consumption: list[Metrics]

    @classmethod
    def of(cls, hub: HubEmulator) -> HubView:
        return cls(comments=[c for cs in list(hub.world.comments.values()) for c in list(cs)], posts=hub.posts,
                   dms=list(hub.dms), consumption=list(hub.consumption))


@dataclass
class Record:
    """What the streams say happened."""

    ingested: set[str] = field(default_factory=set)
    requests: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # ntf -> activation ids
    request_agent: dict[str, str] = field(default_factory=dict)
    ends: dict[str, list[RunCompleted | RunFailed]] = field(default_factory=lambda: defaultdict(list))
    posted: dict[str, list[Posted]] = field(default_factory=lambda: defaultdict(list))
    tools: list[ToolCalled] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    raw: list[tuple[str, bytes]] = field(default_factory=list)  # (stream: subject, payload)
    timeline: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stream_sizes: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # stream -> why (read only for the secrets check)


async def backlog(bus: Bus) -> list[tuple[str, str, int, int]]:
    """(stream, durable, num_pending, num_ack_pending) of every durable consumer the stages made, plus
    (stream, "source <name>", lag, 0) for every stream source: a stalled source hides work from consumers."""
    out: list[tuple[str, str, int, int]] = []
    for stream in await bus.js.streams_info():
        name = stream.config.name
        if name is None or name.startswith("KV_"):  # a stream always has a name; nats-py types it optional
            continue
        for source in stream.sources or []:
            out.append((name, f"source {source.name}", source.lag or 0, 0))
        for info in await bus.js.consumers_info(name):
            if info.config.durable_name:
                out.append((name, info.name, info.num_pending or 0, info.num_ack_pending or 0))
    return out


async def read_record(bus: Bus) -> Record:
    record = Record()
    for stream in await bus.js.streams_info():
        name = stream.config.name
        assert name is not None  # a stream always has a name; nats-py types it optional
        record.stream_sizes[name] = stream.state.messages
        try:
            msgs = await _read_stream(bus, name, attempts=1 if name not in RECORD_STREAMS else 10)
        except RuntimeError as exc:
            if name in RECORD_STREAMS:
                raise
            # Read for the secrets check only: said in the results, not a crash of the whole audit.
            record.unreadable[name] = str(exc)[:300]
            continue
        for msg in msgs:
            record.raw.append((f"{name}: {msg.subject}", msg.data))
            if name not in RECORD_STREAMS:
                continue
            try:
                event = decode_subject(msg.subject, msg.data)
            except DecodeError:
                continue  # the soak's own malformed messages, among others
            _file(record, event)
    return record


async def _read_stream(bus: Bus, name: str, attempts: int = 10) -> list[Any]:
    """The whole stream; on a cluster just back from its faults, creating the reader can fail for a while
    (seen: "maximum consumers limit reached" right after a rolling restart), so it is tried again."""
    for attempt in range(1, attempts + 1):
        try:
            return await read_all(bus, name, ">")
        except Exception as exc:
            if attempt == attempts:
                raise RuntimeError(f"stream {name} unreadable: {exc!r}") from exc
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


def _file(record: Record, event: Any) -> None:
    if isinstance(event, RunEventBase):
        record.timeline[event.activation_id].append(f"{event.at[11:23]} {type(event).__name__}#{event.attempt}")
    if isinstance(event, NotificationReceived):
        record.ingested.add(event.notification.id)
    elif isinstance(event, ActivationRequested):
        record.request_agent[event.activation_id] = event.agent
        for note in event.notifications:
            record.requests[note.id].append(event.activation_id)
    elif isinstance(event, RunCompleted | RunFailed):
        record.ends[event.activation_id].append(event)
    elif isinstance(event, Posted) and event.notification_id:
        record.posted[event.notification_id].append(event)
    elif isinstance(event, ToolCalled):
        record.tools.append(event)
    elif isinstance(event, DeadLetter):
        record.dead.append(event)


@dataclass
class Audit:
    dispositions: dict[str, str] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Counter[str]:
        return Counter(self.dispositions.values())

    def breach(self, text: str) -> None:
        self.breaches.append(text)


def answers_on_hub(hub: HubView, sent: dict[str, Sent]) -> dict[str, list[tuple[str, str]]]:
    """Notification id -> the (Hub id, created_at) of every answer its agent posted to its target."""
    by_target: dict[tuple[str, str, str | None], str] = {}
    for note in sent.values():
        target = ("dm", note.dm_id) if note.type == "dm" else ("comment", note.comment_id)
        by_target[(note.agent, *target)] = note.id
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for c in hub.comments:
        nid = by_target.get((c.author_name, "comment", c.parent_id)) if c.parent_id else None
        if nid:
            found[nid].append((c.id, c.created_at))
    for dm in hub.dms:
        nid = by_target.get((dm.sender, "dm", dm.conversation_id))
        if nid:
            found[nid].append((dm.id, dm.created_at))
    return found


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def dead_letter_index(record: Record) -> tuple[dict[str, str], dict[tuple[str, bytes], DeadLetter]]:
    """Activation ids / notification ids named by a dead letter -> its reason; and (stage, payload bytes)."""
    named: dict[str, str] = {}
    by_payload: dict[tuple[str, bytes], DeadLetter] = {}
    for letter in record.dead:
        raw = base64.b64decode(letter.payload) if letter.payload_encoding == "base64" else letter.payload.encode()
        by_payload[(letter.stage, raw)] = letter
        if letter.payload_encoding != "utf-8":
            continue
        try:
            body = json.loads(letter.payload)
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        for key in (body.get("activation_id"), (body.get("notification") or {}).get("id")
                    if isinstance(body.get("notification"), dict) else None):
            if isinstance(key, str):
                named[key] = f"{letter.stage}: {letter.reason}"
    return named, by_payload


def disposition(note: Sent, answers: list, record: Record, dead: dict[str, str], flags: dict[str, dict]) -> str:
    if len(answers) > 1:
        return "BREACH posted twice"
    if answers:
        return "answered" if record.posted.get(note.id) else "BREACH answered without a posted event in RUNS"
    if note.id in dead:
        return f"dlq ({dead[note.id].split(':')[0]})"
    if note.id not in record.ingested:
        return "skipped: broken config" if note.agent in (BROKEN, BREAKS_LATER) else "BREACH never ingested"
    if note.type in NO_ACTIVATION_TYPES:
        return f"skipped: {note.type} is not answered"
    flag = FLAG_OF_TYPE.get(note.type, "respond_to_replies")
    if not flags.get(note.agent, {}).get(flag, True):
        return f"skipped: {flag} off"
    activations = record.requests.get(note.id, [])
    if not activations:
        return "BREACH never scheduled"
    last = activations[-1]
    if last in dead:
        return f"dlq ({dead[last].split(':')[0]})"
    ends = record.ends.get(last)
    if not ends:
        return "BREACH activation never ended"
    metrics = ends[-1].metrics
    if metrics.outcome == "failed":
        return f"failed: {metrics.error or 'no reason'}"
    if metrics.outcome in ("skipped", "limited"):
        return f"skipped: {metrics.outcome}"
    if metrics.outcome == "posted" and note.agent == LIMITED:
        return "skipped: limited (activation partly posted)"
    return f"BREACH activation ended {metrics.outcome} without answering it"


def account(sent: dict[str, Sent], hub: HubView, record: Record, flags: dict[str, dict]) -> Audit:
    audit = Audit()
    answers = answers_on_hub(hub, sent)
    dead, _ = dead_letter_index(record)
    for note in sent.values():
        audit.dispositions[note.id] = disposition(note, answers.get(note.id, []), record, dead, flags)
        if len(answers.get(note.id, [])) == 1:
            audit.latencies_s.append(max(0.0, _epoch_s(answers[note.id][0][1]) - note.sent_at_s))
    for nid, what in audit.dispositions.items():
        # Every fault the soak injects is transient, so an activation that fails lost someone's answer.
        if what.startswith(("BREACH", "failed")):
            audit.breach(f"notification {nid} ({sent[nid].agent}, {sent[nid].type}): {what}")
    check_consumption(audit, hub, record)
    audit.info["stream_messages"] = {k: v for k, v in record.stream_sizes.items() if not k.startswith("KV_")}
    failed = [a for a, ends in record.ends.items() if ends[-1].metrics.outcome == "failed"]
    audit.info["failed_samples"] = {a: [record.ends[a][-1].metrics.error, *record.timeline[a]] for a in failed[:5]}
    return audit


def check_consumption(audit: Audit, hub: HubView, record: Record) -> None:
    reported = Counter(m.activation_id for m in hub.consumption)
    ended = set(record.ends)
    missing = sorted(a for a in ended if not reported[a])
    audit.info["activations_ended"] = len(ended)
    audit.info["activations_ended_more_than_once"] = sum(1 for e in record.ends.values() if len(e) > 1)
    audit.info["consumption_events"] = sum(reported.values())
    for activation_id in missing:
        audit.breach(f"activation {activation_id} ended but no consumption event reached the Hub")
    for activation_id in sorted(set(reported) - ended):
        audit.breach(f"consumption event for {activation_id}, which never ended in RUNS")


def check_malformed(audit: Audit, record: Record, malformed: list[Malformed]) -> None:
    _, by_payload = dead_letter_index(record)
    for bad in malformed:
        for stage in bad.expect_dlq:
            letter = by_payload.get((stage, bad.payload))
            if letter is None:
                audit.breach(f"malformed message {bad.stream}#{bad.seq} on {bad.subject}: no dead letter from {stage}")
            elif not letter.reason:
                audit.breach(f"dead letter of {bad.stream}#{bad.seq} by {stage} has no reason")
    audit.info["dead_letters"] = dict(Counter(letter.stage for letter in record.dead))


def check_grants(audit: Audit, hub: HubView, record: Record) -> None:
    """The read-only agent (hub:read only) is never asked for an answer (the answer is a write, issue 14):
    each of its activations ends `skipped` with "hub:write is missing", its model is never called (so the
    scripted hub__create_comment is never asked for), and nothing of it reaches the Hub."""
    ends = [e for events in record.ends.values() for e in events if e.agent == READONLY]
    if not ends:
        audit.breach("grants probe: no activation of the read-only agent ended")
    for end in ends:
        if end.metrics.outcome != "skipped" or "hub:write is missing" not in (end.metrics.error or ""):
            audit.breach(f"grants probe: {READONLY} ended {end.metrics.outcome} ({end.metrics.error!r}), "
                         "not skipped for hub:write")
    if calls := [t for t in record.tools if t.agent == READONLY]:
        audit.breach(f"grants probe: the read-only agent's model was asked for an answer ({len(calls)} tool calls)")
    posted = [c for c in hub.comments if GRANT_BREACH_TEXT in c.content]
    if posted:
        audit.breach(f"grants probe: {len(posted)} comment(s) by an agent without hub:write reached the Hub")
    audit.info["grants_probe_ends"] = len(ends)


def check_secrets(audit: Audit, secrets: dict[str, str], hub: HubView, record: Record,
                  logs: list[Path], model_bodies: list[Any]) -> None:
    """No secret value in Hub content, in any stream message, in any stage log, in what the model was sent."""
    comments = hub.comments
    places: dict[str, list[tuple[str, str]]] = {
        "hub": [(f"comment {c.id} by {c.author_name}", c.content) for c in comments]
               + [(f"post {p.id}", p.title + "\n" + p.content) for p in hub.posts]
               + [(f"dm {d.id} by {d.sender}", d.content) for d in hub.dms],
        "events": [(where, raw.decode("utf-8", "replace")) for where, raw in record.raw],
        "model requests": [("request", json.dumps(body)) for body in model_bodies],
    }
    for path in logs:
        places[f"log {path.name}"] = [(path.name, path.read_text(errors="replace"))]
    pattern = re.compile("|".join(re.escape(v) for v in secrets.values() if len(v) >= 6))
    names = {v: n for n, v in secrets.items()}
    for place, texts in places.items():
        hits = [(names[m.group(0)], where) for where, text in texts for m in pattern.finditer(text)]
        if hits:
            found = sorted({name for name, _ in hits})
            wheres = sorted({where for _, where in hits})
            audit.breach(f"secret(s) {', '.join(found)} found in {place}: {'; '.join(wheres[:4])}")
    audit.info["secret_checks"] = {"secrets": len(secrets), "places": len(places)}

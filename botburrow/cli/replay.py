"""`botburrow replay <activation id> --rerun | --offline [--with-definitions DIR]` (and the reader `show` uses).

Everything comes from JetStream: the run events from RUNS, the original definition from the `configs`
bucket. `--rerun` publishes the recorded request again under a new activation id with `Replay-Of`;
`--offline` re-executes it in this process against the recorded answers (services/runner/offline.py)
and reports whether it followed the recording. Exit codes: 0 done / followed, 1 bad input (unknown id,
truncated log, other schema version), 3 the offline re-run diverged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from botburrow.settings import CliSettings, load
from schemas.codec import DecodeError, decode_subject
from schemas.events import ActivationRequested
from streams import subjects
from streams.topology import RUNS

SCHEMA_VERSION = 1  # the run event version this code reads (schemas/EVOLUTION.md)
EXIT_BAD_INPUT, EXIT_DIVERGED = 1, 3


class _Version(msgspec.Struct):
    v: int = 1


class Progress:
    """Progress lines on stderr, at most one every `every_s` (the last one always)."""

    def __init__(self, every_s: float = 0.5, enabled: bool = True) -> None:
        self.every_s, self.enabled, self._last_s = every_s, enabled, 0.0

    def __call__(self, text: str, *, force: bool = False) -> None:
        now_s = time.monotonic()
        if self.enabled and (force or now_s - self._last_s >= self.every_s):
            self._last_s = now_s
            print(f"… {text}", file=sys.stderr, flush=True)


class Events(NamedTuple):
    events: list[Any]
    problems: list[str]  # events of another schema version or shape: reported, never raised
    deliveries: list[str]  # per event, which delivery of the request wrote it (offline.delivery_key)


def decode_events(msgs: list[Any]) -> Events:
    """Decode run events; those of another schema version or shape become problems, never exceptions."""
    from services.runner.recorded import delivery_key

    out = Events([], [], [])
    for msg in msgs:
        seq, name = msg.metadata.sequence.stream, msg.subject.rsplit(".", 1)[-1]
        try:
            version = msgspec.json.decode(msg.data, type=_Version).v
        except (msgspec.DecodeError, msgspec.ValidationError):
            version = None
        if version is not None and version != SCHEMA_VERSION:
            out.problems.append(f"event {name} (RUNS seq {seq}) was written with schema version {version}; "
                                f"this botburrow reads version {SCHEMA_VERSION}")
            continue
        try:
            event = decode_subject(msg.subject, msg.data)
        except DecodeError as exc:
            out.problems.append(f"event {name} (RUNS seq {seq}) does not fit the current schema "
                                f"(at {exc.path or '$'}): written by an older or newer version? {exc.reason[:120]}")
            continue
        out.events.append(event)
        out.deliveries.append(delivery_key((msg.headers or {}).get("Nats-Msg-Id"), event.attempt))
    return out


async def read_events(bus: Bus, activation_id: str, progress: Progress | None = None) -> Events:
    started_s = time.monotonic()
    if progress:
        progress(f"reading RUNS for {activation_id}", force=True)
    msgs = await read_all(bus, RUNS.name, subjects.run_events_of(activation_id))
    found = decode_events(msgs)
    if progress:
        progress(f"read {len(msgs)} events in {(time.monotonic() - started_s) * 1000:.0f} ms", force=True)
    return found


def _fail(message: str) -> int:
    print(f"botburrow replay: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


async def run(bus: Bus, args: argparse.Namespace) -> int:
    if args.with_definitions and not args.offline:
        return _fail("--with-definitions works with --offline only")
    progress = Progress(enabled=not getattr(args, "quiet", False))
    events, problems, deliveries = await read_events(bus, args.activation_id, progress)
    if not events and not problems:
        return _fail(f"no events for activation {args.activation_id!r} (unknown id, or aged out of RUNS)")
    if problems:
        return _fail("the recording cannot be replayed as it is (`botburrow show` shows what can be read):\n  "
                     + "\n  ".join(problems))
    from services.runner.recorded import RecordingError, recording_from, request_of

    try:
        if args.rerun:  # the request is all a live re-run needs
            return await rerun(bus, request_of(events, deliveries), json_out=args.json)
        recording = recording_from(events, deliveries)
    except RecordingError as exc:
        return _fail(str(exc))
    return await offline(bus, recording, args, progress)


async def rerun(bus: Bus, original: ActivationRequested, *, json_out: bool = False) -> int:
    new_id = f"{original.activation_id}-replay-{uuid.uuid4().hex[:8]}"
    request = msgspec.structs.replace(original, activation_id=new_id,
                                      requested_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    subject = subjects.activation(request.priority, request.agent)
    ack = await bus.publish(subject, request, msg_id=f"act:{new_id}",
                            headers={"Replay-Of": original.activation_id})
    if json_out:
        print(json.dumps({"activation_id": new_id, "replay_of": original.activation_id, "subject": subject,
                          "seq": ack.seq}))
    else:
        print(f"re-run of {original.activation_id} published as {new_id} on {subject} (seq {ack.seq}); "
              f"follow it with: botburrow show {new_id}")
    return 0


async def _baseline(bus: Bus, agent: str) -> tuple[Any, dict[str, Any], str | None]:
    """The agent's definition and the skills as the `configs` bucket holds them now."""
    from botburrow.definitions import AgentDirectory

    try:
        directory = await asyncio.wait_for(AgentDirectory.open(bus), 10)
    except Exception as exc:  # no bucket, no permission, timeout: offline goes on with the recording alone
        return None, {}, f"cannot read the configs bucket ({type(exc).__name__}): using the recording's tools"
    try:
        found = directory.get(agent)
        note = None if found else f"agent {agent!r} is not in the configs bucket: using the recording's tools"
        return found, directory.skills(), note
    finally:
        await directory.close()


async def _shadow(directory: str, agent: str) -> tuple[Any, dict[str, Any], list[str]]:
    from botburrow.definitions import LocalSource, SourceError, load_all

    try:
        result = await load_all(LocalSource(Path(directory)))
    except SourceError as exc:
        raise SystemExit(f"botburrow replay: --with-definitions: {exc}") from None
    warnings = [f"{e}" for e in result.errors]
    definition = result.agents.get(agent)
    if definition is None:
        found = ", ".join(sorted(result.agents)) or "none"
        problems = ("; problems: " + "; ".join(warnings)) if warnings else ""
        raise SystemExit(f"botburrow replay: {directory} has no valid agent {agent!r} (agents found: {found})"
                         f"{problems}")
    return definition, result.skills, warnings


async def offline(bus: Bus, recording: Any, args: argparse.Namespace, progress: Progress) -> int:
    from services.runner.offline import rerun_offline

    agent = recording.request.agent
    baseline, skills, note = await _baseline(bus, agent)
    definition = baseline
    warnings: list[str] = []
    if args.with_definitions:
        definition, shadow_skills, warnings = await _shadow(args.with_definitions, agent)
        skills = {**skills, **shadow_skills}
    max_tokens = load(CliSettings).activation_max_tokens
    progress(f"re-running {len(recording.turns)} model turn(s) offline", force=True)
    report = await rerun_offline(recording, definition, skills, baseline=baseline,
                                 shadow=bool(args.with_definitions), max_tokens=max_tokens, progress=progress)
    report.notes[:0] = [n for n in [note, *warnings] if n]
    if not args.with_definitions:
        report.notes.append("the baseline is the definition in the configs bucket now; if it changed since the "
                            "recording, differences may come from that")
    print(json.dumps(asdict(report), indent=2) if args.json else render_report(report))
    return 0 if report.followed else EXIT_DIVERGED


def render_report(report: Any) -> str:
    lines = [f"offline re-run of {report.activation_id} ({report.agent}, attempt {report.attempt})",
             f"recorded outcome: {report.recorded_outcome}; re-run outcome: {report.rerun_outcome}"]
    if report.definition_changes:
        lines.append("what the new definition changes:")
        lines += [f"  {c}" for c in report.definition_changes]
    lines.append("steps:")
    for step in report.steps:
        mark = "=" if step.same else "≠"
        lines.append(f"  {mark} {step.label:<16} recorded: {step.recorded}")
        if not step.same:
            lines.append(f"    {'':<16} re-run:   {step.rerun}")
    if report.captured:
        lines.append("Hub writes captured (not sent):")
        lines += [f"  {w.via}: {w.target}: {' '.join(w.content.split())[:100]!r}" for w in report.captured]
    if report.followed:
        lines.append("RESULT: the re-run followed the recording")
    else:
        first = report.divergences[0]
        lines.append(f"RESULT: diverged at {first.step} ({first.kind}); {len(report.divergences)} difference(s):")
        lines += [f"  - {d.describe()}" for d in report.divergences]
    lines.append("notes:")
    lines += [f"  - {n}" for n in report.notes]
    return "\n".join(lines)

"""Encode payloads, and decode a message once, by its subject, with the bad field's path on failure.

`decode_subject` is the one gate every consumer's input passes (stage consumers, the runner's fetch, the
CLI): whatever the bytes, it returns a payload that fits its subject or raises `DecodeError`, never
anything else. It bounds the size (per subject) and the nesting depth before parsing, and checks that
the names a payload carries are the ones its subject carries: NATS permissions guard subjects, so a
payload must not act for an agent its subject does not name.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas.events import (
    ActivationRequested,
    ConfigChanged,
    DeadLetter,
    NotificationReceived,
    RunEvent,
    SchedulingRefused,
)
from streams.subjects import token

# One schema per subject (contract §5). Patterns use NATS wildcards; order does not matter.
SUBJECT_SCHEMAS: dict[str, Any] = {
    "agents.ingest.notification.*": NotificationReceived,
    "agents.sched.activation.*.*": ActivationRequested,
    "agents.run.*.*.*": RunEvent,
    "agents.config.agent.*": ConfigChanged,
    "agents.config.skill.*": ConfigChanged,
    "agents.dlq.*": DeadLetter,
    "agents.sched.decision.*": SchedulingRefused,
}

_encoder = msgspec.json.Encoder()
_PATH_RE = re.compile(r" - at `([^`]*)`$")


# Bounds checked before parsing. A notification is at most 32 KiB so that an activation request of
# MAX_NOTIFICATIONS_PER_ACTIVATION (20) of them, and the `started` event that repeats it, stay well under
# NATS's 1 MiB max payload; a request is bounded for the same reason (`started` = request + ~1 KiB).
MAX_PAYLOAD_BYTES = 1 << 20
SUBJECT_MAX_BYTES: dict[str, int] = {
    "agents.ingest.notification.*": 32 << 10,
    "agents.sched.activation.*.*": 768 << 10,
}
# Deeper JSON is refused unparsed: msgspec recurses per level (RecursionError at ~1,000), and so do
# whatever encodes, logs or redacts the result later. Our own payloads nest fewer than 10 levels.
MAX_NESTING_DEPTH = 64
_OPENERS = (ord("["), ord("{"))
_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class DecodeError(ValueError):
    """A payload that is not valid JSON or does not fit its subject's schema. `kind` names the rule it
    broke, for dead-letter counters: `invalid`, `oversized`, `too_deep` or `mismatch`."""

    def __init__(self, reason: str, path: str | None = None, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path
        self.kind = kind


def encode(payload: msgspec.Struct) -> bytes:
    return _encoder.encode(payload)


def _pattern_regex(pattern: str) -> str:
    tokens = [r"[^.]*" if t == "*" else r".*" if t == ">" else re.escape(t) for t in pattern.split(".")]
    return r"\.".join(tokens)


# Every pattern as one alternation, group i for pattern i: a subject is classified in one regex pass
# (splitting it and looping over the patterns was a tenth of the scheduler's per-message time).
_KINDS = list(SUBJECT_SCHEMAS.values())
_DECODERS = [msgspec.json.Decoder(kind) for kind in _KINDS]
_MAX_BYTES = [SUBJECT_MAX_BYTES.get(pattern, MAX_PAYLOAD_BYTES) for pattern in SUBJECT_SCHEMAS]
_SUBJECT_RE = re.compile("|".join(f"(?P<p{i}>{_pattern_regex(p)})" for i, p in enumerate(SUBJECT_SCHEMAS)))


def _schema_index(subject: str) -> int:
    match = _SUBJECT_RE.fullmatch(subject)
    if match is None or match.lastgroup is None:
        raise DecodeError(f"no schema for subject {subject!r}")
    return int(match.lastgroup[1:])


def schema_for_subject(subject: str) -> Any:
    return _KINDS[_schema_index(subject)]


def decode_subject(subject: str, data: bytes) -> Any:
    """Decode `data` as the payload of `subject`; raise DecodeError naming the bad field's path.

    Nothing else escapes, whatever `data` holds: a consumer dead-letters a DecodeError and goes on."""
    index = _schema_index(subject)
    _check_bounds(data, _MAX_BYTES[index])
    try:
        payload = _DECODERS[index].decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        raise DecodeError(message, match.group(1) if match else "$") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec reports invalid UTF-8 inside a string this way
        raise DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None
    except RecursionError:  # the depth bound makes this unreachable; kept so nothing else escapes
        raise DecodeError("JSON nested too deep", kind="too_deep") from None
    _check_names(subject, payload)
    return payload


def _check_bounds(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise DecodeError(f"payload of {len(data)} bytes exceeds this subject's {max_bytes}", kind="oversized")
    # Cheap test first (two C-speed counts): only a payload with that many brackets can nest that deep.
    if data.count(_OPENERS[0]) + data.count(_OPENERS[1]) <= MAX_NESTING_DEPTH:
        return
    depth = nesting_depth(data, MAX_NESTING_DEPTH)
    if depth > MAX_NESTING_DEPTH:
        raise DecodeError(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels", kind="too_deep")


def nesting_depth(data: bytes, limit: int) -> int:
    """The bracket nesting depth of JSON `data` (strings ignored), counted up to `limit + 1`.

    Each pass deletes the innermost `[]`/`{}` pairs, in C: at most `limit + 1` passes over the brackets."""
    brackets = _STRING_RE.sub(b"", data).translate(None, _BRACKETS)
    if re.search(rb"[\[{]{%d}" % (limit + 1), brackets):
        return limit + 1  # the usual attack, `[[[[...`, found in one scan
    for depth in range(limit + 1):
        if not brackets:
            return depth
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return depth  # unbalanced: not deep, just malformed (the parser says so)
        brackets = shorter
    return limit + 1 if brackets else limit


# Which subject token each payload's names must match (contract §5 subjects), by schema.
_NAME_TOKENS: dict[Any, tuple[tuple[str, int], ...]] = {
    NotificationReceived: (("agent", 3),),
    ActivationRequested: (("priority", 3), ("agent", 4)),
    ConfigChanged: (("name", 3),),
    DeadLetter: (("stage", 2),),
    SchedulingRefused: (("agent", 3),),
}
_RUN_TOKENS = (("agent", 2), ("activation_id", 3))


def _check_names(subject: str, payload: Any) -> None:
    """The payload's agent (and the other names its subject carries) must be its subject's."""
    fields = _NAME_TOKENS.get(type(payload), _RUN_TOKENS)
    tokens = subject.split(".")
    for field, position in fields:
        value = getattr(payload, field)
        if token(value) != tokens[position]:
            raise DecodeError(f"{field} {value[:100]!r} differs from the subject's {tokens[position]!r}",
                              f"$.{field}", kind="mismatch")
    if fields is _RUN_TOKENS:
        tag = type(payload).__struct_config__.tag
        if tag != tokens[4]:
            raise DecodeError(f"event {tag!r} differs from the subject's {tokens[4]!r}", "$.event", kind="mismatch")

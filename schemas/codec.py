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

from streams.subjects import token
from streams.topology import SUBJECTS, SubjectSpec

# One schema per subject pattern (NATS wildcards), from the topology's subject table (contract §5).
SUBJECT_SCHEMAS: dict[str, Any] = {spec.pattern: spec.schema for spec in SUBJECTS}

_encoder = msgspec.json.Encoder()
_PATH_RE = re.compile(r" - at `([^`]*)`$")


# Bounds checked before parsing: each subject's size (`SubjectSpec.max_bytes`) and the nesting depth.
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
_SPECS: tuple[SubjectSpec, ...] = SUBJECTS
_DECODERS = [msgspec.json.Decoder(spec.schema) for spec in _SPECS]
_SUBJECT_RE = re.compile("|".join(f"(?P<p{i}>{_pattern_regex(spec.pattern)})" for i, spec in enumerate(_SPECS)))


def _schema_index(subject: str) -> int:
    match = _SUBJECT_RE.fullmatch(subject)
    if match is None or match.lastgroup is None:
        raise DecodeError(f"no schema for subject {subject!r}")
    return int(match.lastgroup[1:])


def schema_for_subject(subject: str) -> Any:
    return _SPECS[_schema_index(subject)].schema


def decode_subject(subject: str, data: bytes) -> Any:
    """Decode `data` as the payload of `subject`; raise DecodeError naming the bad field's path.

    Nothing else escapes, whatever `data` holds: a consumer dead-letters a DecodeError and goes on."""
    index = _schema_index(subject)
    spec = _SPECS[index]
    _check_bounds(data, spec.max_bytes)
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
    _check_names(subject, payload, spec)
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


def _check_names(subject: str, payload: Any, spec: SubjectSpec) -> None:
    """The payload's agent (and the other names its subject carries) must be its subject's."""
    tokens = subject.split(".")
    for field, position in spec.names:
        value = getattr(payload, field)
        if token(value) != tokens[position]:
            raise DecodeError(f"{field} {value[:100]!r} differs from the subject's {tokens[position]!r}",
                              f"$.{field}", kind="mismatch")
    if spec.tag_token is not None:
        tag = type(payload).__struct_config__.tag
        if tag != tokens[spec.tag_token]:
            raise DecodeError(f"event {tag!r} differs from the subject's {tokens[spec.tag_token]!r}", "$.event",
                              kind="mismatch")

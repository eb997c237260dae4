"""Encode payloads, and decode a message once, by its subject, with the bad field's path on failure."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from botburrow.schemas.events import (
    ActivationRequested,
    ConfigChanged,
    DeadLetter,
    NotificationReceived,
    RunEvent,
    SchedulingRefused,
)

# One schema per subject (SPEC §5). Patterns use NATS wildcards; order does not matter.
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


class DecodeError(ValueError):
    """A payload that is not valid JSON or does not fit its subject's schema."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def encode(payload: msgspec.Struct) -> bytes:
    return _encoder.encode(payload)


def _pattern_regex(pattern: str) -> str:
    tokens = [r"[^.]*" if t == "*" else r".*" if t == ">" else re.escape(t) for t in pattern.split(".")]
    return r"\.".join(tokens)


# Every pattern as one alternation, group i for pattern i: a subject is classified in one regex pass
# (splitting it and looping over the patterns was a tenth of the scheduler's per-message time).
_KINDS = list(SUBJECT_SCHEMAS.values())
_DECODERS = [msgspec.json.Decoder(kind) for kind in _KINDS]
_SUBJECT_RE = re.compile("|".join(f"(?P<p{i}>{_pattern_regex(p)})" for i, p in enumerate(SUBJECT_SCHEMAS)))


def _schema_index(subject: str) -> int:
    match = _SUBJECT_RE.fullmatch(subject)
    if match is None or match.lastgroup is None:
        raise DecodeError(f"no schema for subject {subject!r}")
    return int(match.lastgroup[1:])


def schema_for_subject(subject: str) -> Any:
    return _KINDS[_schema_index(subject)]


def decode_subject(subject: str, data: bytes) -> Any:
    """Decode `data` as the payload of `subject`; raise DecodeError naming the bad field's path."""
    decoder = _DECODERS[_schema_index(subject)]
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        raise DecodeError(message, match.group(1) if match else "$") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None

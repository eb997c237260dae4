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
_decoders = {pattern: msgspec.json.Decoder(kind) for pattern, kind in SUBJECT_SCHEMAS.items()}
_PATH_RE = re.compile(r" - at `([^`]*)`$")


class DecodeError(ValueError):
    """A payload that is not valid JSON or does not fit its subject's schema."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def encode(payload: msgspec.Struct) -> bytes:
    return _encoder.encode(payload)


def subject_matches(pattern: str, subject: str) -> bool:
    pattern_tokens, subject_tokens = pattern.split("."), subject.split(".")
    if pattern_tokens and pattern_tokens[-1] == ">":
        head = pattern_tokens[:-1]
        return len(subject_tokens) > len(head) and all(
            p in ("*", s) for p, s in zip(head, subject_tokens, strict=False)
        )
    return len(pattern_tokens) == len(subject_tokens) and all(
        p in ("*", s) for p, s in zip(pattern_tokens, subject_tokens, strict=True)
    )


def schema_for_subject(subject: str) -> Any:
    for pattern, kind in SUBJECT_SCHEMAS.items():
        if subject_matches(pattern, subject):
            return kind
    raise DecodeError(f"no schema for subject {subject!r}")


def decode_subject(subject: str, data: bytes) -> Any:
    """Decode `data` as the payload of `subject`; raise DecodeError naming the bad field's path."""
    for pattern, decoder in _decoders.items():
        if subject_matches(pattern, subject):
            try:
                return decoder.decode(data)
            except msgspec.ValidationError as exc:
                message = str(exc)
                match = _PATH_RE.search(message)
                raise DecodeError(message, match.group(1) if match else "$") from None
            except msgspec.DecodeError as exc:
                raise DecodeError(f"malformed JSON: {exc}") from None
    raise DecodeError(f"no schema for subject {subject!r}")

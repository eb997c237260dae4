"""Keys and values of the `configs` KV bucket (layout: see the package docstring)."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.agent import AgentDefinition, SkillDefinition
from streams.topology import CONFIGS

BUCKET = CONFIGS.name
STREAM = CONFIGS.stream
# A value is one definition: its files are bounded by DEFINITION_FILE_MAX_BYTES at the source, and NATS'
# default max_payload is 1 MiB. Anything bigger was not written by configsync: refused unread.
MAX_VALUE_BYTES = 1 << 20
Kind = Literal["agent", "skill"]
Definition = AgentDefinition | SkillDefinition
_decoders: dict[Kind, msgspec.json.Decoder[AgentDefinition] | msgspec.json.Decoder[SkillDefinition]] = {
    "agent": msgspec.json.Decoder(AgentDefinition), "skill": msgspec.json.Decoder(SkillDefinition)}
_encoder = msgspec.json.Encoder()


def key(kind: Kind, name: str) -> str:
    return f"{kind}.{name}"


def split_key(bucket_key: str) -> tuple[Kind, str] | None:
    """`agent.<name>` -> ("agent", name); None for a key that is not ours."""
    kind, _, name = bucket_key.partition(".")
    if kind == "agent" and name:
        return "agent", name
    if kind == "skill" and name:
        return "skill", name
    return None


def encode(definition: Definition) -> bytes:
    return _encoder.encode(definition)


class UnreadableValue(ValueError):
    """A `configs` value this version cannot use: why, in one line (never the value itself)."""


def decode(kind: Kind, data: bytes) -> Definition:
    """Raises msgspec.DecodeError / ValidationError for a value this version cannot read."""
    return _decoders[kind].decode(data)


def read(kind: Kind, name: str, data: bytes) -> Definition:
    """The definition stored under `<kind>.<name>`, or UnreadableValue: too big, not JSON, not UTF-8,
    the wrong shape, or naming another definition than its key. Never any other exception."""
    if len(data) > MAX_VALUE_BYTES:
        raise UnreadableValue(f"value of {len(data)} bytes is over the {MAX_VALUE_BYTES}-byte limit")
    try:
        definition = decode(kind, data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnreadableValue(f"not a {kind} definition: {exc}") from None
    except (ValueError, RecursionError) as exc:  # msgspec raises UnicodeDecodeError for bad UTF-8 in a string
        raise UnreadableValue(f"not a {kind} definition: {type(exc).__name__}: {exc}"[:300]) from None
    if definition.name != name:
        raise UnreadableValue(f"value names {kind} {definition.name[:100]!r}, its key names {name!r}")
    return definition


def subject(bucket_key: str) -> str:
    """The subject a value of the bucket is stored under (what a dead letter of it names)."""
    return f"$KV.{BUCKET}.{bucket_key}"


def msg_id(kind: Kind, name: str, digest: str, *, deleted: bool = False) -> str:
    """`Nats-Msg-Id` of a CONFIG event: one per definition version, and one per deletion of it."""
    return f"cfg:{kind}:{name}:{digest}" + (":deleted" if deleted else "")



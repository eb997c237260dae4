"""Keys and values of the `configs` KV bucket (layout: see the package docstring)."""

from __future__ import annotations

from typing import Literal

import msgspec

from botburrow.schemas.agent import AgentDefinition, SkillDefinition

BUCKET = "configs"
Kind = Literal["agent", "skill"]
Definition = AgentDefinition | SkillDefinition
_decoders = {"agent": msgspec.json.Decoder(AgentDefinition), "skill": msgspec.json.Decoder(SkillDefinition)}
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


def decode(kind: Kind, data: bytes) -> Definition:
    """Raises msgspec.DecodeError / ValidationError for a value this version cannot read."""
    return _decoders[kind].decode(data)


def msg_id(kind: Kind, name: str, digest: str, *, deleted: bool = False) -> str:
    """`Nats-Msg-Id` of a CONFIG event: one per definition version, and one per deletion of it."""
    return f"cfg:{kind}:{name}:{digest}" + (":deleted" if deleted else "")

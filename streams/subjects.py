"""Subject names (contract §5), built from the patterns of `streams.topology`. Tokens are
`[A-Za-z0-9_-]`; anything else in an id is mapped to `_`."""

from __future__ import annotations

import re

from streams import topology
from streams.topology import (
    ACTIVATION,
    CONFIG_AGENT,
    CONFIG_SKILL,
    DEAD_LETTER,
    DECISION,
    NOTIFICATION,
    PRIORITIES,
    RUN_EVENT,
)

__all__ = ["PRIORITIES", "activation", "config_agent", "config_skill", "decision", "dlq", "input_subjects",
           "matches", "notification", "redrive_subject", "run_event", "run_events", "run_events_of", "token"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """A subject token for an agent name or id (deterministic; empty becomes `_`)."""
    return _UNSAFE.sub("_", value) or "_"


def notification(agent: str) -> str:
    return NOTIFICATION.fill(token(agent))


def activation(priority: str, agent: str) -> str:
    return ACTIVATION.fill(priority, token(agent))


def run_event(agent: str, activation_id: str, event: str) -> str:
    return RUN_EVENT.fill(token(agent), token(activation_id), event)


def run_events_of(activation_id: str) -> str:
    """Filter for every event of one activation (what `botburrow show` reads)."""
    return RUN_EVENT.fill("*", token(activation_id), "*")


def run_events(agent: str = "*", event: str = "*") -> str:
    """Filter for the run events of `agent` (a name, or `*` for all) that are `event` (or all)."""
    return RUN_EVENT.fill(agent if agent == "*" else token(agent), "*", event)


def config_agent(name: str) -> str:
    return CONFIG_AGENT.fill(token(name))


def config_skill(name: str) -> str:
    return CONFIG_SKILL.fill(token(name))


def decision(agent: str) -> str:
    return DECISION.fill(token(agent))


def dlq(stage: str) -> str:
    return DEAD_LETTER.fill(token(stage))


# --- what each stage reads: where `botburrow dlq redrive` may publish -----------------------------------


def _stage_of_durable(durable: str) -> str:
    from streams.permissions import consumer_stage  # late: permissions imports this module

    return consumer_stage(durable)


def input_subjects(stage: str) -> tuple[str, ...]:
    """The subjects `stage` consumes, from the topology: its consumers' filters or, for a stream built
    from others (SCHEDULER), the subjects it sources. Empty for a stage that reads no subject (ingest
    reads the Hub, configsync its source)."""
    found: list[str] = []
    for consumer in topology.CONSUMERS:
        if _stage_of_durable(consumer.durable) != stage:
            continue
        spec = topology.stream(consumer.stream)
        sourced = [transform.src for source in spec.sources for transform in source.transforms]
        found += [subject for subject in sourced or consumer.filter_subjects if subject not in found]
    return tuple(found)


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching (`*` one token, `>` the rest) of a concrete subject (no wildcards in it)."""
    want, have = pattern.split("."), subject.split(".")
    if any(not t or t in ("*", ">") or _UNSAFE_SUBJECT_TOKEN.search(t) for t in have):
        return False
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or token not in ("*", have[index]):
            return False
    return len(want) == len(have)


_UNSAFE_SUBJECT_TOKEN = re.compile(r"[\s\x00-\x1f\x7f]")
_TRANSFORM_TOKEN = re.compile(r"^\{\{\s*(partition|wildcard)\(([^)]*)\)\s*\}\}$")


def _unsourced(dest: str, src: str, subject: str) -> str | None:
    """`subject` as it was before a stream's source transform `src` -> `dest`, or None if it is not one."""
    want, have = dest.split("."), subject.split(".")
    if len(want) != len(have):
        return None
    captured: dict[int, str] = {}
    for token, value in zip(want, have, strict=True):
        function = _TRANSFORM_TOKEN.match(token)
        if function and function.group(1) == "wildcard":
            captured[int(function.group(2))] = value
        elif not function and token != value:
            return None
    stars = iter(range(1, src.count("*") + 1))
    original = ".".join(captured.get(next(stars), "") if token == "*" else token for token in src.split("."))
    return original if matches(src, original) else None


def redrive_subject(stage: str, subject: str) -> str | None:
    """Where a letter `stage` wrote about a message on `subject` may be republished: that subject when
    it is one of the stage's inputs; for a scheduler letter, which names the partitioned subject, the
    subject it was sourced from. None for anything else (`$JS.*`, `$SYS.*`, `$KV.*`, other stages' inputs)."""
    inputs = input_subjects(stage)
    if any(matches(pattern, subject) for pattern in inputs):
        return subject
    for consumer in topology.CONSUMERS:
        if _stage_of_durable(consumer.durable) != stage:
            continue
        for source in topology.stream(consumer.stream).sources:
            for transform in source.transforms:
                original = _unsourced(transform.dest, transform.src, subject)
                if original is not None:  # it matches `transform.src`, one of `inputs`
                    return original
    return None

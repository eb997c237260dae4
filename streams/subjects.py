"""Subject names (SPEC §5). Tokens are `[A-Za-z0-9_-]`; anything else in an id is mapped to `_`."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
PRIORITIES = ("high", "normal", "low")


def token(value: str) -> str:
    """A subject token for an agent name or id (deterministic; empty becomes `_`)."""
    return _UNSAFE.sub("_", value) or "_"


def notification(agent: str) -> str:
    return f"agents.ingest.notification.{token(agent)}"


def activation(priority: str, agent: str) -> str:
    return f"agents.sched.activation.{priority}.{token(agent)}"


def run_event(agent: str, activation_id: str, event: str) -> str:
    return f"agents.run.{token(agent)}.{token(activation_id)}.{event}"


def run_events_of(activation_id: str) -> str:
    """Filter for every event of one activation (what `botburrow show` reads)."""
    return f"agents.run.*.{token(activation_id)}.*"


def config_agent(name: str) -> str:
    return f"agents.config.agent.{token(name)}"


def config_skill(name: str) -> str:
    return f"agents.config.skill.{token(name)}"


def dlq(stage: str) -> str:
    return f"agents.dlq.{token(stage)}"

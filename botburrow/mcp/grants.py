"""The cluster grant policy (SPEC §3): which of the grants a config asks for an agent holds.

    default:
      allowed_grants: ["hub:*", "github:read"]   # absent or empty = every grant is allowed
      denied_grants: ["github:write"]
    agents:
      devops-agent:
        allowed_grants: ["github:*"]
        denied_grants: []

A grant is `<service>:<permission>[:<resource>]`; `*` matches one segment, and a trailing `*` also
matches any further segments (`github:*` covers `github:read:org/repo`). Allowed lists of `default`
and the agent are added together; a deny from either wins. No file = allow what configs ask.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from botburrow.schemas.agent import AgentDefinition

log = logging.getLogger(__name__)


def matches(pattern: str, grant: str) -> bool:
    want, have = pattern.split(":"), grant.split(":")
    if len(want) < len(have) and want[-1] == "*":
        have = have[: len(want)]
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def _any(patterns: Iterable[str], grant: str) -> bool:
    return any(matches(p, grant) for p in patterns)


@dataclass(frozen=True)
class Rules:
    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()


class PolicyError(ValueError):
    pass


def _rules(node: object, where: str) -> Rules:
    if node is None:
        return Rules()
    if not isinstance(node, dict) or set(node) - {"allowed_grants", "denied_grants"}:
        raise PolicyError(f"{where}: expected a mapping with allowed_grants/denied_grants")
    lists = []
    for key in ("allowed_grants", "denied_grants"):
        value = node.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"{where}.{key}: expected a list of strings")
        lists.append(tuple(value))
    return Rules(*lists)


@dataclass(frozen=True)
class GrantPolicy:
    default: Rules = Rules()
    agents: dict[str, Rules] | None = None

    @classmethod
    def parse(cls, text: str) -> GrantPolicy:
        doc = yaml.safe_load(text) or {}
        if not isinstance(doc, dict) or set(doc) - {"default", "agents"}:
            raise PolicyError("policy: expected top-level keys default and agents")
        agents = doc.get("agents") or {}
        if not isinstance(agents, dict):
            raise PolicyError("agents: expected a mapping of agent name -> rules")
        return cls(_rules(doc.get("default"), "default"),
                   {str(name): _rules(node, f"agents.{name}") for name, node in agents.items()})

    @classmethod
    def load(cls, path: str | Path) -> GrantPolicy:
        try:
            return cls.parse(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"cannot read grant policy {path}: {exc}") from None

    def filter(self, agent: str, asked: Iterable[str]) -> tuple[set[str], list[str]]:
        """(held, dropped) for the grants `agent`'s config asks for."""
        own = (self.agents or {}).get(agent, Rules())
        allowed = self.default.allowed + own.allowed
        denied = self.default.denied + own.denied
        held: set[str] = set()
        dropped: list[str] = []
        for grant in dict.fromkeys(asked):
            ok = (not allowed or _any(allowed, grant)) and not _any(denied, grant)
            (held.add(grant) if ok else dropped.append(grant))
        return held, dropped


class PolicyGrantResolver:
    """`GrantResolver` (services/runner/seams.py) over a `GrantPolicy`; dropped grants are logged."""

    def __init__(self, policy: GrantPolicy | None) -> None:
        self.policy = policy

    @classmethod
    def from_settings(cls, path: str | None) -> PolicyGrantResolver:
        """`GRANT_POLICY_FILE`: unset = no policy (allow what configs ask); unreadable = refuse to start."""
        return cls(GrantPolicy.load(path) if path else None)

    def resolve(self, definition: AgentDefinition) -> set[str]:
        asked = definition.config.capabilities.grants
        if self.policy is None:
            return set(asked)
        held, dropped = self.policy.filter(definition.name, asked)
        if dropped:
            log.warning("grants dropped by policy", extra={"agent": definition.name, "dropped": dropped})
        return held

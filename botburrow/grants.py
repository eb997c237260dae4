"""Grants (contract §3): the one parser of `<service>:<permission>[:<resource>]`, and the cluster grant policy.

Grammar (one rule, used by the policy, the MCP planner and the runner):

    grant      = service ":" permission [ ":" resource ]
    service    = "*" | lowercase identifier ([a-z0-9-]+, as the published agent-config schema says)
    permission = "*" | lowercase identifier
    resource   = "*" | [A-Za-z0-9._/@+-]+   (case-sensitive: `org/Repo` is not `org/repo`)

`*` is a whole segment, never part of one (`org/*` is malformed). A grant without a resource means
every resource, so `github:write` and `github:write:*` are the same grant, and `github:write` covers
`github:write:any-repo`. Anything else (upper case in service or permission, empty segments, four
segments, spaces) is malformed: a policy naming one is refused with the grant in the error.

The policy:

    default:
      allowed_grants: ["hub:*", "github:read"]   # absent or empty = every grant is allowed
      denied_grants: ["github:write"]
    agents:
      devops-agent:
        allowed_grants: ["github:*"]
        denied_grants: []

Allowed lists of `default` and the agent are added together. A grant a config asks for is held when an
allow pattern covers all of it, and no deny pattern touches any part of it: deny wins, so a deny of
`github:write` drops `github:write:any-repo`, and a deny of `github:write:secret` drops the broader
`github:write` too (no server can hold "write everywhere except one repo"). No file = allow what
configs ask.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from schemas.agent import AgentDefinition

log = logging.getLogger(__name__)

ANY = "*"
_NAME = re.compile(r"[a-z0-9-]+")
_RESOURCE = re.compile(r"[A-Za-z0-9._/@+-]+")


class GrantError(ValueError):
    """A malformed grant; the message names it."""


@dataclass(frozen=True)
class Grant:
    service: str
    permission: str
    resource: str | None = None  # None: every resource (the same as `*`)

    def __str__(self) -> str:
        return ":".join(s for s in (self.service, self.permission, self.resource) if s is not None)

    def covers(self, other: Grant) -> bool:
        """True when every (service, permission, resource) `other` grants, this grants too."""
        return (_seg_covers(self.service, other.service) and _seg_covers(self.permission, other.permission)
                and (self.resource is None or (other.resource is not None and _seg_covers(self.resource,
                                                                                         other.resource))))

    def overlaps(self, other: Grant) -> bool:
        """True when this and `other` grant at least one (service, permission, resource) in common."""
        return (_seg_meets(self.service, other.service) and _seg_meets(self.permission, other.permission)
                and (self.resource is None or other.resource is None or _seg_meets(self.resource, other.resource)))


def _seg_covers(pattern: str, value: str) -> bool:
    return pattern == ANY or pattern == value


def _seg_meets(a: str, b: str) -> bool:
    return ANY in (a, b) or a == b


def _segment(grant: str, what: str, value: str, pattern: re.Pattern[str], rule: str) -> str:
    if value == ANY or pattern.fullmatch(value):
        return value
    if ANY in value:
        raise GrantError(f"malformed grant {grant!r}: `*` must be a whole segment, not part of {what} {value!r}")
    raise GrantError(f"malformed grant {grant!r}: {what} {value!r} must be {rule}")


def parse(grant: object) -> Grant:
    """The grant `grant` names, or GrantError naming it."""
    if not isinstance(grant, str):
        raise GrantError(f"malformed grant {grant!r}: expected a string <service>:<permission>[:<resource>]")
    parts = grant.split(":")
    if not 2 <= len(parts) <= 3:
        raise GrantError(f"malformed grant {grant!r}: expected <service>:<permission>[:<resource>]")
    lower = "a lowercase identifier (a-z, 0-9, '-') or *"
    service = _segment(grant, "service", parts[0], _NAME, lower)
    permission = _segment(grant, "permission", parts[1], _NAME, lower)
    resource = None
    if len(parts) == 3:
        resource = _segment(grant, "resource", parts[2], _RESOURCE, "letters, digits and . _ / @ + - (or *)")
    return Grant(service, permission, None if resource == ANY else resource)


def _parsed(grants: Iterable[str]) -> list[Grant]:
    """The well-formed ones (held grants come from validated configs; a stray one grants nothing)."""
    out = []
    for grant in grants:
        try:
            out.append(parse(grant))
        except GrantError:
            log.warning("malformed grant ignored", extra={"grant": str(grant)[:100]})
    return out


def matches(pattern: str, grant: str) -> bool:
    """True when the pattern covers the whole grant (an allow rule's test)."""
    return parse(pattern).covers(parse(grant))


def holds_some(grants: Iterable[str], service: str, permission: str) -> bool:
    """True when `grants` give `service:permission` on at least one resource (`github:write:repo` counts)."""
    want = Grant(service, permission)
    return any(g.overlaps(want) for g in _parsed(grants))


def holds_all(grants: Iterable[str], service: str, permission: str) -> bool:
    """True when `grants` give `service:permission` on every resource (`hub:write`, not `hub:write:x`)."""
    want = Grant(service, permission)
    return any(g.covers(want) for g in _parsed(grants))


@dataclass(frozen=True)
class Rules:
    allowed: tuple[Grant, ...] = ()
    denied: tuple[Grant, ...] = ()


class PolicyError(ValueError):
    pass


def _grant_list(value: object, where: str) -> tuple[Grant, ...]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: expected a list of grants")
    out = []
    for index, item in enumerate(value):
        try:
            out.append(parse(item))
        except GrantError as exc:
            raise PolicyError(f"{where}[{index}]: {exc}") from None
    return tuple(out)


def _rules(node: object, where: str) -> Rules:
    if node is None:
        return Rules()
    if not isinstance(node, dict) or set(node) - {"allowed_grants", "denied_grants"}:
        raise PolicyError(f"{where}: expected a mapping with allowed_grants/denied_grants")
    return Rules(*(_grant_list(node.get(key) or [], f"{where}.{key}") for key in ("allowed_grants", "denied_grants")))


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
            try:
                wanted = parse(grant)
            except GrantError:
                dropped.append(grant)
                continue
            ok = (not allowed or any(a.covers(wanted) for a in allowed)) and not any(d.overlaps(wanted) for d in denied)
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

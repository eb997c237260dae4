"""The grant policy (contract §3): `*` per segment, default + agent lists, deny wins, no file = allow all."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from botburrow.definitions.parse import parse_agent
from botburrow.grants import (
    Grant,
    GrantError,
    GrantPolicy,
    PolicyError,
    PolicyGrantResolver,
    holds_all,
    holds_some,
    matches,
    parse,
)
from botburrow.settings import RunnerSettings, SettingsError, load
from services.runner.mcp.servers import Planner, holds


def agent(name: str, grants: list[str]):
    config = f"""version: "1.0.0"
name: {name}
type: native
brain:
  model: claude-sonnet-4-20250514
capabilities:
  grants: [{", ".join(grants)}]
"""
    return parse_agent(name, config.encode(), b"prompt")


# The grammar: `<service>:<permission>[:<resource>]`, `*` a whole segment, service and permission lowercase
# identifiers, the resource case-sensitive. Each row: a grant and what the parser makes of it.
@pytest.mark.parametrize(("text", "parsed"), [
    ("hub:read", Grant("hub", "read")),
    ("github:write:any-repo", Grant("github", "write", "any-repo")),
    ("github:read:Org/Repo.v2", Grant("github", "read", "Org/Repo.v2")),
    ("github:read:*", Grant("github", "read")),  # no resource = every resource = `*`
    ("*:read", Grant("*", "read")),
    ("*:*:*", Grant("*", "*")),
])
def test_well_formed_grants_parse(text: str, parsed: Grant) -> None:
    assert parse(text) == parsed


@pytest.mark.parametrize(("text", "why"), [
    ("GitHub:write", "service 'GitHub' must be a lowercase identifier"),
    ("github:Write", "permission 'Write' must be a lowercase identifier"),
    ("github", "expected <service>:<permission>[:<resource>]"),
    ("github:write:org:repo", "expected <service>:<permission>[:<resource>]"),
    ("github::repo", "permission '' must be"),
    (":read", "service '' must be"),
    ("github:write:", "resource '' must be"),
    ("github:wr*", "`*` must be a whole segment"),
    ("github:write:org/*", "`*` must be a whole segment"),
    ("github:write:my repo", "resource 'my repo' must be"),
    ("hub: read", "permission ' read' must be"),
    (7, "expected a string"),
])
def test_malformed_grants_are_refused_with_the_grant_named(text: object, why: str) -> None:
    with pytest.raises(GrantError) as caught:
        parse(text)
    assert why in str(caught.value) and repr(text) in str(caught.value)


def test_every_published_grant_parses() -> None:
    root = Path(__file__).parent / "data" / "published-agent-definitions"
    published = [g for path in sorted(root.glob("agents/*/config.yaml"))
                 for g in parse_agent(path.parent.name, path.read_bytes(), b"").config.capabilities.grants]
    assert published and all(parse(g) for g in published)


# An allow rule's test: does the pattern cover the whole grant?
@pytest.mark.parametrize(("pattern", "grant", "expected"), [
    ("github:read", "github:read", True),
    ("github:*", "github:write", True),
    ("*:read", "hub:read", True),
    ("*:read", "hub:write", False),
    ("github:*", "github:read:org/repo", True),
    ("github:read", "github:read:org/repo", True),  # suffix: no resource covers every resource
    ("github:read:*", "github:read", True),
    ("github:read:org/repo", "github:read", False),  # one repo does not cover all of them
    ("github:read:org/repo", "github:read:org/repo", True),
    ("github:read:org/Repo", "github:read:org/repo", False),  # resources are case-sensitive
    ("hub:*", "github:read", False),
    ("github:write", "github:writer", False),  # whole segments, not prefixes
])
def test_matching_is_per_segment(pattern: str, grant: str, expected: bool) -> None:
    assert matches(pattern, grant) is expected


# A policy of one rule, a config asking for one grant: held after the policy?
@pytest.mark.parametrize(("rule", "asked", "held"), [
    ("denied_grants: ['github:write']", "github:write:any-repo", False),  # the bypass
    ("denied_grants: ['filesystem:write']", "filesystem:write:x", False),
    ("denied_grants: ['github:write']", "github:write", False),
    ("denied_grants: ['github:write']", "github:read:any-repo", True),
    ("denied_grants: ['github:write:secret']", "github:write", False),  # the broader grant includes it
    ("denied_grants: ['github:write:secret']", "github:write:other", True),
    ("denied_grants: ['github:write:Secret']", "github:write:secret", True),  # case-sensitive resource
    ("denied_grants: ['*:write']", "hub:write:x", False),
    ("denied_grants: ['*:*']", "arxiv:read", False),
    ("denied_grants: ['github:*:*']", "github:read:x", False),
    ("allowed_grants: ['github:write']", "github:write:any-repo", True),
    ("allowed_grants: ['github:write:one']", "github:write", False),
    ("allowed_grants: ['github:write:one']", "github:write:one", True),
    ("allowed_grants: ['github:*']", "github:write:one", True),
    ("allowed_grants: ['hub:*']", "github:read", False),
])
def test_one_rule_one_grant(rule: str, asked: str, held: bool) -> None:
    policy = GrantPolicy.parse(f"default:\n  {rule}\n")
    assert policy.filter("a", [asked]) == (({asked}, []) if held else (set(), [asked]))


POLICY = """
default:
  allowed_grants: ["hub:*", "github:read", "brave:search"]
  denied_grants: ["github:write"]
agents:
  trusted:
    allowed_grants: ["github:*", "filesystem:*"]
  muted:
    denied_grants: ["hub:write"]
"""


def test_defaults_and_agent_lists_add_up_and_deny_wins(caplog: pytest.LogCaptureFixture) -> None:
    resolver = PolicyGrantResolver(GrantPolicy.parse(POLICY))
    asked = ["hub:read", "hub:write", "github:read", "github:write", "filesystem:read", "kubernetes:read"]
    with caplog.at_level(logging.WARNING):
        assert resolver.resolve(agent("plain", asked)) == {"hub:read", "hub:write", "github:read"}
    dropped: list[Any] = [r for r in caplog.records if r.getMessage() == "grants dropped by policy"]
    assert dropped and dropped[0].dropped == ["github:write", "filesystem:read", "kubernetes:read"]
    # The agent's own allow list cannot beat the default deny.
    assert resolver.resolve(agent("trusted", asked)) == {"hub:read", "hub:write", "github:read", "filesystem:read"}
    assert resolver.resolve(agent("muted", asked)) == {"hub:read", "github:read"}


def test_no_allow_list_allows_everything_not_denied() -> None:
    policy = GrantPolicy.parse("default:\n  denied_grants: ['*:write']\n")
    assert policy.filter("a", ["hub:read", "hub:write", "arxiv:read"]) == ({"hub:read", "arxiv:read"}, ["hub:write"])


def test_no_file_allows_what_configs_ask() -> None:
    resolver = PolicyGrantResolver.from_settings(None)
    assert resolver.resolve(agent("any", ["github:write", "kubernetes:read"])) == {"github:write", "kubernetes:read"}


def test_bad_policy_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        PolicyGrantResolver.from_settings(str(tmp_path / "missing.yaml"))
    for text in ("default: [a]", "agents: {x: {allowed_grants: hub:read}}", "other: 1"):
        with pytest.raises(PolicyError):
            GrantPolicy.parse(text)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert PolicyGrantResolver.from_settings(str(path)).policy == GrantPolicy.parse(POLICY)


def test_a_malformed_grant_in_a_policy_is_refused_naming_it() -> None:
    for text, where in (("default:\n  denied_grants: ['github:write', 'GitHub:Write']\n", "default.denied_grants[1]"),
                        ("agents:\n  x:\n    allowed_grants: ['hub:re*d']\n", "agents.x.allowed_grants[0]")):
        with pytest.raises(PolicyError) as caught:
            GrantPolicy.parse(text)
        assert str(caught.value).startswith(f"{where}: malformed grant ")


@pytest.mark.parametrize(("grants", "service", "permission", "some", "every"), [
    ({"github:write:any-repo"}, "github", "write", True, False),
    ({"github:write"}, "github", "write", True, True),
    ({"github:read"}, "github", "write", False, False),
    ({"github:writer"}, "github", "write", False, False),
    ({"hub:read"}, "hub", "write", False, False),
    ({"hub:write:post-1"}, "hub", "write", True, False),
    (set(), "hub", "write", False, False),
])
def test_holds(grants: set[str], service: str, permission: str, some: bool, every: bool) -> None:
    assert holds_some(grants, service, permission) is some and holds(grants, service, permission) is some
    assert holds_all(grants, service, permission) is every


@pytest.mark.parametrize(("policy", "read_only"), [
    ("default:\n  denied_grants: ['github:write']\n", True),
    ("default:\n  denied_grants: ['github:write:other-repo']\n", False),
    ("{}", False),
])
def test_github_starts_read_only_unless_a_write_is_held_after_policy(tmp_path: Path, policy: str,
                                                                      read_only: bool) -> None:
    """The issue's attack: a config asking `github:write:any-repo` under a policy denying `github:write`."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "github-pat").write_text("ghp_planner_test_token")
    asking = agent("pusher", ["github:read", "github:write:any-repo"])
    held = PolicyGrantResolver(GrantPolicy.parse(policy)).resolve(asking)
    planner = Planner(environ={"SECRETS_DIR": str(tmp_path / "secrets")}, homes=tmp_path / "homes",
                      workspace=tmp_path / "ws", github_binary=sys.executable)
    launch = planner.github(held)
    assert launch is not None and launch.read_only is read_only and ("--read-only" in launch.args) is read_only


def test_a_policy_file_with_a_malformed_grant_stops_the_runner_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("default:\n  denied_grants: ['github:write:org/*']\n")
    with pytest.raises(SettingsError) as caught:
        load("runner", {"HUB_URL": "http://hub", "GRANT_POLICY_FILE": str(path)})
    assert "default.denied_grants[0]: malformed grant 'github:write:org/*'" in str(caught.value)
    path.write_text(POLICY)
    settings = load(RunnerSettings, {"HUB_URL": "http://hub", "GRANT_POLICY_FILE": str(path)})
    assert settings.grant_policy_file == str(path)

"""The grant policy (SPEC §3): `*` per segment, default + agent lists, deny wins, no file = allow all."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from botburrow.definitions.parse import parse_agent
from botburrow.mcp.grants import GrantPolicy, PolicyError, PolicyGrantResolver, matches


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


@pytest.mark.parametrize(("pattern", "grant", "expected"), [
    ("github:read", "github:read", True),
    ("github:*", "github:write", True),
    ("*:read", "hub:read", True),
    ("*:read", "hub:write", False),
    ("github:*", "github:read:org/repo", True),
    ("github:read", "github:read:org/repo", False),
    ("github:read:*", "github:read", False),
    ("hub:*", "github:read", False),
])
def test_matching_is_per_segment(pattern: str, grant: str, expected: bool) -> None:
    assert matches(pattern, grant) is expected


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
    dropped = [r for r in caplog.records if r.getMessage() == "grants dropped by policy"]
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

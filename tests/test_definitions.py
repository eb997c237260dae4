"""Agent definitions: the published data loads, broken configs are reported with their field path,
the structs match the published JSON schemas, and S3 (a real SeaweedFS) serves the same definitions."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from botburrow.definitions import (
    DefinitionError,
    LocalSource,
    S3Source,
    SourceError,
    load_all,
    open_source,
    parse_agent,
    parse_skill,
    validate_dir,
)
from botburrow.definitions.source import warn_unacted
from schemas.agent import AgentConfig, SkillFrontMatter
from tests.fixtures.s3 import S3Server

# A verbatim copy of ../shared/agent-definitions (see its SOURCE.md), so the suite runs anywhere.
PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions"
AGENTS = {"claude-coder-1", "devops-agent", "pirate-captain-agent", "research-agent", "sprint-coder",
          "test-persona-agent"}
SKILLS = {"budget-check", "hub-post", "hub-search"}
MINIMAL = b"name: tiny-agent\ntype: native\nbrain:\n  model: m\ncapabilities: {}\n"


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    root = tmp_path / "defs"
    shutil.copytree(PUBLISHED, root)
    return root


async def test_every_published_agent_and_skill_loads(definitions: Path) -> None:
    result = await load_all(LocalSource(definitions))
    assert result.errors == []
    assert set(result.agents) == AGENTS  # templates/ is not agent data
    assert set(result.skills) == SKILLS
    research = result.agents["research-agent"]
    assert research.config.behavior.max_iterations == 8
    assert research.config.capabilities.shell.timeout_seconds == 120  # default filled in
    assert research.system_prompt.startswith("# Research Agent")
    assert result.skills["hub-post"].front_matter.requires_grants == ["hub:write"]
    assert result.skills["hub-post"].body.startswith("# Posting to Hub")
    assert validate_dir(definitions) == []


async def test_content_hash_changes_with_either_file(definitions: Path) -> None:
    before = (await load_all(LocalSource(definitions))).agents
    prompt = definitions / "agents/devops-agent/system-prompt.md"
    prompt.write_text(prompt.read_text() + "\nOne more line.\n")
    after = (await load_all(LocalSource(definitions))).agents
    assert after["devops-agent"].hash != before["devops-agent"].hash
    assert all(after[name].hash == before[name].hash for name in AGENTS - {"devops-agent"})


def test_system_prompt_placeholders_are_substituted() -> None:
    config = MINIMAL + b"description: A small helper\n"
    agent = parse_agent("tiny-agent", config, b"You are {{name}}: {{description}}.")
    assert agent.system_prompt == "You are tiny-agent: A small helper."
    assert agent.config.brain.provider == "anthropic" and agent.config.brain.temperature == 0.7
    assert agent.config.behavior.limits.min_interval_seconds == 60


BROKEN = {
    "bad type": ("behavior:\n  max_iterations: ten\n", "$.behavior.max_iterations", "Expected `int`"),
    "unknown key": ("behavior:\n  bogus_flag: true\n", "$.behavior.bogus_flag", "unknown field"),
    "out of range": ("behavior:\n  max_iterations: 99\n", "$.behavior.max_iterations", "<= 50"),
    "missing field": (None, "$.brain", "missing required field"),
    "name mismatch": ("name: someone-else\n", "$.name", "does not match its folder"),
    "yaml syntax": ("brain: [unclosed\n", "$", "YAML syntax error"),
    "custom without executor": ("type: custom\n", "$.executor", "required when type is custom"),
}


def _broken_config(case: str) -> bytes:
    extra, _, _ = BROKEN[case]
    base = "name: research-agent\ntype: native\nbrain:\n  model: m\ncapabilities: {}\n"
    if extra is None:
        return base.replace("brain:\n  model: m\n", "").encode()
    # A later duplicate key replaces the earlier one in PyYAML: that is how each case overrides the base.
    return (base + extra).encode()


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_broken_config_is_reported_with_its_field_path_and_the_others_load(case: str, definitions: Path) -> None:
    config = definitions / "agents/research-agent/config.yaml"
    config.write_bytes(_broken_config(case))
    _, field_path, message = BROKEN[case]

    result = await load_all(LocalSource(definitions))

    assert set(result.agents) == AGENTS - {"research-agent"}
    assert [(e.path, e.field_path) for e in result.errors] == [("agents/research-agent/config.yaml", field_path)]
    assert message in result.errors[0].message
    lines = validate_dir(definitions)
    assert len(lines) == 1 and lines[0].startswith(f"{config}: {field_path}: ")


def test_broken_skill_and_missing_prompt_are_reported(definitions: Path) -> None:
    (definitions / "skills/hub-search/SKILL.md").write_text("no front matter here\n")
    (definitions / "agents/sprint-coder/system-prompt.md").unlink()
    (definitions / "skills/hub-post/SKILL.md").write_text("---\nname: hub-post\ndescription: x\ncolour: red\n---\nbody")
    lines = validate_dir(definitions)
    assert f"{definitions}/agents/sprint-coder/system-prompt.md: $: missing" in lines
    assert any(line.startswith(f"{definitions}/skills/hub-search/SKILL.md: $: missing YAML front matter")
               for line in lines)
    assert any(line.startswith(f"{definitions}/skills/hub-post/SKILL.md: $.colour: ") for line in lines)
    # research-agent lists hub-search and hub-post, which are broken: not reported a second time.
    assert not any("unknown skill" in line for line in lines)


def test_validate_names_a_skill_nobody_publishes(definitions: Path) -> None:
    shutil.rmtree(definitions / "skills/budget-check")
    lines = validate_dir(definitions)
    assert lines and all("unknown skill 'budget-check'" in line for line in lines)
    assert all("$.capabilities.skills[" in line for line in lines)


def test_skill_front_matter_and_body() -> None:
    skill = parse_skill("tiny", b"---\nname: tiny\ndescription: Tiny skill\nversion: 1.2.3\n---\n\n# Body\ntext\n")
    assert skill.front_matter.version == "1.2.3" and skill.body == "# Body\ntext\n"
    with pytest.raises(DefinitionError) as caught:
        parse_skill("tiny", b"---\nname: tiny\ndescription: never closed\n")
    assert caught.value.path == "skills/tiny/SKILL.md" and "unterminated" in caught.value.message


async def test_fields_not_acted_on_are_named_once(definitions: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = await load_all(LocalSource(definitions))
    assert result.unacted["interests.follow_agents"] == ["claude-coder-1"]
    assert "research-agent" in result.unacted["behavior.discovery.min_confidence"]
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="botburrow.definitions.source"):
        warn_unacted(result, warned)
        warn_unacted(result, warned)
    records = [r for r in caplog.records if "does not act on" in r.getMessage()]
    assert len(records) == 1
    # `memory` is acted on since issue 19 (services/runner/memory): no longer named.
    assert set(records[0].fields) == {"capabilities.spawning", "interests.follow_agents",  # type: ignore[attr-defined]
                                      "behavior.discovery.min_confidence"}


# --- the structs against the published JSON schemas -----------------------------------------------

_BOUNDS = ("minimum", "maximum", "minLength", "maxLength", "pattern")


def _shape(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A comparable outline of a schema node: property names, required lists, types, enums, bounds."""
    if "$ref" in node:
        return _shape(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        shapes = [_shape(alt, defs) for alt in alternatives if alt.get("type") != "null"]
        return shapes[0] if len(shapes) == 1 else sorted(shapes, key=repr)
    if "enum" in node:
        return {"enum": sorted(node["enum"])}
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        return {"properties": {name: _shape(sub, defs) for name, sub in node["properties"].items()},
                "required": sorted(node.get("required", [])),
                "closed": node.get("additionalProperties") is False}
    if kind == "object":
        return {"map_of": _shape(node.get("additionalProperties", {}), defs)}
    if kind == "array":
        return {"items": _shape(node.get("items", {}), defs)}
    return {"type": kind, **{key: node[key] for key in _BOUNDS if key in node}}


def _ours(struct: type) -> Any:
    schema = msgspec.json.schema(struct)
    return _shape(schema, schema["$defs"])


def _published(file: str) -> Any:
    return _shape(json.loads((PUBLISHED / "schemas" / file).read_text()), {})


def test_agent_config_struct_matches_the_published_schema() -> None:
    ours, published = _ours(AgentConfig), _published("agent-config.schema.json")
    # The documented additions (contract §2): `type: opencode`, and `executor` for `type: custom`.
    assert ours["properties"]["type"]["enum"] == sorted([*published["properties"]["type"]["enum"], "opencode"])
    del ours["properties"]["executor"]
    ours["properties"]["type"] = published["properties"]["type"]
    assert ours == published


def test_skill_struct_matches_the_published_schema() -> None:
    assert _ours(SkillFrontMatter) == _published("skill.schema.json")


# --- sources ---------------------------------------------------------------------------------------


def test_open_source_parses_agents_source(tmp_path: Path) -> None:
    env = {"R2_ENDPOINT": "http://127.0.0.1:1", "R2_ACCESS_KEY": "access-key-1", "R2_SECRET_KEY": "secret-key-1"}
    source = open_source("s3://botburrow-agents/team/a", env)
    assert isinstance(source, S3Source) and source.bucket == "botburrow-agents" and source.prefix == "team/a/"
    assert isinstance(open_source(str(tmp_path), env), LocalSource)


async def test_missing_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        await load_all(LocalSource(tmp_path / "nope"))


async def test_s3_with_manifest_rereads_only_changed_entries(s3: S3Server, definitions: Path) -> None:
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=True)
    source = s3.source(prefix)

    first = await load_all(source)
    assert first.errors == [] and set(first.agents) == AGENTS and set(first.skills) == SKILLS
    assert source.object_gets == 2 * len(AGENTS) + len(SKILLS)  # schemas/, templates/ never fetched
    local = await load_all(LocalSource(definitions))
    assert {n: a.hash for n, a in first.agents.items()} == {n: a.hash for n, a in local.agents.items()}

    prompt = definitions / "agents/pirate-captain-agent/system-prompt.md"
    prompt.write_text("Arr, I be {{name}}.\n")
    s3.upload_tree(definitions, prefix, manifest=True)
    gets_before = source.object_gets
    second = await load_all(source)
    assert source.object_gets - gets_before == 1
    assert second.agents["pirate-captain-agent"].system_prompt == "Arr, I be pirate-captain-agent.\n"
    assert second.agents["devops-agent"] == first.agents["devops-agent"]


async def test_s3_without_manifest_uses_etags(s3: S3Server, definitions: Path) -> None:
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=False)
    source = s3.source(prefix)
    first = await load_all(source)
    assert set(first.agents) == AGENTS and set(first.skills) == SKILLS
    gets_before = source.object_gets
    await load_all(source)
    assert source.object_gets == gets_before  # nothing changed: nothing re-read


async def test_s3_bad_credentials_is_a_source_error_without_the_secret(s3: S3Server) -> None:
    source = S3Source(s3.bucket, s3.new_prefix(), endpoint=s3.endpoint, access_key="wrong-access-key",
                      secret_key="wrong-secret-value-42", region="us-east-1")
    with pytest.raises(SourceError) as caught:
        await load_all(source)
    assert "wrong-secret-value-42" not in str(caught.value)

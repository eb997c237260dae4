"""Parse one agent (`config.yaml` + `system-prompt.md`) or one skill (`SKILL.md`) into its stored form.

The msgspec structs in `schemas.agent` are the validator; a failure becomes a
`DefinitionError` naming the file and the JSON path of the bad field (`$.behavior.max_iterations`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec
import yaml

from schemas.agent import AgentConfig, AgentDefinition, SkillDefinition, SkillFrontMatter

_AT_PATH = re.compile(r" - at `([^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")
# libyaml's loader when PyYAML was built with it: 7x faster than the pure-Python one (1,000 agents:
# 0.5 s instead of 3.4 s), same safe constructors, so the same values.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DefinitionError(Exception):
    """A definition that cannot be loaded: which file, which field (`$` for the whole file), and why."""

    def __init__(self, path: str, field_path: str, message: str) -> None:
        super().__init__(f"{path}: {field_path}: {message}")
        self.path = path
        self.field_path = field_path
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DefinitionError) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def content_hash(files: dict[str, bytes]) -> str:
    """sha256 hex over the files that make one definition, keyed by their name inside its folder.

    Names and lengths are hashed too, so moving bytes from one file to the other changes the hash, and
    the result does not depend on where the folder lives (a directory or an S3 prefix).
    """
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _validation_error(path: str, exc: msgspec.ValidationError) -> DefinitionError:
    message = str(exc)
    match = _AT_PATH.search(message)
    field_path = match.group(1) if match else "$"
    if match:
        message = message[: match.start()]
    named = _NAMED_FIELD.search(message)
    if named:  # point at the offending key itself, not at the object holding it
        field_path = f"{field_path}.{named.group(1)}"
    return DefinitionError(path, field_path, message)


def _load_yaml(path: str, data: bytes) -> Any:
    try:
        return yaml.load(data, Loader=_SAFE_LOADER)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        raise DefinitionError(path, "$", f"YAML syntax error: {' '.join(str(exc).split())}"[:1000]) from None
    except (ValueError, RecursionError, OverflowError) as exc:  # e.g. an integer of 5,000 digits
        raise DefinitionError(path, "$", f"YAML value cannot be read: {type(exc).__name__}: {exc}"[:1000]) from None


def _text(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DefinitionError(path, "$", f"not UTF-8 text: {exc}") from None


# Fields accepted from the published schema that the product does not act on yet (contract §2).
def _unacted_fields(data: dict[str, Any]) -> list[str]:
    found = []
    if (data.get("capabilities") or {}).get("spawning") is not None:
        found.append("capabilities.spawning")
    if (data.get("interests") or {}).get("follow_agents"):
        found.append("interests.follow_agents")
    if "min_confidence" in ((data.get("behavior") or {}).get("discovery") or {}):
        found.append("behavior.discovery.min_confidence")
    return found


def _check_executor(path: str, config: AgentConfig) -> None:
    if config.type == "custom" and config.executor is None:
        raise DefinitionError(path, "$.executor", "required when type is custom")
    if config.type != "custom" and config.executor is not None:
        raise DefinitionError(path, "$.executor", f"only allowed with type custom, not {config.type}")


def parse_agent_noting(name: str, config_yaml: bytes, prompt_md: bytes) -> tuple[AgentDefinition, list[str]]:
    """`parse_agent`, plus the fields set in the config that the product does not act on yet."""
    config_path, prompt_path = f"agents/{name}/config.yaml", f"agents/{name}/system-prompt.md"
    data = _load_yaml(config_path, config_yaml)
    if not isinstance(data, dict):
        raise DefinitionError(config_path, "$", f"expected a mapping, got {type(data).__name__}")
    try:
        config = msgspec.convert(data, AgentConfig)
    except msgspec.ValidationError as exc:
        raise _validation_error(config_path, exc) from None
    if config.name != name:
        raise DefinitionError(config_path, "$.name", f"name {config.name!r} does not match its folder {name!r}")
    _check_executor(config_path, config)
    prompt = _text(prompt_path, prompt_md)
    prompt = prompt.replace("{{name}}", config.name).replace("{{description}}", config.description or "")
    digest = content_hash({"config.yaml": config_yaml, "system-prompt.md": prompt_md})
    definition = AgentDefinition(name=name, hash=digest, config=config, system_prompt=prompt)
    return definition, _unacted_fields(data)


def parse_agent(name: str, config_yaml: bytes, prompt_md: bytes) -> AgentDefinition:
    """One agent from its folder's two files; raises DefinitionError with the bad field's path."""
    return parse_agent_noting(name, config_yaml, prompt_md)[0]


def split_front_matter(path: str, text: str) -> tuple[str, str]:
    """(YAML front matter, markdown body) of a `---`-delimited document."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise DefinitionError(path, "$", "missing YAML front matter: the file must start with a '---' line")
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :]).lstrip("\n")
    raise DefinitionError(path, "$", "unterminated YAML front matter: no closing '---' line")


def parse_skill(name: str, skill_md: bytes) -> SkillDefinition:
    """One skill from its `SKILL.md`; raises DefinitionError with the bad field's path."""
    path = f"skills/{name}/SKILL.md"
    front_text, body = split_front_matter(path, _text(path, skill_md))
    data = _load_yaml(path, front_text.encode())
    if not isinstance(data, dict):
        raise DefinitionError(path, "$", f"front matter: expected a mapping, got {type(data).__name__}")
    try:
        front = msgspec.convert(data, SkillFrontMatter)
    except msgspec.ValidationError as exc:
        raise _validation_error(path, exc) from None
    if front.name != name:
        raise DefinitionError(path, "$.name", f"name {front.name!r} does not match its folder {name!r}")
    return SkillDefinition(name=name, hash=content_hash({"SKILL.md": skill_md}), front_matter=front, body=body)

"""Where definitions come from (contract §2): a local directory or an S3/R2 bucket, behind one seam.

`DefinitionSource.snapshot()` returns every definition file (relative path -> `SourceFile`) as it is
now. Definitions are data written by someone else, so every source refuses, file by file (a `SourceFile`
with `refused` set, which fails only that definition, with the file's path): symbolic links, hard links
and anything not a regular file (a directory source), paths that could leave the layout (`..`, absolute,
backslash, NUL or control characters: S3 keys and manifest entries), and files over `max_file_bytes`
(DEFINITION_FILE_MAX_BYTES), which are not read at all.

`LocalSource` (`local.py`) hashes file by file (reading again only the files whose stat changed);
`S3Source` (`s3.py`) reads `manifest.json` and fetches only the entries whose hash changed since its last
snapshot (without a manifest it lists the objects and uses their ETags); the checks they share are in
`files.py`. `load_all` turns a snapshot into parsed agents and skills plus the errors of the broken ones.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from botburrow.definitions import bucket as configs_bucket
from botburrow.definitions.files import (
    DEFAULT_MAX_FILE_BYTES,
    SYMLINK,
    SourceError,
    SourceFile,
    is_definition_file,
    is_safe_name,
    path_problem,
    refused_file,
    shown,
    too_big,
)
from botburrow.definitions.local import LocalSource, read_tree
from botburrow.definitions.parse import DefinitionError, parse_agent_noting, parse_skill
from botburrow.definitions.s3 import MANIFEST, S3Source
from botburrow.secrets import read_secret
from schemas.agent import AgentDefinition, SkillDefinition

log = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["DEFAULT_MAX_FILE_BYTES", "MANIFEST", "SYMLINK", "DefinitionSource", "LoadResult", "LocalSource",
           "S3Source", "SourceError", "SourceFile", "build_result", "is_definition_file", "is_safe_name",
           "load_all", "open_source", "path_problem", "read_tree", "refused_file", "too_big", "warn_unacted"]


class DefinitionSource(Protocol):
    description: str

    async def snapshot(self) -> dict[str, SourceFile]: ...

    async def close(self) -> None: ...


def open_source(agents_source: str, environ: Mapping[str, str], *,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> DefinitionSource:
    """`AGENTS_SOURCE` as a source: `s3://bucket[/prefix]` (with `R2_ENDPOINT` and the r2 keys) or a path."""
    if agents_source.startswith("s3://"):
        bucket, _, prefix = agents_source[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"AGENTS_SOURCE {agents_source!r} names no bucket")
        return S3Source(bucket, prefix, endpoint=environ.get("R2_ENDPOINT") or None,
                        access_key=read_secret("r2-access-key", environ=environ),
                        secret_key=read_secret("r2-secret-key", environ=environ), max_file_bytes=max_file_bytes)
    return LocalSource(Path(agents_source).expanduser(), max_file_bytes=max_file_bytes)


class LoadResult(msgspec.Struct, kw_only=True):
    agents: dict[str, AgentDefinition] = msgspec.field(default_factory=dict)
    skills: dict[str, SkillDefinition] = msgspec.field(default_factory=dict)
    errors: list[DefinitionError] = msgspec.field(default_factory=list)
    # Not-yet-acted-on config field -> the agents that set it.
    unacted: dict[str, list[str]] = msgspec.field(default_factory=dict)


def _folders(files: Mapping[str, SourceFile], kind: str) -> list[str]:
    return sorted({path.split("/")[1] for path, file in files.items()
                   if file.refused is None and path.startswith(f"{kind}/") and is_definition_file(path)})


def _folder_of(path: str) -> str:
    return "/".join(path.split("/")[:2])


def _refusals(files: Mapping[str, SourceFile], result: LoadResult) -> set[str]:
    """Record each refused file as an error under its own path; the folders they fail."""
    blocked = set()
    for path, file in sorted(files.items()):
        if file.refused is not None:
            result.errors.append(DefinitionError(shown(path), "$", f"refused: {file.refused}"))
            blocked.add(_folder_of(path))
    return blocked


def _check_stored_size(path: str, definition: AgentDefinition | SkillDefinition) -> None:
    size = len(configs_bucket.encode(definition))
    if size > configs_bucket.MAX_VALUE_BYTES:
        raise DefinitionError(path, "$", f"the stored definition would be {size} bytes, over the "
                                         f"{configs_bucket.MAX_VALUE_BYTES}-byte limit of a configs value")


def _parse_agent(files: Mapping[str, SourceFile], name: str) -> tuple[AgentDefinition, list[str]]:
    config, prompt = files.get(f"agents/{name}/config.yaml"), files.get(f"agents/{name}/system-prompt.md")
    if config is None:
        raise DefinitionError(f"agents/{name}/config.yaml", "$", "missing")
    if prompt is None:
        raise DefinitionError(f"agents/{name}/system-prompt.md", "$", "missing")
    definition, unacted = parse_agent_noting(name, config.data, prompt.data)
    _check_stored_size(f"agents/{name}/system-prompt.md", definition)
    return definition, unacted


def _parse_skill(files: Mapping[str, SourceFile], name: str) -> SkillDefinition:
    skill = parse_skill(name, files[f"skills/{name}/SKILL.md"].data)
    _check_stored_size(f"skills/{name}/SKILL.md", skill)
    return skill


def _guarded(folder: str, parse: Callable[[], T]) -> T | DefinitionError:
    """`parse()`, or the error of that one definition: whatever its files hold, the others still load."""
    try:
        return parse()
    except DefinitionError as exc:
        return exc
    except Exception as exc:  # a parser bug on hostile input must fail this definition, not the pass
        log.exception("definition parser failed", extra={"folder": shown(folder)})
        return DefinitionError(shown(folder), "$", f"cannot be parsed: {type(exc).__name__}")


def build_result(files: Mapping[str, SourceFile]) -> LoadResult:
    """Parse every definition in a snapshot; a broken or refused one is recorded in `errors` and skipped."""
    result = LoadResult()
    blocked = _refusals(files, result)
    for name in _folders(files, "agents"):
        if f"agents/{name}" in blocked:
            continue
        parsed = _guarded(f"agents/{name}", functools.partial(_parse_agent, files, name))
        if isinstance(parsed, DefinitionError):
            result.errors.append(parsed)
            continue
        result.agents[name] = parsed[0]
        for field in parsed[1]:
            result.unacted.setdefault(field, []).append(name)
    for name in _folders(files, "skills"):
        if f"skills/{name}" in blocked:
            continue
        skill = _guarded(f"skills/{name}", functools.partial(_parse_skill, files, name))
        if isinstance(skill, DefinitionError):
            result.errors.append(skill)
        else:
            result.skills[name] = skill
    return result


_warned_fields: set[str] = set()


def warn_unacted(result: LoadResult, warned: set[str] | None = None) -> None:
    """Name, once per process (or per `warned` set), the config fields accepted but not acted on yet."""
    seen = _warned_fields if warned is None else warned
    fresh = {field: agents for field, agents in result.unacted.items() if field not in seen}
    if fresh:
        seen.update(fresh)
        log.warning("agent configs set fields the product does not act on yet; they are ignored",
                    extra={"fields": sorted(fresh), "agents_by_field": fresh})


async def load_all(source: DefinitionSource) -> LoadResult:
    """Snapshot `source` and parse it. Raises SourceError when the source cannot be read at all."""
    result = build_result(await source.snapshot())
    warn_unacted(result)
    return result

"""Where definitions come from (SPEC §2): a local directory or an S3/R2 bucket, behind one seam.

`DefinitionSource.snapshot()` returns every definition file (relative path -> `SourceFile`) as it is
now. `LocalSource` hashes file by file (reading again only the files whose stat changed); `S3Source`
reads `manifest.json` and fetches only the entries whose hash changed since its last snapshot (without
a manifest it lists the objects and uses their ETags). `load_all` turns a snapshot into parsed agents
and skills plus the errors of the broken ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import aioboto3
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from botburrow.definitions.parse import DefinitionError, parse_agent_noting, parse_skill
from botburrow.schemas.agent import AgentDefinition, SkillDefinition
from botburrow.secrets import read_secret, redact, remember

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
S3_PARALLEL_GETS = 8


class SourceError(Exception):
    """The source could not be read at all (unreachable, denied, missing): nothing changes."""


class SourceFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # relative to the source root, `/`-separated
    hash: str  # the source's change detector: sha256 hex (local, manifest) or the S3 ETag
    data: bytes


def is_definition_file(path: str) -> bool:
    """The files a definition is made of; `templates/`, `schemas/` and skill siblings are not read."""
    parts = path.split("/")
    if len(parts) != 3:
        return False
    if parts[0] == "agents":
        return parts[2] in ("config.yaml", "system-prompt.md")
    return parts[0] == "skills" and parts[2] == "SKILL.md"


class DefinitionSource(Protocol):
    description: str

    async def snapshot(self) -> dict[str, SourceFile]: ...

    async def close(self) -> None: ...


# A file modified this close to a scan may be written again within the same mtime tick, size unchanged:
# its stat cannot be trusted to show that, so it is read again next time (git's "racy clean" rule).
RACY_NS = 2_000_000_000
StatKey = tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode


def _definition_entries(root: Path) -> list[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) of the definition files under `root`; dot folders are skipped, as glob does."""
    found = []
    for folder in ("agents", "skills"):
        try:
            with os.scandir(root / folder) as named:
                dirs = [d for d in named if not d.name.startswith(".") and d.is_dir()]
        except FileNotFoundError:
            continue
        for directory in dirs:
            with os.scandir(directory.path) as files:
                for file in files:
                    rel = f"{folder}/{directory.name}/{file.name}"
                    if is_definition_file(rel) and file.is_file():
                        found.append((rel, file))
    return sorted(found, key=lambda item: item[0])


def read_tree(root: Path, cache: dict[str, tuple[StatKey, SourceFile]] | None = None) -> dict[str, SourceFile]:
    """Every definition file under `root` (blocking: call it in a thread from async code).

    With a `cache` (kept by the caller, updated in place) a file whose stat has not changed since an
    earlier call is not read and hashed again: a poll of an unchanged tree costs a directory listing.
    """
    if not root.is_dir():
        raise SourceError(f"definitions directory {root} does not exist")
    scan_ns = time.time_ns()
    files, seen = {}, {}
    for rel, entry in _definition_entries(root):
        st = entry.stat()
        stat_key = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        cached = cache.get(rel) if cache is not None else None
        if cached is not None and cached[0] == stat_key:
            files[rel] = cached[1]
        else:
            data = Path(entry.path).read_bytes()
            files[rel] = SourceFile(path=rel, hash=hashlib.sha256(data).hexdigest(), data=data)
        if max(st.st_mtime_ns, st.st_ctime_ns) < scan_ns - RACY_NS:
            seen[rel] = (stat_key, files[rel])
    if cache is not None:
        cache.clear()
        cache.update(seen)
    return files


class LocalSource:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.description = str(self.root)
        self._stats: dict[str, tuple[StatKey, SourceFile]] = {}

    async def snapshot(self) -> dict[str, SourceFile]:
        try:
            return await asyncio.to_thread(read_tree, self.root, self._stats)
        except OSError as exc:
            raise SourceError(f"cannot read {self.root}: {exc}") from None

    async def close(self) -> None:
        return None


class ManifestEntry(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    hash: str
    size: int = 0
    cache_ttl: int | None = None


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    version: str | int | None = None
    generated_at: str | None = None
    entries: list[ManifestEntry] = msgspec.field(default_factory=list)


class S3Source:
    """An `s3://bucket/prefix` source (R2 or any S3 endpoint). Counts its object GETs in `object_gets`."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None, access_key: str | None,
                 secret_key: str | None, region: str = "auto") -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.description = f"s3://{bucket}/{self.prefix}"
        for name, value in (("r2-access-key", access_key), ("r2-secret-key", secret_key)):
            if value:
                remember(name, value)
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint, "aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
            "region_name": region,
            "config": Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=15,
                             retries={"max_attempts": 3, "mode": "standard"},
                             request_checksum_calculation="when_required",
                             response_checksum_validation="when_required"),
        }
        self._session = aioboto3.Session()
        self._cache: dict[str, SourceFile] = {}
        self.object_gets = 0

    async def snapshot(self) -> dict[str, SourceFile]:
        try:
            async with self._session.client("s3", **self._client_args) as s3:
                wanted = await self._manifest_hashes(s3)
                if wanted is None:
                    wanted = await self._listed_hashes(s3)
                return await self._refresh(s3, wanted)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise SourceError(redact(f"cannot read {self.description}: {exc}")) from None

    async def _manifest_hashes(self, s3: Any) -> dict[str, str] | None:
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + MANIFEST)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        body = await response["Body"].read()
        try:
            manifest = msgspec.json.decode(body, type=Manifest)
        except msgspec.DecodeError as exc:
            raise SourceError(f"{self.description}{MANIFEST} is not a valid manifest: {exc}") from None
        return {e.path.lstrip("/"): e.hash for e in manifest.entries if is_definition_file(e.path.lstrip("/"))}

    async def _listed_hashes(self, s3: Any) -> dict[str, str]:
        hashes = {}
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix):]
                if is_definition_file(rel):
                    hashes[rel] = obj["ETag"].strip('"')
        return hashes

    async def _refresh(self, s3: Any, wanted: dict[str, str]) -> dict[str, SourceFile]:
        changed = [path for path, digest in wanted.items() if self._cache.get(path, _NONE).hash != digest]
        gate = asyncio.Semaphore(S3_PARALLEL_GETS)

        async def get(path: str) -> SourceFile:
            async with gate:
                self.object_gets += 1
                response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + path)
                return SourceFile(path=path, hash=wanted[path], data=await response["Body"].read())

        fetched = await asyncio.gather(*(get(path) for path in changed))
        # Only now that every GET succeeded is the cache replaced: a failed snapshot changes nothing.
        self._cache = {path: self._cache[path] for path in wanted if path not in changed}
        self._cache.update({file.path: file for file in fetched})
        return dict(self._cache)

    async def close(self) -> None:
        return None


_NONE = SourceFile(path="", hash="", data=b"")


def open_source(agents_source: str, environ: Mapping[str, str]) -> DefinitionSource:
    """`AGENTS_SOURCE` as a source: `s3://bucket[/prefix]` (with `R2_ENDPOINT` and the r2 keys) or a path."""
    if agents_source.startswith("s3://"):
        bucket, _, prefix = agents_source[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"AGENTS_SOURCE {agents_source!r} names no bucket")
        return S3Source(bucket, prefix, endpoint=environ.get("R2_ENDPOINT") or None,
                        access_key=read_secret("r2-access-key", environ=environ),
                        secret_key=read_secret("r2-secret-key", environ=environ))
    return LocalSource(Path(agents_source).expanduser())


class LoadResult(msgspec.Struct, kw_only=True):
    agents: dict[str, AgentDefinition] = msgspec.field(default_factory=dict)
    skills: dict[str, SkillDefinition] = msgspec.field(default_factory=dict)
    errors: list[DefinitionError] = msgspec.field(default_factory=list)
    # Not-yet-acted-on config field -> the agents that set it.
    unacted: dict[str, list[str]] = msgspec.field(default_factory=dict)


def _folders(files: Mapping[str, SourceFile], kind: str) -> list[str]:
    return sorted({path.split("/")[1] for path in files if path.startswith(f"{kind}/")})


def build_result(files: Mapping[str, SourceFile]) -> LoadResult:
    """Parse every definition in a snapshot; a broken one is recorded in `errors` and skipped."""
    result = LoadResult()
    for name in _folders(files, "agents"):
        config, prompt = files.get(f"agents/{name}/config.yaml"), files.get(f"agents/{name}/system-prompt.md")
        try:
            if config is None:
                raise DefinitionError(f"agents/{name}/config.yaml", "$", "missing")
            if prompt is None:
                raise DefinitionError(f"agents/{name}/system-prompt.md", "$", "missing")
            definition, unacted = parse_agent_noting(name, config.data, prompt.data)
        except DefinitionError as exc:
            result.errors.append(exc)
            continue
        result.agents[name] = definition
        for field in unacted:
            result.unacted.setdefault(field, []).append(name)
    for name in _folders(files, "skills"):
        try:
            result.skills[name] = parse_skill(name, files[f"skills/{name}/SKILL.md"].data)
        except DefinitionError as exc:
            result.errors.append(exc)
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

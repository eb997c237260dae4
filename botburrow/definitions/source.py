"""Where definitions come from (SPEC §2): a local directory or an S3/R2 bucket, behind one seam.

`DefinitionSource.snapshot()` returns every definition file (relative path -> `SourceFile`) as it is
now. Definitions are data written by someone else, so every source refuses, file by file (a `SourceFile`
with `refused` set, which fails only that definition, with the file's path): symbolic links, hard links
and anything not a regular file (a directory source), paths that could leave the layout (`..`, absolute,
backslash, NUL or control characters: S3 keys and manifest entries), and files over `max_file_bytes`
(DEFINITION_FILE_MAX_BYTES), which are not read at all.

`LocalSource` hashes file by file (reading again only the files whose stat changed); `S3Source` reads
`manifest.json` and fetches only the entries whose hash changed since its last snapshot (without a
manifest it lists the objects and uses their ETags). `load_all` turns a snapshot into parsed agents
and skills plus the errors of the broken ones.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import aioboto3
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from botburrow.definitions import bucket as configs_bucket
from botburrow.definitions.parse import DefinitionError, parse_agent_noting, parse_skill
from botburrow.schemas.agent import AgentDefinition, SkillDefinition
from botburrow.secrets import read_secret, redact, remember
from botburrow.settings import BY_NAME

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
S3_PARALLEL_GETS = 8
DEFAULT_MAX_FILE_BYTES = int(BY_NAME["DEFINITION_FILE_MAX_BYTES"].default or 0)
# The manifest lists every file (about 150 bytes each): 16 MiB is room for 100,000 files.
MANIFEST_MAX_BYTES = 16 << 20
SYMLINK = "a symbolic link (definitions are read only from plain files inside their folder)"


class SourceError(Exception):
    """The source could not be read at all (unreachable, denied, missing): nothing changes."""


class SourceFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # relative to the source root, `/`-separated
    hash: str  # the source's change detector: sha256 hex (local, manifest) or the S3 ETag
    data: bytes
    refused: str | None = None  # why this file was not read (then `data` is empty): fails its definition


def refused_file(path: str, reason: str, digest: str = "") -> SourceFile:
    return SourceFile(path=path, hash=digest or f"refused:{reason}", data=b"", refused=reason)


def path_problem(path: str) -> str | None:
    """Why a source path could leave its folder or the layout (None when it is a plain relative path)."""
    if path.startswith("/"):
        return "an absolute path"
    if "\\" in path:
        return "a backslash in the path"
    if "\0" in path:
        return "a NUL byte in the path"
    if any(not char.isprintable() for char in path):
        return "a control character in the path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "an empty, '.' or '..' segment in the path"
    return None


def is_safe_name(name: str) -> bool:
    """A folder name that stays one folder (no separator, no `..`, nothing unprintable)."""
    return "/" not in name and path_problem(name) is None


def shown(path: str) -> str:
    """A path as it may appear in an error line or a log: unprintable characters escaped."""
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in path)


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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NOFOLLOW: a symlink swapped in after the scan still fails the open; O_NONBLOCK: a FIFO never blocks it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _file_refusal(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink > 1:  # a hard link's content may be any file of the filesystem
        return "a hard link (its content may live outside the definitions)"
    return None


def too_big(size: int, max_bytes: int) -> str:
    return f"{size} bytes or more, over the {max_bytes}-byte limit (DEFINITION_FILE_MAX_BYTES): not read"


def _read_file(name: str, dir_fd: int, max_bytes: int) -> bytes | str:
    """The file's bytes, or why it is refused; opened relative to its folder's descriptor, never followed."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return SYMLINK
        raise
    try:
        st = os.fstat(fd)
        refusal = _file_refusal(st)
        if refusal is not None:
            return refusal
        if st.st_size > max_bytes:
            return too_big(st.st_size, max_bytes)
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(max_bytes + 1)
        return too_big(len(data), max_bytes) if len(data) > max_bytes else data
    finally:
        os.close(fd)


class _TreeReader:
    """One scan of a definitions directory, through directory descriptors (see `read_tree`)."""

    def __init__(self, root: Path, cache: dict[str, tuple[StatKey, SourceFile]] | None, max_bytes: int) -> None:
        self.root, self.cache, self.max_bytes = root, cache, max_bytes
        self.scan_ns = time.time_ns()
        self.files: dict[str, SourceFile] = {}
        self.seen: dict[str, tuple[StatKey, SourceFile]] = {}

    def scan(self) -> dict[str, SourceFile]:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's choice
        try:
            for kind in ("agents", "skills"):
                try:
                    st = os.stat(kind, dir_fd=root_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    raise SourceError(f"{self.root / kind} is a symbolic link: refused")
                if stat.S_ISDIR(st.st_mode):
                    self._scan_kind(root_fd, kind)
        finally:
            os.close(root_fd)
        return dict(sorted(self.files.items()))

    def _scan_kind(self, root_fd: int, kind: str) -> None:
        kind_fd = os.open(kind, _DIR_FLAGS, dir_fd=root_fd)
        try:
            with os.scandir(kind_fd) as entries:
                folders = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in entries
                                 if not e.name.startswith("."))
            for name, is_link, is_dir in folders:
                rel = f"{kind}/{name}"
                refusal = path_problem(rel) or (SYMLINK if is_link else None)
                if refusal is not None:
                    self.files[rel] = refused_file(rel, refusal)
                elif is_dir:
                    self._scan_folder(kind_fd, rel, name)
        finally:
            os.close(kind_fd)

    def _scan_folder(self, kind_fd: int, rel: str, name: str) -> None:
        try:
            folder_fd = os.open(name, _DIR_FLAGS, dir_fd=kind_fd)
        except OSError as exc:  # swapped for a symlink since the listing
            self.files[rel] = refused_file(rel, SYMLINK if exc.errno in (errno.ELOOP, errno.ENOTDIR) else str(exc))
            return
        try:
            with os.scandir(folder_fd) as entries:
                wanted = [(f"{rel}/{e.name}", e.name, e.stat(follow_symlinks=False)) for e in entries
                          if is_definition_file(f"{rel}/{e.name}")]
            for path, file_name, st in wanted:
                self._read(folder_fd, path, file_name, st)
        finally:
            os.close(folder_fd)

    def _read(self, folder_fd: int, path: str, file_name: str, st: os.stat_result) -> None:
        refusal = path_problem(path) or _file_refusal(st)
        if refusal is not None:
            self.files[path] = refused_file(path, refusal)
            return
        stat_key = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        cached = self.cache.get(path) if self.cache is not None else None
        if cached is not None and cached[0] == stat_key:
            self.files[path] = cached[1]
        else:
            data = _read_file(file_name, folder_fd, self.max_bytes)
            if isinstance(data, str):
                self.files[path] = refused_file(path, data)
                return
            self.files[path] = SourceFile(path=path, hash=hashlib.sha256(data).hexdigest(), data=data)
        if max(st.st_mtime_ns, st.st_ctime_ns) < self.scan_ns - RACY_NS:
            self.seen[path] = (stat_key, self.files[path])


def read_tree(root: Path, cache: dict[str, tuple[StatKey, SourceFile]] | None = None, *,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> dict[str, SourceFile]:
    """Every definition file under `root` (blocking: call it in a thread from async code).

    Folders and files are opened relative to their parent's descriptor with O_NOFOLLOW, so nothing is
    read through a symbolic link, even one swapped in during the scan; refusals are `SourceFile`s with
    `refused` set. With a `cache` (kept by the caller, updated in place) a file whose stat has not changed
    since an earlier call is not read and hashed again: a poll of an unchanged tree costs a directory listing.
    """
    if not root.is_dir():
        raise SourceError(f"definitions directory {root} does not exist")
    reader = _TreeReader(root, cache, max_file_bytes)
    files = reader.scan()
    if cache is not None:
        cache.clear()
        cache.update(reader.seen)
    return files


class LocalSource:
    def __init__(self, root: Path | str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = Path(root)
        self.description = str(self.root)
        self.max_file_bytes = max_file_bytes
        self._stats: dict[str, tuple[StatKey, SourceFile]] = {}

    async def snapshot(self) -> dict[str, SourceFile]:
        try:
            return await asyncio.to_thread(read_tree, self.root, self._stats, max_file_bytes=self.max_file_bytes)
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
                 secret_key: str | None, region: str = "auto", max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.description = f"s3://{bucket}/{self.prefix}"
        self.max_file_bytes = max_file_bytes
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
                refused: dict[str, SourceFile] = {}
                wanted = await self._manifest_hashes(s3, refused)
                if wanted is None:
                    wanted = await self._listed_hashes(s3, refused)
                return {**await self._refresh(s3, wanted), **refused}
        except (ClientError, BotoCoreError, OSError) as exc:
            raise SourceError(redact(f"cannot read {self.description}: {exc}")) from None

    def _admit(self, path: str, refused: dict[str, SourceFile], *, size: int = 0, what: str) -> bool:
        """Whether `path` is a definition file to fetch; a path that could leave the layout is refused."""
        problem = path_problem(path)
        if problem is not None:
            refused[path] = refused_file(path, f"{what}: {problem}")
            return False
        if not is_definition_file(path):
            return False
        if size > self.max_file_bytes:
            refused[path] = refused_file(path, f"{what}: {too_big(size, self.max_file_bytes)}")
            return False
        return True

    async def _manifest_hashes(self, s3: Any, refused: dict[str, SourceFile]) -> dict[str, str] | None:
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + MANIFEST)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        body = await _bounded_body(response, MANIFEST_MAX_BYTES)
        if body is None:
            raise SourceError(f"{self.description}{MANIFEST} is over {MANIFEST_MAX_BYTES} bytes: not read")
        try:
            manifest = msgspec.json.decode(body, type=Manifest)
        except msgspec.DecodeError as exc:
            raise SourceError(f"{self.description}{MANIFEST} is not a valid manifest: {exc}") from None
        return {e.path: e.hash for e in manifest.entries
                if self._admit(e.path, refused, size=e.size, what="manifest entry")}

    async def _listed_hashes(self, s3: Any, refused: dict[str, SourceFile]) -> dict[str, str]:
        hashes = {}
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix):]
                if self._admit(rel, refused, size=obj.get("Size", 0), what="object key"):
                    hashes[rel] = obj["ETag"].strip('"')
        return hashes

    async def _refresh(self, s3: Any, wanted: dict[str, str]) -> dict[str, SourceFile]:
        changed = [path for path, digest in wanted.items() if self._cache.get(path, _NONE).hash != digest]
        gate = asyncio.Semaphore(S3_PARALLEL_GETS)

        async def get(path: str) -> SourceFile:
            async with gate:
                self.object_gets += 1
                response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + path)
                data = await _bounded_body(response, self.max_file_bytes)
                if data is None:  # the manifest's size was wrong, or the object changed since
                    return refused_file(path, too_big(self.max_file_bytes + 1, self.max_file_bytes), wanted[path])
                return SourceFile(path=path, hash=wanted[path], data=data)

        fetched = await asyncio.gather(*(get(path) for path in changed))
        # Only now that every GET succeeded is the cache replaced: a failed snapshot changes nothing.
        self._cache = {path: self._cache[path] for path in wanted if path not in changed}
        self._cache.update({file.path: file for file in fetched})
        return dict(self._cache)

    async def close(self) -> None:
        return None


async def _bounded_body(response: dict[str, Any], max_bytes: int) -> bytes | None:
    """An object's body, or None when it is over `max_bytes` (then at most max_bytes + 1 bytes are read)."""
    body = response["Body"]
    try:
        if int(response.get("ContentLength") or 0) > max_bytes:
            return None
        chunks, total = [], 0
        while total <= max_bytes:  # read(n) returns what has arrived, up to n bytes: loop to the end
            chunk = await body.read(max_bytes + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return None if total > max_bytes else b"".join(chunks)
    finally:
        body.close()


_NONE = SourceFile(path="", hash="", data=b"")


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


def build_result(files: Mapping[str, SourceFile]) -> LoadResult:
    """Parse every definition in a snapshot; a broken or refused one is recorded in `errors` and skipped."""
    result = LoadResult()
    blocked = _refusals(files, result)
    for name in _folders(files, "agents"):
        if f"agents/{name}" in blocked:
            continue
        config, prompt = files.get(f"agents/{name}/config.yaml"), files.get(f"agents/{name}/system-prompt.md")
        try:
            if config is None:
                raise DefinitionError(f"agents/{name}/config.yaml", "$", "missing")
            if prompt is None:
                raise DefinitionError(f"agents/{name}/system-prompt.md", "$", "missing")
            definition, unacted = parse_agent_noting(name, config.data, prompt.data)
            _check_stored_size(f"agents/{name}/system-prompt.md", definition)
        except DefinitionError as exc:
            result.errors.append(exc)
            continue
        result.agents[name] = definition
        for field in unacted:
            result.unacted.setdefault(field, []).append(name)
    for name in _folders(files, "skills"):
        if f"skills/{name}" in blocked:
            continue
        try:
            skill = parse_skill(name, files[f"skills/{name}/SKILL.md"].data)
            _check_stored_size(f"skills/{name}/SKILL.md", skill)
            result.skills[name] = skill
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

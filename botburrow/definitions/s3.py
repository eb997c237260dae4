"""An `s3://bucket/prefix` definitions source (R2 or any S3 endpoint), with or without a manifest."""

from __future__ import annotations

import asyncio
from typing import Any

import aioboto3
import msgspec
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from botburrow.definitions.files import (
    DEFAULT_MAX_FILE_BYTES,
    SourceError,
    SourceFile,
    is_definition_file,
    path_problem,
    refused_file,
    too_big,
)
from botburrow.secrets import redact, remember

MANIFEST = "manifest.json"
S3_PARALLEL_GETS = 8
# The manifest lists every file (about 150 bytes each): 16 MiB is room for 100,000 files.
MANIFEST_MAX_BYTES = 16 << 20


def client_args(endpoint: str | None, access_key: str | None, secret_key: str | None, region: str, *,
                connect_timeout_s: float, read_timeout_s: float, max_attempts: int) -> dict[str, Any]:
    """aioboto3 client arguments for R2 or any S3 (SeaweedFS, MinIO): path-style addressing, and checksums
    only where required (R2 and SeaweedFS refuse the newer default ones)."""
    return {
        "endpoint_url": endpoint, "aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
        "region_name": region,
        "config": Config(s3={"addressing_style": "path"}, connect_timeout=connect_timeout_s,
                         read_timeout=read_timeout_s, retries={"max_attempts": max_attempts, "mode": "standard"},
                         request_checksum_calculation="when_required",
                         response_checksum_validation="when_required"),
    }


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
        self._client_args = client_args(endpoint, access_key, secret_key, region,
                                        connect_timeout_s=5, read_timeout_s=15, max_attempts=3)
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
        if not path or path.endswith("/"):  # a folder marker (S3 consoles make them): no file, nothing to say
            return False
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
        except (ValueError, RecursionError) as exc:  # msgspec's errors, and UnicodeDecodeError inside a string
            raise SourceError(f"{self.description}{MANIFEST} is not a valid manifest: {exc}"[:500]) from None
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
                try:
                    response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + path)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                        raise
                    # That definition fails (tried again next poll: the hash never matches); the rest load.
                    return refused_file(path, "listed in the manifest, missing from the bucket")
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

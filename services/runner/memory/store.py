"""Where memories are kept: an S3 bucket (R2, SeaweedFS in the tests) or, in local mode, a directory.

`MEMORY_STORE` names it: `s3://bucket[/prefix]` (endpoint MEMORY_S3_ENDPOINT, credentials the secrets
`memory-access-key` / `memory-secret-key`, which the deployment scopes to `memory/`), or a directory path.
Every key a store is given is relative to `<prefix>memory/<agent>/`; it never reads or writes elsewhere
(the runner's credentials may not: deploy/README.md). Any failure is a `StoreError` with a one-line reason
(redacted); the client retries once, with short timeouts, so a store that is down costs an activation
about a second, never a retry storm (service.py then rests the store for `REST_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botburrow.secrets import redact, remember
from services.runner.memory.items import PREFIX, agent_prefix

LIST_PAGE = 1000


class StoreError(Exception):
    """The store cannot be read or written (missing bucket, refused credentials, down); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Listed:
    key: str  # relative to the agent's prefix
    etag: str
    size: int


class MemoryStore(Protocol):
    description: str

    async def listing(self, agent: str) -> list[Listed]: ...

    async def get(self, agent: str, key: str) -> tuple[bytes, str] | None:
        """The object and its etag, or None when there is none."""

    async def put(self, agent: str, key: str, data: bytes) -> str:
        """Write the object; its etag."""

    async def delete(self, agent: str, key: str) -> None: ...

    async def agents(self) -> list[str]:
        """Every agent with something under `memory/`."""

    async def close(self) -> None: ...


def open_store(spec: str, *, endpoint: str | None, access_key: str | None, secret_key: str | None) -> MemoryStore:
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://"):].partition("/")
        return S3Store(bucket, prefix, endpoint=endpoint, access_key=access_key, secret_key=secret_key)
    return DirectoryStore(Path(spec))


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None, access_key: str | None,
                 secret_key: str | None, region: str = "auto") -> None:
        self.bucket, self.root = bucket, (prefix.strip("/") + "/" if prefix.strip("/") else "")
        self.description = f"s3://{bucket}/{self.root}{PREFIX}"
        for name, value in (("memory-access-key", access_key), ("memory-secret-key", secret_key)):
            if value:
                remember(name, value)
        from botburrow.definitions.s3 import client_args  # aioboto3 only for runners with an S3 store

        # Shorter bounds than the definitions': an activation waits on these, and goes on without memory.
        self._args = client_args(endpoint, access_key, secret_key, region,
                                 connect_timeout_s=2, read_timeout_s=10, max_attempts=2)
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        # One client per runner process (issue 18: no client built per activation), opened on first use.
        async with self._lock:
            if self._client is None:
                import aioboto3

                self._client = await self._stack.enter_async_context(aioboto3.Session().client("s3", **self._args))
            return self._client

    def _key(self, agent: str, key: str) -> str:
        return self.root + agent_prefix(agent) + key

    async def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3 = await self._s3()
            return await getattr(s3, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404") and method == "get_object":
                return None
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StoreError(redact(f"{self.description}: {what}: {code}")) from None
        except (BotoCoreError, OSError) as exc:
            raise StoreError(redact(f"{self.description}: {what}: {type(exc).__name__}: {exc}")[:300]) from None

    async def listing(self, agent: str) -> list[Listed]:
        prefix, token = self._key(agent, ""), None
        found: list[Listed] = []
        while True:
            extra: dict[str, str] = {"ContinuationToken": token} if token else {}
            page = await self._call("list", "list_objects_v2", Prefix=prefix, MaxKeys=LIST_PAGE, **extra)
            found += [Listed(o["Key"][len(prefix):], o["ETag"].strip('"'), int(o.get("Size", 0)))
                      for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return found

    async def get(self, agent: str, key: str) -> tuple[bytes, str] | None:
        response = await self._call(f"get {key}", "get_object", Key=self._key(agent, key))
        if response is None:
            return None
        try:
            async with response["Body"] as body:
                return await body.read(), str(response.get("ETag", "")).strip('"')
        except OSError as exc:
            raise StoreError(redact(f"{self.description}: get {key}: {exc}")[:300]) from None

    async def put(self, agent: str, key: str, data: bytes) -> str:
        response = await self._call(f"put {key}", "put_object", Key=self._key(agent, key), Body=data)
        return str(response.get("ETag", "")).strip('"')

    async def delete(self, agent: str, key: str) -> None:
        await self._call(f"delete {key}", "delete_object", Key=self._key(agent, key))

    async def agents(self) -> list[str]:
        prefix, token = self.root + PREFIX, None
        names: list[str] = []
        while True:
            extra: dict[str, str] = {"ContinuationToken": token} if token else {}
            page = await self._call("list agents", "list_objects_v2", Prefix=prefix, Delimiter="/", **extra)
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


class DirectoryStore:
    """Local mode (`botburrow dev`) and benchmarks: the same layout in a directory; etags are mtime-size."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root / PREFIX)

    def _path(self, agent: str, key: str) -> Path:
        return self.root / agent_prefix(agent) / key

    async def listing(self, agent: str) -> list[Listed]:
        return await asyncio.to_thread(self._listing, agent)

    def _listing(self, agent: str) -> list[Listed]:
        base = self.root / agent_prefix(agent)
        if not base.is_dir():
            return []
        return [Listed(p.relative_to(base).as_posix(), _etag(p), p.stat().st_size)
                for p in sorted(base.rglob("*")) if p.is_file() and not p.name.startswith(".")]

    async def get(self, agent: str, key: str) -> tuple[bytes, str] | None:
        path = self._path(agent, key)
        try:
            return await asyncio.to_thread(path.read_bytes), _etag(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.description}: get {key}: {exc.strerror}") from None

    async def put(self, agent: str, key: str, data: bytes) -> str:
        path = self._path(agent, key)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            raise StoreError(f"{self.description}: put {key}: {exc.strerror}") from None
        return _etag(path)

    async def delete(self, agent: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(agent, key).unlink)

    async def agents(self) -> list[str]:
        base = self.root / PREFIX
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    async def close(self) -> None:
        return None


def _etag(path: Path) -> str:
    st = path.stat()
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

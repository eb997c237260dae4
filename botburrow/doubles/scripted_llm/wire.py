"""HTTP details both provider modules share: ids, retry headers, SSE responses."""

from __future__ import annotations

import json
import math
import secrets
import string
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.responses import StreamingResponse

_ALPHABET = string.ascii_letters + string.digits


def dumps(data: Any) -> str:
    """Compact JSON, as the providers put it on `data:` lines."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def retry_headers(retry_after_s: float | None) -> dict[str, str]:
    if retry_after_s is None:
        return {}
    # `retry-after` is whole seconds by RFC 9110; the SDKs read the exact `retry-after-ms` first.
    return {
        "retry-after": str(math.ceil(retry_after_s)),
        "retry-after-ms": str(round(retry_after_s * 1000)),
    }


def sse_response(frames: Iterable[str], headers: dict[str, str] | None = None) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame.encode()

    return StreamingResponse(
        body(),
        media_type="text/event-stream; charset=utf-8",
        headers={"cache-control": "no-cache", **(headers or {})},
    )

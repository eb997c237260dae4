"""The `moltbook` profile's rules that are not routes: Moltbook's error bodies, its id and number
parsing (both end in a database error, so a 500), a post's validation and the feed's sort orders."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from botburrow.doubles.hub_emulator.state import MAX_TITLE_CHARS, Agent, HubFault

MAX_CONTENT_CHARS = 40_000
MAX_DEPTH = 10
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass
class Call:
    request: Request
    agent: Agent | None = None
    key: str = ""
    # X-RateLimit-* for the answer; a per-key limit replaces the overall one's, as in Moltbook.
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def me(self) -> Agent:
        assert self.agent is not None  # authenticated routes guarantee it
        return self.agent


Handler = Callable[[Call], Awaitable[Response]]


def bad_request(message: str) -> HubFault:
    return HubFault(400, message, "BAD_REQUEST")


def not_found(resource: str) -> HubFault:
    return HubFault(404, f"{resource} not found", "NOT_FOUND")


def error_body(fault: HubFault) -> dict[str, Any]:
    """Moltbook's `ApiError` always says `code` and `hint` (null when unset); the generic handlers (an
    unknown route, a database error) have no `code` (our `code=None`)."""
    body: dict[str, Any] = {"success": False, "error": fault.error}
    if fault.code is not None:
        body["code"] = fault.code
        body["hint"] = fault.hint
    elif fault.hint:
        body["hint"] = fault.hint
    return {**body, **fault.extra}


def server_error() -> HubFault:
    return HubFault(500, "Internal server error", None, "Please try again later")


def uuid_param(value: str | None) -> str:
    """An id as PostgreSQL takes it: anything but a UUID is a database error, so a 500."""
    try:
        uuid.UUID(str(value))
    except ValueError:
        raise server_error() from None
    return str(value)


def int_query(request: Request, name: str, default: int) -> int:
    """`parseInt`: a value that is not a number makes the SQL LIMIT/OFFSET NaN, a database error."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw.strip().split(".")[0])
    except ValueError:
        raise server_error() from None


def check_post(title: str | None, content: str | None, url: str | None) -> None:
    """PostService.create's rules: a title; content or url, never both; a url that parses."""
    if not title or not title.strip():
        raise bad_request("Title is required")
    if len(title) > MAX_TITLE_CHARS:
        raise bad_request(f"Title must be {MAX_TITLE_CHARS} characters or less")
    if not content and not url:
        raise bad_request("Either content or url is required")
    if content and url:
        raise bad_request("Post cannot have both content and url")
    if content and len(content) > MAX_CONTENT_CHARS:
        raise bad_request(f"Content must be {MAX_CONTENT_CHARS} characters or less")
    if url and "://" not in url:
        raise bad_request("Invalid URL format")


def sort_posts(posts: list[Any], sort: str) -> list[Any]:
    """hot (Reddit's: log of the score plus age), new, top, rising (score over age to the 1.5)."""
    now_s = time.time()

    def epoch_s(post: Any) -> float:
        return datetime.fromisoformat(post.created_at.replace("Z", "+00:00")).timestamp()

    if sort == "new":
        return sorted(posts, key=epoch_s, reverse=True)
    if sort == "top":
        return sorted(posts, key=lambda p: (p.score, epoch_s(p)), reverse=True)
    if sort == "rising":
        return sorted(posts, key=lambda p: (p.score + 1) / ((now_s - epoch_s(p)) / 3600 + 2) ** 1.5, reverse=True)
    return sorted(posts, key=lambda p: math.log10(max(abs(p.score), 1)) * (1 if p.score > 0 else -1 if p.score < 0
                                                                            else 0) + epoch_s(p) / 45000,
                  reverse=True)

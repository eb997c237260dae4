"""The Botburrow Hub API's shapes (contract §1). Unknown fields are ignored, as the Hub may add some; a null
where a field has a default takes the default, and one item that does not fit is dropped from its list
(`botburrow.hub.decode`), so Moltbook's answers fit these structs too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec


class HubStruct(msgspec.Struct, frozen=True, kw_only=True):
    """Base for Hub shapes: tolerant of extra fields, strict about the types of known ones."""


class Author(HubStruct, frozen=True, kw_only=True):
    id: str = ""
    name: str = ""
    # `human` or an agent tool type (`native`, `claude-code`, ...).
    type: str = "human"


# The notification types of the Hub's API (contract §4); a notification of another type is kept and skipped.
NOTIFICATION_TYPES = ("mention", "dm", "reply", "comment", "thread_update", "follow")


class Notification(HubStruct, frozen=True, kw_only=True):
    id: str
    # One of NOTIFICATION_TYPES; unknown types are kept and skipped.
    type: str
    post_id: str | None = None
    comment_id: str | None = None
    dm_id: str | None = None
    from_: Author = msgspec.field(name="from", default_factory=Author)
    content: str = ""
    created_at: str = ""
    read: bool = False


class Post(HubStruct, frozen=True, kw_only=True):
    id: str
    title: str = ""
    # "" for a link post (Moltbook sends `content: null` and the link in `url`).
    content: str = ""
    url: str | None = None
    submolt: str = ""
    author_name: str = ""
    author_type: str | None = None
    score: int = 0
    comment_count: int = 0
    created_at: str = ""


class Comment(HubStruct, frozen=True, kw_only=True):
    id: str
    content: str = ""
    parent_id: str | None = None
    author_name: str = ""
    author_type: str | None = None
    score: int = 0
    depth: int = 0
    created_at: str = ""
    replies: list[Comment] = msgspec.field(default_factory=list)
    # Not the Hub's: how many comments below this one the client cut off (a tree deeper than it decodes).
    replies_omitted: int = 0


def walk_comments(comments: Iterable[Comment]) -> Iterator[tuple[Comment, int]]:
    """Every comment of a tree with its depth (0 at the top), in reading order, without recursion: a
    reply chain a thousand deep must not overflow the stack of whoever reads it."""
    stack: list[tuple[Comment, int]] = [(c, 0) for c in reversed(list(comments))]
    while stack:
        comment, depth = stack.pop()
        yield comment, depth
        stack.extend((r, depth + 1) for r in reversed(comment.replies))


class AgentProfile(HubStruct, frozen=True, kw_only=True):
    id: str = ""
    name: str = ""
    description: str = ""
    type: str | None = None


class ToolBudget(HubStruct, frozen=True, kw_only=True):
    # `healthy` (< 80 % used), `warning`, `throttle` (>= 90), `critical` (>= 100).
    status: str = "healthy"
    used_pct: float = 0.0
    remaining_usd: float | None = None
    recommendation: str | None = None


class BudgetHealth(HubStruct, frozen=True, kw_only=True):
    tools: dict[str, ToolBudget] = msgspec.field(default_factory=dict)
    collective: dict[str, Any] = msgspec.field(default_factory=dict)


class NotificationPage(HubStruct, frozen=True, kw_only=True):
    notifications: list[Notification] = msgspec.field(default_factory=list)
    unread_count: int = 0
    next_cursor: str | None = None


class SearchResults(HubStruct, frozen=True, kw_only=True):
    posts: list[Post] = msgspec.field(default_factory=list)
    agents: list[dict[str, Any]] = msgspec.field(default_factory=list)
    submolts: list[dict[str, Any]] = msgspec.field(default_factory=list)


def clip(text: str, max_chars: int) -> str:
    """`text`, or its first `max_chars` characters and a marker saying how many were left out: the one
    way Hub text is cut, wherever a bound applies (ingest, the runner's context and hub tools)."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… [cut: {len(text) - max_chars} more characters not shown]"

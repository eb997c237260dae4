"""Decode Hub answers into the shared structs, tolerant of the Hub's variations (contract §1).

Lists come wrapped in `posts`, `data`, `comments` or `notifications`; single objects in `post`,
`comment` or `agent`, or flat. Moltbook writes a community as `{"name": ...}` or `m/<name>` and an
author as `{"author": {"name", "type"}}`: both are normalised to the flat fields of the structs.

Comment trees are walked without recursion and cut at MAX_COMMENT_DEPTH levels (a cut comment says how
many replies it lost in `replies_omitted`): a reply chain a thousand deep must neither overflow the
stack here nor reach the struct conversion, which recurses. An answer that does not fit raises
`HubDecodeError`, a `HubBadResponse`: never retried, the work that needed it fails once.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from botburrow.hub.errors import HubBadResponse
from schemas.hub import (
    AgentProfile,
    BudgetHealth,
    Comment,
    Notification,
    NotificationPage,
    Post,
    SearchResults,
)

T = TypeVar("T")
# Levels of a comment tree kept (the runner shows fewer: HUB_THREAD_MAX_DEPTH). msgspec converts a
# level with two nested calls, so 100 levels stay far inside Python's recursion limit.
MAX_COMMENT_DEPTH = 100


class HubDecodeError(HubBadResponse, ValueError):
    """An answer that does not fit its shape."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def community(name: str) -> str:
    """`m/general` -> `general`: the API takes the bare name."""
    name = name.strip()
    return name[2:] if name.startswith("m/") else name


def _convert(obj: Any, kind: type[T]) -> T:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise HubDecodeError(f"unexpected {kind.__name__} shape: {exc}") from None


def _author_fields(raw: dict[str, Any]) -> None:
    author = raw.get("author")
    if isinstance(author, dict):
        raw.setdefault("author_name", author.get("name", ""))
        if author.get("type") is not None:
            raw.setdefault("author_type", author.get("type"))
    elif isinstance(author, str):
        raw.setdefault("author_name", author)


def _post_dict(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    submolt = raw.get("submolt")
    if isinstance(submolt, dict):
        submolt = submolt.get("name", "")
    if isinstance(submolt, str):
        raw["submolt"] = community(submolt)
    _author_fields(raw)
    return raw


def _comment_fields(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    _author_fields(raw)
    return raw


def _count_tree(items: list[Any]) -> int:
    """How many comments a list of replies holds, at every depth."""
    total, stack = 0, list(items)
    while stack:
        item = stack.pop()
        total += 1
        if isinstance(item, dict) and isinstance(item.get("replies"), list):
            stack.extend(item["replies"])
    return total


def _comment_dict(raw: Any) -> Any:
    """A comment and its replies normalised, cut below MAX_COMMENT_DEPTH levels, without recursion."""
    root = _comment_fields(raw)
    stack = [(root, 0)] if isinstance(root, dict) else []
    while stack:
        node, depth = stack.pop()
        replies = node.get("replies")
        if not isinstance(replies, list):
            continue  # absent (none), or the wrong type: the conversion says so
        if depth + 1 >= MAX_COMMENT_DEPTH:
            node["replies"], node["replies_omitted"] = [], _count_tree(replies)
            continue
        node["replies"] = [_comment_fields(r) for r in replies]
        stack.extend((r, depth + 1) for r in node["replies"] if isinstance(r, dict))
    return root


def _items(body: Any, *keys: str) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in (*keys, "data"):
            value = body.get(key)
            if isinstance(value, list):
                return value
    raise HubDecodeError(f"expected a list under one of {[*keys, 'data']}")


def _single(body: Any, key: str) -> Any:
    if isinstance(body, dict) and isinstance(body.get(key), dict):
        return body[key]
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        return body["data"]
    return body


def posts(body: Any) -> list[Post]:
    return [_convert(_post_dict(p), Post) for p in _items(body, "posts")]


def post(body: Any) -> Post:
    return _convert(_post_dict(_single(body, "post")), Post)


def comments(body: Any) -> list[Comment]:
    return [_convert(_comment_dict(c), Comment) for c in _items(body, "comments")]


def comment(body: Any) -> Comment:
    return _convert(_comment_dict(_single(body, "comment")), Comment)


def notification_page(body: Any) -> NotificationPage:
    items = [_convert(n, Notification) for n in _items(body, "notifications")]
    meta = body if isinstance(body, dict) else {}
    unread = meta.get("unread_count")
    if not isinstance(unread, int):
        unread = sum(1 for n in items if not n.read)
    cursor = meta.get("next_cursor")
    return NotificationPage(notifications=items, unread_count=unread,
                            next_cursor=cursor if isinstance(cursor, str) else None)


def profile(body: Any) -> AgentProfile:
    return _convert(_single(body, "agent"), AgentProfile)


def search_results(body: Any) -> SearchResults:
    meta = body if isinstance(body, dict) else {}
    found = posts(body) if isinstance(meta.get("posts") or meta.get("data"), list) else []
    return SearchResults(
        posts=found,
        agents=[a for a in meta.get("agents") or [] if isinstance(a, dict)],
        submolts=[s for s in meta.get("submolts") or [] if isinstance(s, dict)],
    )


def budget_health(body: Any) -> BudgetHealth:
    return _convert(_single(body, "budget"), BudgetHealth)


def count(body: Any, *keys: str) -> int:
    if isinstance(body, dict):
        for key in keys:
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    raise HubDecodeError(f"expected an integer under one of {list(keys)}")

"""Decode Hub answers into the shared structs, tolerant of the Hub's variations (SPEC §1).

Lists come wrapped in `posts`, `data`, `comments` or `notifications`; single objects in `post`,
`comment` or `agent`, or flat. Moltbook writes a community as `{"name": ...}` or `m/<name>` and an
author as `{"author": {"name", "type"}}`: both are normalised to the flat fields of the structs.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from botburrow.schemas.hub import (
    AgentProfile,
    BudgetHealth,
    Comment,
    Notification,
    NotificationPage,
    Post,
    SearchResults,
)

T = TypeVar("T")


class HubDecodeError(ValueError):
    """An answer that does not fit its shape."""


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


def _comment_dict(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    _author_fields(raw)
    if isinstance(raw.get("replies"), list):
        raw["replies"] = [_comment_dict(r) for r in raw["replies"]]
    return raw


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

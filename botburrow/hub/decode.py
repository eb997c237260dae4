"""Decode Hub answers into the shared structs, tolerant of the Hub's variations (contract §1).

Both the Botburrow and the Moltbook shapes are read. Lists come wrapped in `posts`, `data` (Moltbook's
`{"success": true, "data": [...], "pagination": {...}}`), `comments` or `notifications`; single
objects in `post`, `comment` or `agent`, or flat. A community is `{"name": ...}`, `m/<name>` or bare;
an author is `{"author": {"name", "type"}}`, `"author": "<name>"` or flat `author_name`: all are
normalised to the flat fields of the structs.

Tolerant, item by item: a null where the struct has a default (`content: null` on a Moltbook link
post, `description: null` on a profile) takes the default; a number sent as a string is read as a
number; unknown fields are ignored; fields a create response leaves out (its author) keep their
defaults. In a list, an item that still does not fit (no id, a string where an object belongs) is
dropped with a warning and counted (`botburrow_hub_items_dropped_total{kind}`): one odd item never
fails the page. A single answer that does not fit still fails its call.

Comment trees are walked without recursion and cut at MAX_COMMENT_DEPTH levels (a cut comment says how
many replies it lost in `replies_omitted`): a reply chain a thousand deep must neither overflow the
stack here nor reach the struct conversion, which recurses. An answer that does not fit raises
`HubDecodeError`, a `HubBadResponse`: never retried, the work that needed it fails once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import msgspec
from prometheus_client import Counter

from botburrow.hub.errors import HubBadResponse
from schemas.hub import (
    AgentProfile,
    Author,
    BudgetHealth,
    Comment,
    Notification,
    NotificationPage,
    Post,
    SearchResults,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
DROPPED = Counter("botburrow_hub_items_dropped_total", "Items of a Hub list answer that did not fit and were "
                  "dropped (the rest of the page was kept)", ["kind"])
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


@cache
def _not_nullable(kind: type[msgspec.Struct]) -> frozenset[str]:
    """The wire names of a struct's fields that have a default and do not take None."""
    names = set()
    for f in msgspec.structs.fields(kind):
        if not f.required and f.type is not Any and type(None) not in getattr(f.type, "__args__", ()):
            names.add(f.encode_name)
    return frozenset(names)


def _without_nulls(obj: Any, kind: type[msgspec.Struct]) -> Any:
    """A null where the struct has a default means "not given": the default holds."""
    if not isinstance(obj, dict):
        return obj
    drop = _not_nullable(kind)
    return {k: v for k, v in obj.items() if v is not None or k not in drop}


def _convert(obj: Any, kind: type[T]) -> T:
    try:
        return msgspec.convert(obj, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise HubDecodeError(f"unexpected {kind.__name__} shape: {exc}") from None


def _each(items: list[Any], kind: str, convert: Callable[[Any], T]) -> list[T]:
    """Every item that fits; one that does not is dropped, logged and counted, never the page."""
    kept: list[T] = []
    for item in items:
        try:
            kept.append(convert(item))
        except (HubDecodeError, RecursionError) as exc:
            DROPPED.labels(kind=kind).inc()
            item_id = item.get("id") if isinstance(item, dict) else None
            log.warning("odd item in a Hub answer dropped", extra={
                "kind": kind, "item_id": str(item_id)[:80] if item_id is not None else None,
                "error": str(exc)[:300]})
    return kept


def _author_fields(raw: dict[str, Any]) -> None:
    author = raw.get("author")
    if raw.get("author_name") is None:
        raw.pop("author_name", None)  # null or absent: filled from `author` if it says, else the default
    if isinstance(author, dict):
        if isinstance(author.get("name"), str):
            raw.setdefault("author_name", author["name"])
        if isinstance(author.get("type"), str):
            raw.setdefault("author_type", author["type"])
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
    return _without_nulls(raw, Post)


def _comment_fields(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    _author_fields(raw)
    return _without_nulls(raw, Comment)


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
        # A reply with no id cannot be answered or referred to: dropped (counted), its siblings kept.
        fit = [r for r in replies if isinstance(r, dict) and isinstance(r.get("id"), str)]
        if len(fit) < len(replies):
            DROPPED.labels(kind="comment").inc(len(replies) - len(fit))
        node["replies"] = [_comment_fields(r) for r in fit]
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


def _post(raw: Any) -> Post:
    return _convert(_post_dict(raw), Post)


def _comment(raw: Any) -> Comment:
    return _convert(_comment_dict(raw), Comment)


def _notification(raw: Any) -> Notification:
    if isinstance(raw, dict):
        raw = _without_nulls(raw, Notification)
        if isinstance(raw.get("from"), dict):
            raw["from"] = _without_nulls(raw["from"], Author)
    return _convert(raw, Notification)


def posts(body: Any) -> list[Post]:
    return _each(_items(body, "posts"), "post", _post)


def post(body: Any) -> Post:
    return _post(_single(body, "post"))


def comments(body: Any) -> list[Comment]:
    return _each(_items(body, "comments"), "comment", _comment)


def comment(body: Any) -> Comment:
    return _comment(_single(body, "comment"))


def notification_page(body: Any) -> NotificationPage:
    items = _each(_items(body, "notifications"), "notification", _notification)
    meta = body if isinstance(body, dict) else {}
    unread = meta.get("unread_count")
    if not isinstance(unread, int):
        unread = sum(1 for n in items if not n.read)
    cursor = meta.get("next_cursor")
    return NotificationPage(notifications=items, unread_count=unread,
                            next_cursor=cursor if isinstance(cursor, str) else None)


def profile(body: Any) -> AgentProfile:
    return _convert(_without_nulls(_single(body, "agent"), AgentProfile), AgentProfile)


def search_results(body: Any) -> SearchResults:
    meta = body if isinstance(body, dict) else {}
    found = posts(body) if isinstance(meta.get("posts") or meta.get("data"), list) else []
    return SearchResults(
        posts=found,
        agents=[a for a in meta.get("agents") or [] if isinstance(a, dict)],  # kept raw: no struct to fit
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

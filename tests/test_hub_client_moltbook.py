"""HubClient reads the answers of a Moltbook-compatible Hub (the Express API of ardenone/moltbook-org).

Served by an httpx.MockTransport with answers shaped like that API's (utils/response.js, the services'
SELECTs): its envelope, link posts with `content: null`, flat `author_name`, create responses without
author fields, `description: null`, ids as UUIDs. One odd item is dropped and counted, never the page.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY

from botburrow.hub import HubClient
from botburrow.hub.errors import HubBadResponse

KEY = "moltbook_" + "ab" * 32
P1, P2, P3 = ("0b9d6f1e-1c2a-4c1e-9a55-3f1f0d6e7a01", "0b9d6f1e-1c2a-4c1e-9a55-3f1f0d6e7a02",
              "0b9d6f1e-1c2a-4c1e-9a55-3f1f0d6e7a03")
C1, C2 = "5e0c3a7b-8d1f-4b2e-b6a4-1a2b3c4d5e01", "5e0c3a7b-8d1f-4b2e-b6a4-1a2b3c4d5e02"
AT = "2026-12-04T10:00:00.000Z"


def text_post(post_id: str, title: str, content: str, author: str = "alice") -> dict[str, Any]:
    return {"id": post_id, "title": title, "content": content, "url": None, "submolt": "general",
            "post_type": "text", "score": 3, "comment_count": 1, "created_at": AT, "author_name": author,
            "author_display_name": None}


def link_post(post_id: str, title: str) -> dict[str, Any]:
    return {**text_post(post_id, title, ""), "content": None, "url": "https://example.org/a", "post_type": "link"}


FEED = {"success": True, "data": [text_post(P1, "Hello", "hi @helper_bot"), link_post(P2, "@helper_bot look"),
                                  text_post(P3, "Numbers", "as strings") | {"score": "7"}],
        "pagination": {"count": 3, "limit": 25, "offset": 0, "hasMore": False}}
COMMENTS = {"success": True, "comments": [
    {"id": C1, "content": "top", "score": 1, "upvotes": 1, "downvotes": 0, "parent_id": None, "depth": 0,
     "created_at": AT, "author_name": "alice", "author_display_name": None,
     "replies": [{"id": C2, "content": "@helper_bot reply", "score": 0, "upvotes": 0, "downvotes": 0,
                  "parent_id": C1, "depth": 1, "created_at": AT, "author_name": "helper_bot",
                  "author_display_name": None, "replies": []}]}]}
ANSWERS: dict[tuple[str, str], tuple[int, Any]] = {
    ("GET", "/api/v1/posts"): (200, FEED),
    ("GET", f"/api/v1/posts/{P2}"): (200, {"success": True, "post": link_post(P2, "@helper_bot look")
                                           | {"userVote": None, "author_id": "x", "submolt_id": "y"}}),
    ("GET", f"/api/v1/posts/{P1}/comments"): (200, COMMENTS),
    # Created: RETURNING id, content, score, depth, created_at (no author, no parent_id).
    ("POST", f"/api/v1/posts/{P1}/comments"): (201, {"success": True, "comment": {
        "id": "5e0c3a7b-8d1f-4b2e-b6a4-1a2b3c4d5e09", "content": "thanks", "score": 0, "depth": 1,
        "created_at": AT}}),
    ("POST", "/api/v1/posts"): (201, {"success": True, "post": {
        "id": "0b9d6f1e-1c2a-4c1e-9a55-3f1f0d6e7a09", "title": "t", "content": "c", "url": None,
        "submolt": "general", "post_type": "text", "score": 0, "comment_count": 0, "created_at": AT}}),
    ("GET", "/api/v1/agents/me"): (200, {"success": True, "agent": {
        "id": "a-1", "name": "helper_bot", "displayName": None, "description": None, "karma": 0,
        "status": "active", "isClaimed": False, "createdAt": AT}}),
    ("GET", "/api/v1/search"): (200, {"success": True, "posts": [
        {k: v for k, v in link_post(P2, "@helper_bot look").items() if k not in ("post_type", "author_display_name")}],
        "agents": [{"id": "a-1", "name": "helper_bot", "display_name": None, "description": None, "karma": 0,
                    "is_claimed": False}],
        "submolts": [{"id": "s-1", "name": "general", "display_name": "General", "description": None,
                      "subscriber_count": 2}]}),
}


@pytest.fixture
async def moltbook() -> Any:
    seen: list[tuple[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        status, body = ANSWERS.get((request.method, request.url.path), (404, {
            "success": False, "error": "Endpoint not found",
            "hint": f"{request.method} {request.url.path} does not exist. Check the API documentation."}))
        return httpx.Response(status, content=msgspec.json.encode(body))

    client = HubClient("http://moltbook.test", transport=httpx.MockTransport(handle))
    try:
        yield client
    finally:
        await client.aclose()


def dropped(kind: str) -> float:
    return REGISTRY.get_sample_value("botburrow_hub_items_dropped_total", {"kind": kind}) or 0.0


async def test_the_feed_with_a_link_post_and_numbers_as_strings(moltbook: HubClient) -> None:
    posts = await moltbook.list_posts(KEY, None, sort="new")
    assert [p.id for p in posts] == [P1, P2, P3]
    link = posts[1]
    assert (link.content, link.url, link.title, link.author_name) == ("", "https://example.org/a",
                                                                      "@helper_bot look", "alice")
    assert posts[0].author_name == "alice" and posts[2].score == 7


async def test_a_single_post_comments_and_me(moltbook: HubClient) -> None:
    post = await moltbook.get_post(KEY, P2)
    assert (post.id, post.content, post.url) == (P2, "", "https://example.org/a")
    [top] = await moltbook.get_comments(KEY, P1)
    assert (top.author_name, top.parent_id) == ("alice", None)
    assert [(r.id, r.parent_id, r.author_name, r.depth) for r in top.replies] == [(C2, C1, "helper_bot", 1)]
    me = await moltbook.me(KEY)
    assert (me.name, me.description) == ("helper_bot", "")


async def test_create_answers_without_author_fields(moltbook: HubClient) -> None:
    comment = await moltbook.create_comment(KEY, P1, "thanks", parent_id=C1)
    assert comment.id.endswith("e09") and comment.author_name == "" and comment.depth == 1
    post = await moltbook.create_post(KEY, "m/general", "t", "c")
    assert post.id.endswith("a09") and post.author_name == "" and post.submolt == "general"


async def test_search_results(moltbook: HubClient) -> None:
    found = await moltbook.search(KEY, "helper")
    assert [(p.id, p.content, p.url) for p in found.posts] == [(P2, "", "https://example.org/a")]
    assert found.agents[0]["name"] == "helper_bot" and found.submolts[0]["name"] == "general"


@pytest.mark.parametrize("odd", [
    {"title": "no id"},
    {"id": None, "title": "null id"},
    {"id": "x", "score": {"up": 1}},  # an object where a number belongs
    "a string where a post belongs",
])
async def test_one_odd_post_is_dropped_and_counted_never_the_page(odd: Any) -> None:
    page = {"success": True, "data": [text_post(P1, "a", "b"), odd, link_post(P2, "c")]}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=msgspec.json.encode(page))

    client = HubClient("http://moltbook.test", transport=httpx.MockTransport(handle))
    before = dropped("post")
    try:
        assert [p.id for p in await client.list_posts(KEY, "general")] == [P1, P2]
        assert [p.id for p in (await client.search(KEY, "ab")).posts] == [P1, P2]
    finally:
        await client.aclose()
    assert dropped("post") == before + 2


async def test_an_odd_reply_is_dropped_its_siblings_kept() -> None:
    tree = {"comments": [{"id": C1, "content": None, "replies": [{"content": "no id"}, {"id": C2, "content": "ok"}]},
                         {"id": 7, "content": "an int id"}]}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=msgspec.json.encode(tree))

    client = HubClient("http://moltbook.test", transport=httpx.MockTransport(handle))
    before = dropped("comment")
    try:
        [top] = await client.get_comments(KEY, P1)
    finally:
        await client.aclose()
    assert (top.id, top.content, [r.id for r in top.replies]) == (C1, "", [C2])
    assert dropped("comment") == before + 2


async def test_a_single_answer_that_does_not_fit_still_fails_its_call() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, content=b'{"success": true, "comment": {"content": "no id"}}')

    client = HubClient("http://moltbook.test", transport=httpx.MockTransport(handle))
    try:
        with pytest.raises(HubBadResponse) as raised:
            await client.create_comment(KEY, P1, "x")
    finally:
        await client.aclose()
    assert "/comments" in str(raised.value) and KEY not in str(raised.value)

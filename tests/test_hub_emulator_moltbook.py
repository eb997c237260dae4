"""The emulator's `moltbook` profile over real HTTP: each way it differs from the Botburrow Hub, as the
Moltbook API's source does it (routes, envelopes, ids, names, keys, link posts, limits)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.hub_emulator.state import HubFault
from botburrow.hub import HubClient, HubEndpointMissing, HubUnavailable

SYSTEM_KEY = "test-hub-system-key"
KEY_RE = re.compile(r"moltbook_[0-9a-f]{64}")


@pytest.fixture
async def molt() -> AsyncIterator[HubEmulator]:
    emulator = HubEmulator(system_key=SYSTEM_KEY, profile="moltbook")
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
async def http(molt: HubEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=molt.api_url) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_routes_it_does_not_have_answer_endpoint_not_found(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    key = molt.add_agent("helper")
    absent = [("GET", "/notifications"), ("POST", "/notifications/read"), ("GET", "/system/budget-health"),
              ("POST", "/system/consumption"), ("POST", "/agents/dm/conversations/abc/send"), ("PUT", "/posts")]
    for method, path in absent:
        answer = await http.request(method, path, headers=auth(key), json={})
        assert answer.status_code == 404, path
        assert answer.json() == {"success": False, "error": "Endpoint not found",
                                 "hint": f"{method} {path} does not exist. Check the API documentation."}
        assert answer.headers["X-RateLimit-Limit"] == "100"  # the overall limit counted it first
    assert (await http.get("/health")).json()["status"] == "healthy"
    assert molt.notifications_of("helper") == []
    async with httpx.AsyncClient(base_url=molt.url) as root:
        outside = await root.get("/api/notifications")
        assert outside.status_code == 404 and outside.json()["error"] == "Endpoint not found"


async def test_the_default_profile_keeps_its_answers(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("research-agent")  # a dash is fine there
    post = hub_emulator.add_post("Thread", "@research-agent hi")
    assert post.id.startswith("post_") and key.startswith("bb_")
    assert [n.type for n in hub_emulator.notifications_of("research-agent")] == ["mention"]
    async with httpx.AsyncClient(base_url=hub_emulator.api_url) as http:
        unknown = await http.get("/nowhere", headers=auth(key))
        assert unknown.status_code == 404 and unknown.text == "Not Found"  # Starlette's, as before
        assert "X-RateLimit-Limit" not in unknown.headers
        listed = (await http.get("/posts", headers=auth(key))).json()
        assert [p["id"] for p in listed["posts"]] == [post.id] and "data" not in listed


async def test_names_keys_registration_and_me(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    system = auth(SYSTEM_KEY)
    async with httpx.AsyncClient(base_url=molt.url) as root:
        refused = await root.post("/admin/agents", json={"name": "research-agent"}, headers=system)
        assert refused.status_code == 400 and "underscores" in refused.json()["error"]
        bad_key = await root.post("/admin/agents", json={"name": "research_agent", "key": "k-123456"}, headers=system)
        assert bad_key.status_code == 400
        made = await root.post("/admin/agents", json={"name": "research_agent"}, headers=system)
    assert made.status_code == 201 and KEY_RE.fullmatch(made.json()["api_key"])
    dashed = await http.post("/agents/register", json={"name": "code-review"})
    assert dashed.status_code == 400 and dashed.json()["code"] == "BAD_REQUEST" and dashed.json()["hint"] is None
    registered = await http.post("/agents/register", json={"name": "Code_Review", "description": "reviews"})
    assert registered.status_code == 201
    key = registered.json()["agent"]["api_key"]
    assert KEY_RE.fullmatch(key) and registered.json()["agent"]["claim_url"].startswith("https://")
    me = (await http.get("/agents/me", headers=auth(key))).json()
    assert me["success"] is True and set(me["agent"]) == {"id", "name", "displayName", "description", "karma",
                                                          "status", "isClaimed", "createdAt"}
    assert (me["agent"]["name"], me["agent"]["displayName"], me["agent"]["isClaimed"]) == (
        "code_review", "Code_Review", False)
    uuid.UUID(me["agent"]["id"])
    assert (await http.get("/agents/status", headers=auth(key))).json() == {"success": True,
                                                                             "status": "pending_claim"}
    taken = await http.post("/agents/register", json={"name": "code_review"})
    assert taken.status_code == 409 and taken.json()["code"] == "CONFLICT"


async def test_auth_answers(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    missing = await http.get("/agents/me")
    assert missing.status_code == 401 and missing.json()["error"] == "No authorization token provided"
    assert (await http.get("/agents/me", headers=auth(SYSTEM_KEY))).json()["error"] == "Invalid token format"
    unknown = await http.get("/agents/me", headers=auth("moltbook_" + "0" * 64))
    assert unknown.status_code == 401 and unknown.json()["error"] == "Invalid or expired token"


async def test_posts_link_posts_and_envelopes(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    ann, bob = molt.add_agent("ann_b"), molt.add_agent("bob_c")
    text = await http.post("/posts", json={"submolt": "general", "title": "Hi", "content": "hello"},
                           headers=auth(ann))
    assert text.status_code == 201
    created = text.json()["post"]
    assert "author_name" not in created and (created["post_type"], created["url"]) == ("text", None)
    link = await http.post("/posts", json={"submolt": "general", "title": "look @ann_b", "url": "https://x.test/a"},
                           headers=auth(bob))
    assert link.json()["post"]["content"] is None and link.json()["post"]["post_type"] == "link"
    both = await http.post("/posts", json={"submolt": "general", "title": "t", "content": "c", "url": "https://x"},
                           headers=auth(molt.add_agent("cat_d")))
    assert both.status_code == 400
    assert both.json() == {"success": False, "error": "Post cannot have both content and url",
                           "code": "BAD_REQUEST", "hint": None}
    nowhere = await http.post("/posts", json={"submolt": "nowhere", "title": "t", "content": "c"},
                              headers=auth(molt.add_agent("dan_e")))
    assert nowhere.status_code == 404 and nowhere.json()["error"] == "Submolt not found"
    page = (await http.get("/posts?sort=new&limit=1", headers=auth(ann))).json()
    assert [p["title"] for p in page["data"]] == ["look @ann_b"] and page["data"][0]["author_name"] == "bob_c"
    assert page["pagination"] == {"count": 1, "limit": 1, "offset": 0, "hasMore": True}
    assert "posts" not in page and "author_type" not in page["data"][0]
    one = (await http.get(f"/posts/{link.json()['post']['id']}", headers=auth(ann))).json()["post"]
    assert (one["content"], one["url"], one["userVote"], one["author_name"]) == (None, "https://x.test/a", None,
                                                                                 "bob_c")
    assert molt.notifications_of("ann_b") == []  # a mention creates nothing there


async def test_a_malformed_id_is_a_500_and_an_unknown_one_a_404(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    key = molt.add_agent("helper")
    post = molt.add_post("Thread", "body")
    uuid.UUID(post.id)
    server_error = {"success": False, "error": "Internal server error", "hint": "Please try again later"}
    for path in ("/posts/post_abc", "/posts/123/comments", "/comments/cmt_1"):
        answer = await http.get(path, headers=auth(key))
        assert (answer.status_code, answer.json()) == (500, server_error), path
    bad_parent = await http.post(f"/posts/{post.id}/comments", json={"content": "x", "parent_id": "cmt_1"},
                                 headers=auth(key))
    assert bad_parent.status_code == 500
    unknown = str(uuid.uuid4())
    missing = await http.get(f"/posts/{unknown}", headers=auth(key))
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    # Moltbook lists comments without looking the post up: an unknown post simply has none.
    assert (await http.get(f"/posts/{unknown}/comments", headers=auth(key))).json() == {"success": True,
                                                                                       "comments": []}


async def test_admin_seeds_underscore_agents_mentions_link_posts_and_replies(molt: HubEmulator,
                                                                            http: httpx.AsyncClient) -> None:
    system = auth(SYSTEM_KEY)
    async with httpx.AsyncClient(base_url=molt.url) as root:
        keys = {name: (await root.post("/admin/agents", json={"name": name}, headers=system)).json()["api_key"]
                for name in ("research_agent", "code_review")}
        post = (await root.post("/admin/posts", json={"title": "Q", "content": "@research_agent any idea?",
                                                      "author": "alice"}, headers=system)).json()["post"]
        link = await root.post("/admin/posts", json={"title": "@code_review see this", "url": "https://x.test/b"},
                               headers=system)
        assert link.status_code == 201 and link.json()["url"] == "https://x.test/b"
        top = (await root.post("/admin/comments", json={"post_id": post["id"], "content": "first",
                                                        "author": "research_agent"}, headers=system)).json()
        reply = await root.post("/admin/comments", json={"post_id": post["id"], "content": "why?",
                                                         "parent_id": top["comment"]["id"], "author": "bob"},
                                headers=system)
        assert reply.status_code == 201
        no_mention = await root.post("/admin/mention", json={"agent": "research_agent", "content": "hi"},
                                     headers=system)
        assert no_mention.status_code == 400 and no_mention.json()["code"] == "NO_NOTIFICATIONS"
    with pytest.raises(HubFault):
        molt.dm("research_agent", "psst")
    tree = (await http.get(f"/posts/{post['id']}/comments", headers=auth(keys["code_review"]))).json()
    [root_comment] = tree["comments"]
    assert (root_comment["author_name"], root_comment["parent_id"], root_comment["depth"]) == (
        "research_agent", None, 0)
    [child] = root_comment["replies"]
    assert (child["content"], child["parent_id"], child["depth"], child["author_name"]) == (
        "why?", top["comment"]["id"], 1, "bob")
    assert "author_type" not in child and child["replies"] == []
    answer = await http.post(f"/posts/{post['id']}/comments", json={"content": "because", "parent_id": child["id"]},
                             headers=auth(keys["research_agent"]))
    assert answer.status_code == 201 and set(answer.json()["comment"]) == {"id", "content", "score", "depth",
                                                                           "created_at"}
    assert answer.json()["comment"]["depth"] == 2
    full = (await http.get(f"/comments/{answer.json()['comment']['id']}", headers=auth(keys["code_review"]))).json()
    assert (full["comment"]["parent_id"], full["comment"]["post_id"]) == (child["id"], post["id"])


async def test_search_shape(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    key = molt.add_agent("gopher_fan", description="likes go")
    molt.add_post("gopher news", url="https://go.dev", author="gopher_fan")
    molt.add_post("other", "all about gophers", score=5)
    assert (await http.get("/search?q=g", headers=auth(key))).json() == {"success": True, "posts": [],
                                                                        "agents": [], "submolts": []}
    found = (await http.get("/search?q=gopher", headers=auth(key))).json()
    assert [(p["title"], p["content"], p["url"]) for p in found["posts"]] == [
        ("other", "all about gophers", None), ("gopher news", None, "https://go.dev")]
    assert set(found["posts"][0]) == {"id", "title", "content", "url", "submolt", "score", "comment_count",
                                      "created_at", "author_name"}
    assert [a["name"] for a in found["agents"]] == ["gopher_fan"] and "is_claimed" in found["agents"][0]


async def test_rate_limits_per_address_and_per_key() -> None:
    molt = HubEmulator(system_key=SYSTEM_KEY, profile="moltbook",
                       limits={"requests": (4, 60.0), "comments": (2, 3600.0)})
    await molt.start()
    try:
        ann, bob = molt.add_agent("ann_b"), molt.add_agent("bob_c")
        async with httpx.AsyncClient(base_url=molt.api_url) as http:
            for key in (ann, bob, ann):
                assert (await http.get("/agents/me", headers=auth(key))).status_code == 200
            assert (await http.get("/nowhere")).status_code == 404  # counted before the route is known
            over = await http.get("/agents/me", headers=auth(bob))  # another key, the same address
            assert over.status_code == 429 and over.json()["code"] == "RATE_LIMITED"
            assert over.headers["X-RateLimit-Limit"] == "4" and over.headers["X-RateLimit-Remaining"] == "0"
            retry_after_s = int(over.headers["Retry-After"])
            assert 1 <= retry_after_s <= 60 and over.json()["retryAfter"] == retry_after_s
            other_host = {**auth(bob), "X-Forwarded-For": "10.0.0.2"}
            assert (await http.get("/agents/me", headers=other_host)).status_code == 200
        molt.set_rate_limits(True, requests=(1000, 60.0))
        async with httpx.AsyncClient(base_url=molt.api_url) as http:
            refused = await http.post("/posts", json={"submolt": "general"}, headers=auth(ann))
            assert refused.status_code == 400  # refused, yet it counted: Moltbook's limiter runs first
            second = await http.post("/posts", json={"submolt": "general", "title": "t", "content": "c"},
                                     headers=auth(ann))
            assert second.status_code == 429 and second.json()["error"] == "You can only post once every 30 minutes"
            assert 1790 <= int(second.headers["Retry-After"]) <= 1800 and second.json()["retryAfterMinutes"] == 30
            made = await http.post("/posts", json={"submolt": "general", "title": "t", "content": "c"},
                                   headers=auth(bob))
            post_id = made.json()["post"]["id"]
            statuses = [(await http.post(f"/posts/{post_id}/comments", json={"content": f"c{i}"},
                                         headers=auth(ann))).status_code for i in range(3)]
            assert statuses == [201, 201, 429]
            assert (await http.post(f"/posts/{post_id}/comments", json={"content": "x"},
                                    headers=auth(bob))).status_code == 201
    finally:
        await molt.stop()


async def test_votes_follows_submolts_feed_and_deletes(molt: HubEmulator, http: httpx.AsyncClient) -> None:
    ann, bob = molt.add_agent("ann_b"), molt.add_agent("bob_c")
    post = molt.add_post("Bob's", "text", author="bob_c", submolt="golang")
    comment = molt.add_comment(post.id, "mine", author="bob_c")
    up = await http.post(f"/posts/{post.id}/upvote", headers=auth(ann))
    assert up.json() == {"success": True, "message": "Upvoted!", "action": "upvoted", "author": {"name": "bob_c"}}
    down = await http.post(f"/posts/{post.id}/downvote", headers=auth(ann))
    assert down.json()["action"] == "changed" and molt.world.posts[post.id].score == -1
    assert (await http.post(f"/comments/{comment.id}/upvote", headers=auth(bob))).status_code == 400  # own
    assert (await http.post(f"/comments/{comment.id}/upvote", headers=auth(ann))).json()["action"] == "upvoted"
    assert (await http.get("/feed", headers=auth(ann))).json()["data"] == []
    assert (await http.post("/agents/bob_c/follow", headers=auth(ann))).json()["action"] == "followed"
    assert [p["id"] for p in (await http.get("/feed", headers=auth(ann))).json()["data"]] == [post.id]
    profile = (await http.get("/agents/profile?name=bob_c", headers=auth(ann))).json()
    assert profile["isFollowing"] is True and profile["agent"]["followerCount"] == 1
    assert profile["agent"]["karma"] == 0 and [p["id"] for p in profile["recentPosts"]] == [post.id]
    made = await http.post("/submolts", json={"name": "rust_lang", "display_name": "Rust"}, headers=auth(ann))
    assert made.status_code == 201 and made.json()["submolt"]["subscriber_count"] == 1
    listed = (await http.get("/submolts", headers=auth(ann))).json()
    assert listed["data"][0]["name"] == "rust_lang" and {"general", "golang"} <= {s["name"] for s in listed["data"]}
    assert (await http.get("/submolts/golang/feed", headers=auth(ann))).json()["data"][0]["id"] == post.id
    assert (await http.patch("/agents/me", json={"displayName": "Ann B"}, headers=auth(ann))).json()[
        "agent"]["displayName"] == "Ann B"
    assert (await http.delete(f"/posts/{post.id}", headers=auth(ann))).status_code == 403
    assert (await http.delete(f"/comments/{comment.id}", headers=auth(bob))).status_code == 204
    assert (await http.get(f"/comments/{comment.id}", headers=auth(ann))).json()["comment"]["content"] == "[deleted]"
    assert (await http.delete(f"/posts/{post.id}", headers=auth(bob))).status_code == 204
    assert (await http.get(f"/posts/{post.id}", headers=auth(ann))).status_code == 404


@pytest.mark.parametrize("suffix", ["", "/api/v1", "/api/v1/"])
async def test_our_client_takes_the_origin_or_the_api_url(molt: HubEmulator, suffix: str) -> None:
    key = molt.add_agent("research_agent")
    molt.add_post("hello @research_agent", url="https://x.test")
    async with HubClient(molt.url + suffix, backoff_base_s=0.01) as client:
        assert (await client.me(key)).name == "research_agent"
        [post] = await client.list_posts(key, None)
        assert post.title == "hello @research_agent"


async def test_our_client_reads_what_the_stages_read(molt: HubEmulator) -> None:
    """The reply path against this profile: a link post, its comment tree, a nested reply, search; the
    routes it lacks are HubEndpointMissing, a malformed id fails that request only."""
    key = molt.add_agent("research_agent")
    molt.add_agent("code_review")
    post = molt.add_post("hello @research_agent", url="https://x.test")
    top = molt.add_comment(post.id, "top", author="code_review")
    async with HubClient(molt.api_url, backoff_base_s=0.01) as client:
        read = await client.get_post(key, post.id)
        assert (read.title, read.url, read.author_name) == ("hello @research_agent", "https://x.test", "alice")
        [comment] = await client.get_comments(key, post.id)
        assert (comment.id, comment.author_name) == (top.id, "code_review")
        reply = await client.create_comment(key, post.id, "thanks", parent_id=top.id)
        assert reply.depth == 1 and molt.comments_on(post.id)[-1].parent_id == top.id
        assert [p.id for p in (await client.search(key, "hello")).posts] == [post.id]
        with pytest.raises(HubEndpointMissing):
            await client.unread_notifications(key)
        with pytest.raises(HubUnavailable) as failed:
            await client.get_post(key, "post_1")
        assert failed.value.status == 500 and client.breaker.state == "closed"
    bad_id_requests = molt.requests.matching("/api/v1/posts/post_1")
    assert len(bad_id_requests) == 1  # not retried


@pytest.mark.slow
async def test_cli_serves_the_moltbook_profile(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text("agents:\n  - {name: research_agent}\n"
                    "posts:\n  - {title: '@research_agent look', url: 'https://x.test', comments: [{content: hi}]}\n")
    keys_file = tmp_path / "keys.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow.doubles.hub_emulator.cli", "--port", "0", "--profile", "moltbook",
        "--limit", "requests=3/60", "--seed", str(seed), "--keys-file", str(keys_file), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        key = json.loads(keys_file.read_text())["research_agent"]
        async with httpx.AsyncClient(base_url=url + "/api/v1") as http:
            posts = (await http.get("/posts", headers=auth(key))).json()["data"]
            assert [(p["content"], p["url"], p["comment_count"]) for p in posts] == [(None, "https://x.test", 1)]
            assert (await http.get("/notifications", headers=auth(key))).status_code == 404
            assert (await http.get("/agents/me", headers=auth(key))).status_code == 200
            assert (await http.get("/agents/me", headers=auth(key))).status_code == 429
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seed.write_text("agents:\n  - {name: research-agent}\n")
    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow.doubles.hub_emulator.cli", "--port", "0", "--profile", "moltbook",
        "--seed", str(seed), stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(refused.communicate(), 20)
    assert refused.returncode == 2 and b"underscores" in err

"""The Hub emulator over real HTTP: auth, the admin API, notifications, rate limits, faults, the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from botburrow.doubles.hub_emulator import HubEmulator


@pytest.fixture
async def http(hub_emulator: HubEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub_emulator.url) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_admin_needs_the_system_key_and_state_hides_keys(hub_emulator: HubEmulator,
                                                               http: httpx.AsyncClient) -> None:
    system = auth(hub_emulator.system_key)
    created = await http.post("/admin/agents", json={"name": "helper", "type": "goose"}, headers=system)
    assert created.status_code == 201
    key = created.json()["api_key"]
    assert (await http.post("/admin/agents", json={"name": "x"}, headers=auth(key))).status_code == 401
    me = await http.get("/api/v1/agents/me", headers=auth(key))
    assert me.json()["agent"]["name"] == "helper" and me.json()["agent"]["type"] == "goose"
    state = await http.get("/admin/state", headers=system)
    assert state.status_code == 200 and key not in state.text
    assert [a["name"] for a in state.json()["agents"]] == ["helper"]


async def test_auth_on_agent_and_system_calls(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    key = hub_emulator.add_agent("helper")
    assert (await http.get("/api/v1/notifications")).status_code == 401
    unknown = await http.get("/api/v1/notifications", headers=auth("nobody-key"))
    assert unknown.status_code == 401 and unknown.json()["success"] is False
    assert unknown.json()["code"] == "UNAUTHORIZED"
    assert (await http.get("/api/v1/system/budget-health", headers=auth(key))).status_code == 403
    assert (await http.get("/api/v1/agents/me", headers=auth(hub_emulator.system_key))).status_code == 401
    health = await http.get("/api/v1/system/budget-health", headers=auth(hub_emulator.system_key))
    assert health.json()["tools"]["native"]["status"] == "healthy"


async def test_admin_mention_makes_comment_and_notification(hub_emulator: HubEmulator,
                                                            http: httpx.AsyncClient) -> None:
    key = hub_emulator.add_agent("helper")
    made = await http.post("/admin/mention", json={"agent": "helper", "content": "thoughts?", "from": "bob"},
                           headers=auth(hub_emulator.system_key))
    assert made.status_code == 201
    post_id, comment_id = made.json()["post_id"], made.json()["comment_id"]
    assert hub_emulator.world.post(post_id).submolt == "general"
    [comment] = hub_emulator.comments_on(post_id)
    assert comment.id == comment_id and "@helper" in comment.content and comment.author_type == "human"
    listed = (await http.get("/api/v1/notifications?unread=true", headers=auth(key))).json()
    [note] = listed["notifications"]
    assert (note["type"], note["post_id"], note["comment_id"]) == ("mention", post_id, comment_id)
    assert note["from"] == {"id": "usr_bob", "name": "bob", "type": "human"}


async def test_notifications_unread_filter_pagination_and_any_type(hub_emulator: HubEmulator,
                                                                   http: httpx.AsyncClient) -> None:
    key = hub_emulator.add_agent("helper")
    for i in range(3):
        made = await http.post("/admin/notifications", headers=auth(hub_emulator.system_key),
                               json={"agent": "helper", "type": "follow" if i == 0 else "thread_update",
                                     "content": f"n{i}", "from": {"name": "peer", "type": "claude-code"}})
        assert made.status_code == 201
    first = hub_emulator.notifications_of("helper")[0]
    marked = await http.post("/api/v1/notifications/read", json={"notification_ids": [first.id, "ntf_other"]},
                             headers=auth(key))
    assert marked.json() == {"success": True, "marked": 1}
    page = (await http.get("/api/v1/notifications?unread=true&limit=1", headers=auth(key))).json()
    assert [n["content"] for n in page["notifications"]] == ["n2"]
    assert page["unread_count"] == 2 and page["next_cursor"] == "1"
    rest = (await http.get("/api/v1/notifications?unread=true&limit=1&cursor=1", headers=auth(key))).json()
    assert [n["content"] for n in rest["notifications"]] == ["n1"] and "next_cursor" not in rest
    every = (await http.get("/api/v1/notifications", headers=auth(key))).json()["notifications"]
    assert [(n["type"], n["read"]) for n in every][-1] == ("follow", True)


async def test_comments_notify_authors_and_mentioned_agents(hub_emulator: HubEmulator,
                                                            http: httpx.AsyncClient) -> None:
    alpha, beta = hub_emulator.add_agent("alpha"), hub_emulator.add_agent("beta")
    hub_emulator.add_agent("gamma")
    post = (await http.post("/api/v1/posts", json={"submolt": "general", "title": "Hi", "content": "..."},
                            headers=auth(alpha))).json()["post"]
    top = (await http.post(f"/api/v1/posts/{post['id']}/comments", json={"content": "nice, @gamma look"},
                           headers=auth(beta))).json()["comment"]
    reply = await http.post(f"/api/v1/posts/{post['id']}/comments",
                            json={"content": "thanks", "parent_id": top["id"]}, headers=auth(alpha))
    assert reply.status_code == 201 and reply.json()["comment"]["depth"] == 1
    assert [n.type for n in hub_emulator.notifications_of("alpha")] == ["comment"]
    assert [n.type for n in hub_emulator.notifications_of("gamma")] == ["mention"]
    [to_beta] = hub_emulator.notifications_of("beta")
    assert (to_beta.type, to_beta.comment_id, to_beta.from_.name) == ("reply", reply.json()["comment"]["id"],
                                                                      "alpha")
    tree = (await http.get(f"/api/v1/posts/{post['id']}/comments", headers=auth(alpha))).json()["comments"]
    assert [c["id"] for c in tree] == [top["id"]] and tree[0]["replies"][0]["content"] == "thanks"
    bad_parent = await http.post(f"/api/v1/posts/{post['id']}/comments",
                                 json={"content": "x", "parent_id": "cmt_nope"}, headers=auth(alpha))
    assert bad_parent.status_code == 404
    empty = await http.post(f"/api/v1/posts/{post['id']}/comments", json={"content": ""}, headers=auth(alpha))
    assert empty.status_code == 400 and empty.json()["code"] == "VALIDATION_ERROR"


async def test_posts_sorting_and_search(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    key = hub_emulator.add_agent("helper")
    old = hub_emulator.add_post("Old but loved", "gopher content", submolt="golang", score=10, age_s=3600)
    new = hub_emulator.add_post("Fresh", "more GOPHER talk", submolt="golang")
    hub_emulator.add_post("Elsewhere", "gopher", submolt="rust")

    async def ids(query: str) -> list[str]:
        return [p["id"] for p in (await http.get(f"/api/v1/posts?{query}", headers=auth(key))).json()["posts"]]

    assert await ids("submolt=golang&sort=new") == [new.id, old.id]
    assert await ids("submolt=golang&sort=top") == [old.id, new.id]
    assert await ids("submolt=golang&limit=1&offset=1") == [old.id]
    found = (await http.get("/api/v1/search?q=gopher&limit=2", headers=auth(key))).json()
    assert len(found["posts"]) == 2 and found["agents"] == []
    long_title = await http.post("/api/v1/posts", json={"submolt": "golang", "title": "t" * 301, "content": ""},
                                 headers=auth(key))
    assert long_title.status_code == 400


async def test_consumption_dedup_and_budget(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    system = auth(hub_emulator.system_key)
    event = {"activation_id": "a1", "agent_id": "helper", "tool_type": "aider", "model": "m",
             "task_type": "exploration", "task_priority": "low", "estimated_cost_usd": 9.5, "outcome": "failed",
             "error": "max_iterations", "started_at": "2025-01-01T00:00:00Z", "ended_at": "2025-01-01T00:00:09Z"}
    for _ in range(2):
        sent = await http.post("/api/v1/system/consumption", json={"events": [event]}, headers=system)
        assert sent.status_code == 200 and sent.json()["accepted"] == 1
    assert sent.json()["new"] == 0 and len(hub_emulator.consumption) == 1
    bad = await http.post("/api/v1/system/consumption", json={"events": [{"agent_id": "x"}]}, headers=system)
    assert bad.status_code == 400
    tools = (await http.get("/api/v1/system/budget-health", headers=system)).json()["tools"]
    assert tools["aider"]["status"] == "throttle" and tools["aider"]["used_pct"] == 95.0
    await http.post("/admin/budget", json={"tool_type": "aider", "used_pct": 100}, headers=system)
    tools = (await http.get("/api/v1/system/budget-health", headers=system)).json()["tools"]
    assert tools["aider"]["status"] == "critical"


async def test_dm_send_is_stored(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    key = hub_emulator.add_agent("helper")
    made = await http.post("/admin/dm", json={"agent": "helper", "content": "psst"},
                           headers=auth(hub_emulator.system_key))
    dm_id = made.json()["dm_id"]
    sent = await http.post(f"/api/v1/agents/dm/conversations/{dm_id}/send", json={"content": "hey"},
                           headers=auth(key))
    assert sent.status_code == 201
    assert [(m.sender, m.content) for m in hub_emulator.dms] == [("alice", "psst"), ("helper", "hey")]


async def test_moltbook_rate_limits(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    key, other = hub_emulator.add_agent("helper"), hub_emulator.add_agent("other")
    made = await http.post("/admin/rate-limits", json={"enabled": True}, headers=auth(hub_emulator.system_key))
    assert made.json()["limits"]["requests"] == [100, 60.0]
    post = (await http.post("/api/v1/posts", json={"submolt": "general", "title": "a", "content": ""},
                            headers=auth(key))).json()["post"]
    second = await http.post("/api/v1/posts", json={"submolt": "general", "title": "b", "content": ""},
                             headers=auth(key))
    assert second.status_code == 429 and 1790 <= int(second.headers["Retry-After"]) <= 1800
    assert second.headers["X-RateLimit-Limit"] == "1" and second.headers["X-RateLimit-Remaining"] == "0"
    for i in range(50):
        made = await http.post(f"/api/v1/posts/{post['id']}/comments", json={"content": f"c{i}"},
                               headers=auth(key))
        assert made.status_code == 201
    over = await http.post(f"/api/v1/posts/{post['id']}/comments", json={"content": "c51"}, headers=auth(key))
    assert over.status_code == 429 and over.json()["code"] == "RATE_LIMITED"
    for _ in range(100 - 53):
        assert (await http.get("/api/v1/agents/me", headers=auth(key))).status_code == 200
    assert (await http.get("/api/v1/agents/me", headers=auth(key))).status_code == 429
    assert (await http.get("/api/v1/agents/me", headers=auth(other))).status_code == 200  # per key


async def test_faults_by_count_probability_and_prefix(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    key = hub_emulator.add_agent("helper")
    system = auth(hub_emulator.system_key)
    await http.post("/admin/faults", json={"status": 503, "count": 2, "path_prefix": "/api/v1/search"},
                    headers=system)
    await http.post("/admin/faults", json={"status": 500, "probability": 0.0}, headers=system)
    statuses = [(await http.get("/api/v1/search?q=x", headers=auth(key))).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert (await http.get("/api/v1/agents/me", headers=auth(key))).status_code == 200
    listed = (await http.get("/admin/faults", headers=system)).json()["faults"]
    assert [f["probability"] for f in listed] == [0.0]
    await http.delete("/admin/faults", headers=system)
    assert hub_emulator.faults.active == []
    bad = await http.post("/admin/faults", json={"status": "soon"}, headers=system)
    assert bad.status_code == 400


async def test_reset(hub_emulator: HubEmulator, http: httpx.AsyncClient) -> None:
    hub_emulator.add_agent("helper")
    hub_emulator.mention("helper", "hello")
    await http.post("/admin/reset", json={"keep_agents": True}, headers=auth(hub_emulator.system_key))
    assert hub_emulator.posts == [] and hub_emulator.notifications_of("helper") == []
    assert list(hub_emulator.world.agents) == ["helper"]
    await http.post("/admin/reset", headers=auth(hub_emulator.system_key))
    assert hub_emulator.world.agents == {}


async def test_cli_serves_seed_and_stops_on_sigterm(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text("agents:\n  - {name: helper, key: helper-key-123}\n"
                    "posts:\n  - {title: Hello, content: world, comments: [{content: hi, replies: [{content: yo}]}]}\n")
    keys_file = tmp_path / "keys.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow.doubles.hub_emulator.cli", "--port", "0", "--system-key", "sys-key-123",
        "--seed", str(seed), "--keys-file", str(keys_file), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert json.loads(keys_file.read_text()) == {"helper": "helper-key-123"}
        async with httpx.AsyncClient(base_url=url) as http:
            posts = (await http.get("/api/v1/posts", headers=auth("helper-key-123"))).json()["posts"]
            assert [(p["title"], p["comment_count"]) for p in posts] == [("Hello", 2)]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

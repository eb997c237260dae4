"""HubClient against the real emulator over HTTP: every call of contract §1, retries, 429, breaker."""

from __future__ import annotations

import json
import socket

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub import (
    CircuitBreaker,
    HubAuthError,
    HubClient,
    HubEndpointMissing,
    HubError,
    HubNotFound,
    HubRateLimited,
    HubUnavailable,
    deepjson,
)
from botburrow.hub.decode import MAX_COMMENT_DEPTH
from botburrow.hub.errors import HubBadResponse
from schemas.events import ActivationMetrics
from schemas.hub import Comment, walk_comments

AGENT_KEY = "agent-key-for-helper-0001"


def metrics(activation_id: str, cost_usd: float = 0.5) -> ActivationMetrics:
    return ActivationMetrics(activation_id=activation_id, agent_id="helper", tool_type="native", model="m",
                             task_type="notification", task_priority="high", tokens_input=10, tokens_output=5,
                             estimated_cost_usd=cost_usd, outcome="posted", started_at="2025-01-01T00:00:00Z",
                             ended_at="2025-01-01T00:00:01Z")


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def client_for(emulator: HubEmulator, **kwargs: object) -> HubClient:
    return HubClient(emulator.url, system_key=emulator.system_key, backoff_base_s=0.01, **kwargs)  # type: ignore[arg-type]


async def test_notifications_unread_and_mark_read(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    note = hub_emulator.mention("helper", "can you help?")
    page = await hub_client.unread_notifications(key)
    assert [n.id for n in page.notifications] == [note.id]
    got = page.notifications[0]
    assert (got.type, got.post_id, got.comment_id) == ("mention", note.post_id, note.comment_id)
    assert got.from_.type == "human" and got.from_.name == "alice"
    assert page.unread_count == 1
    assert await hub_client.mark_read(key, [note.id]) == 1
    assert (await hub_client.unread_notifications(key)).notifications == []
    assert hub_emulator.notifications_of("helper")[0].read is True
    assert hub_client.available


async def test_posts_comments_tree(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    post = await hub_client.create_post(key, "m/rust", "Borrow checker", "why?")
    assert post.submolt == "rust" and post.author_name == "helper" and post.author_type == "native"
    assert [p.id for p in await hub_client.list_posts(key, "m/rust")] == [post.id]
    assert await hub_client.list_posts(key, "general") == []
    top = await hub_client.create_comment(key, post.id, "first")
    reply = await hub_client.create_comment(key, post.id, "second", parent_id=top.id)
    assert (reply.parent_id, reply.depth) == (top.id, 1)
    tree = await hub_client.get_comments(key, post.id)
    assert [c.id for c in tree] == [top.id]
    assert [(r.id, r.depth) for r in tree[0].replies] == [(reply.id, 1)]
    assert (await hub_client.get_post(key, post.id)).comment_count == 2


async def test_search_me_and_dm(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", type="claude-code", key=AGENT_KEY, description="helps")
    hub_emulator.add_post("Tokio runtime tips", "spawn_blocking for blocking work", submolt="rust")
    hub_emulator.add_post("Unrelated", "nothing here")
    found = await hub_client.search(key, "TOKIO")
    assert [p.title for p in found.posts] == ["Tokio runtime tips"]
    me = await hub_client.me(key)
    assert (me.name, me.type, me.description) == ("helper", "claude-code", "helps")
    note = hub_emulator.dm("helper", "hi there")
    answer = await hub_client.send_dm(key, note.dm_id or "", "hello back")
    assert answer["success"] is True
    assert [(m.conversation_id, m.sender, m.content) for m in hub_emulator.dms][-1] == (
        note.dm_id, "helper", "hello back")


async def test_budget_health_and_consumption_dedup(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    hub_emulator.add_agent("helper", key=AGENT_KEY)
    hub_emulator.set_budget("claude-code", used_pct=92)
    hub_emulator.set_budget("native", limit_usd=1.0)
    assert await hub_client.report_consumption([metrics("act-1", 0.85)]) == 1
    # A resent activation is accepted and harmless: stored once.
    assert await hub_client.report_consumption([metrics("act-1", 0.85), metrics("act-2", 0.0)]) == 2
    assert [e.activation_id for e in hub_emulator.consumption] == ["act-1", "act-2"]
    health = await hub_client.budget_health()
    assert health.tools["claude-code"].status == "throttle"
    assert health.tools["native"].status == "warning"
    assert health.tools["native"].used_pct == pytest.approx(85.0)


async def test_auth_error_is_not_retried_and_hides_the_key(hub_emulator: HubEmulator,
                                                            hub_client: HubClient) -> None:
    hub_emulator.add_agent("helper", key=AGENT_KEY)
    wrong_key = "not-a-key-of-anyone-123"
    with pytest.raises(HubAuthError) as caught:
        await hub_client.unread_notifications(wrong_key)
    assert caught.value.status == 401 and caught.value.code == "UNAUTHORIZED"
    assert wrong_key not in str(caught.value)
    assert len(hub_emulator.requests.matching("/api/v1/notifications")) == 1
    agent_only = HubClient(hub_emulator.url, system_key=AGENT_KEY)
    try:
        with pytest.raises(HubAuthError) as forbidden:
            await agent_only.budget_health()
        assert forbidden.value.status == 403 and AGENT_KEY not in str(forbidden.value)
    finally:
        await agent_only.aclose()
    assert len(hub_emulator.requests.matching("/api/v1/system")) == 1


async def test_error_shapes_are_both_parsed(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    with pytest.raises(HubNotFound) as missing:
        await hub_client.get_post(key, "post_nope")
    assert missing.value.code == "NOT_FOUND" and "post not found" in missing.value.message
    hub_emulator.set_fault(status=422, count=1, error_shape="detail", message="title too long")
    with pytest.raises(HubError) as detail:
        await hub_client.create_post(key, "general", "t", "c")
    assert (detail.value.status, detail.value.code) == (422, None)
    assert "title too long" in detail.value.message
    assert len(hub_emulator.requests.matching("/api/v1/posts", "POST")) == 1  # a 4xx is not retried


async def test_5xx_retried_then_success(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    hub_emulator.set_fault(status=503, count=2, path_prefix="/api/v1/notifications")
    page = await hub_client.unread_notifications(key)
    assert page.notifications == []
    assert [r.status for r in hub_emulator.requests.matching("/api/v1/notifications")] == [503, 503, 200]


async def test_503_exhausted_raises_unavailable(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    hub_emulator.set_fault(status=503, error_shape="detail")
    client = client_for(hub_emulator, max_attempts=3)
    try:
        with pytest.raises(HubUnavailable) as caught:
            await client.me(key)
    finally:
        await client.aclose()
    assert caught.value.status == 503 and "injected fault" in caught.value.message
    assert len(hub_emulator.requests.matching()) == 3
    assert not client.available
    assert client.breaker.failures("overloaded") == 3


async def test_a_500_fails_that_request_once_and_leaves_the_breaker_closed(hub_emulator: HubEmulator) -> None:
    """Moltbook answers 500 to a malformed id: that request fails, at once; the next call goes through."""
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    post = hub_emulator.add_post("thread", "body")
    client = client_for(hub_emulator, breaker=CircuitBreaker(threshold=1, cooldown_s=30))
    try:
        hub_emulator.set_fault(status=500, count=3, path_prefix="/api/v1/posts/not-a-uuid")
        for _ in range(3):
            with pytest.raises(HubUnavailable) as caught:
                await client.get_post(key, "not-a-uuid")
            assert (caught.value.status, caught.value.code) == (500, "SERVER_ERROR")
        assert len(hub_emulator.requests.matching("/api/v1/posts/not-a-uuid")) == 3  # once each, no retry
        assert client.breaker.state == "closed"  # a threshold of 1 would have opened on any counted failure
        assert (await client.get_post(key, post.id)).id == post.id
        assert client.available
    finally:
        await client.aclose()


async def test_429_waits_retry_after(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    hub_emulator.set_fault(status=429, count=1, retry_after_s=1)
    assert (await hub_client.me(key)).name == "helper"
    first, second = hub_emulator.requests.matching()
    assert (first.status, second.status) == (429, 200)
    assert second.at_s - first.at_s >= 0.95  # the server saw the retry only after Retry-After


async def test_429_beyond_the_cap_is_raised_at_once(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    hub_emulator.set_fault(status=429, count=1, retry_after_s=120)
    client = client_for(hub_emulator, max_retry_after_s=60)
    try:
        with pytest.raises(HubRateLimited) as caught:
            await client.me(key)
    finally:
        await client.aclose()
    assert caught.value.retry_after_s == 120
    assert len(hub_emulator.requests.matching()) == 1


async def test_emulator_rate_limits_reach_the_client(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    hub_emulator.set_rate_limits(True)
    await hub_client.create_post(key, "general", "one", "x")
    with pytest.raises(HubRateLimited) as caught:  # 1 post / 30 min: Retry-After far beyond the cap
        await hub_client.create_post(key, "general", "two", "x")
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 1700
    assert len(hub_emulator.posts) == 1
    assert len(hub_emulator.requests.matching("/api/v1/posts", "POST")) == 2


async def test_read_timeout_retried_but_write_not_resent(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    post = hub_emulator.add_post("thread", "body")
    client = client_for(hub_emulator, timeout_s=0.2)
    try:
        hub_emulator.set_fault(latency_ms=1000, count=1, method="GET")
        assert (await client.get_post(key, post.id)).id == post.id
        assert len(hub_emulator.requests.matching(method="GET")) == 2
        hub_emulator.set_fault(latency_ms=1000, count=1, method="POST")
        with pytest.raises(HubUnavailable) as caught:
            await client.create_comment(key, post.id, "maybe posted")
        assert caught.value.code == "OUTCOME_UNKNOWN"
        assert len(hub_emulator.requests.matching(method="POST")) == 1
    finally:
        await client.aclose()


async def test_circuit_breaker_opens_and_recovers(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    clock = FakeClock()
    client = client_for(hub_emulator, max_attempts=1, breaker=CircuitBreaker(threshold=2, cooldown_s=30, clock=clock))
    try:
        hub_emulator.set_fault(status=502)
        for _ in range(2):
            with pytest.raises(HubUnavailable):
                await client.me(key)
        with pytest.raises(HubUnavailable) as open_:
            await client.me(key)
        assert open_.value.code == "CIRCUIT_OPEN" and not client.available
        assert len(hub_emulator.requests.matching()) == 2  # the open circuit sent nothing
        clock.now_s += 31  # half-open: one probe goes out, fails, the circuit opens again
        with pytest.raises(HubUnavailable):
            await client.me(key)
        with pytest.raises(HubUnavailable) as reopened:
            await client.me(key)
        assert reopened.value.code == "CIRCUIT_OPEN"
        assert len(hub_emulator.requests.matching()) == 3
        hub_emulator.clear_faults()
        clock.now_s += 31
        assert (await client.me(key)).name == "helper"
        assert client.breaker.state == "closed" and client.available
    finally:
        await client.aclose()


async def test_the_breaker_counts_each_failure_class_and_says_which_opened_it(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    clock = FakeClock()
    client = client_for(hub_emulator, max_attempts=1, timeout_s=0.2,
                        breaker=CircuitBreaker(threshold=2, cooldown_s=30, clock=clock))
    try:
        hub_emulator.set_fault(status=503, count=1)
        with pytest.raises(HubUnavailable):
            await client.me(key)
        hub_emulator.set_fault(latency_ms=1000, count=1)
        with pytest.raises(HubUnavailable):
            await client.me(key)
        # One 503 and one timeout: two classes, one failure each, below the threshold of 2.
        assert client.breaker.state == "closed"
        assert (client.breaker.failures("overloaded"), client.breaker.failures("timeout")) == (1, 1)
        hub_emulator.set_fault(latency_ms=1000, count=1)
        with pytest.raises(HubUnavailable):
            await client.me(key)
        assert client.breaker.state == "open" and client.breaker.opened_by == "timeout"
        with pytest.raises(HubUnavailable) as open_:
            await client.me(key)
        assert open_.value.code == "CIRCUIT_OPEN" and "timeout" in open_.value.message
    finally:
        await client.aclose()


def test_one_breaker_per_hub_origin() -> None:
    from botburrow.hub.breaker import breaker_for

    first = breaker_for("http://hub-a.test:1/", cooldown_s=5)
    assert breaker_for("http://hub-a.test:1") is first and first.cooldown_s == 5
    assert breaker_for("http://hub-b.test:1") is not first


async def test_a_route_the_hub_does_not_serve_is_endpoint_missing_not_retried(hub_emulator: HubEmulator) -> None:
    """Starlette's plain-text 404 for an unknown route, Moltbook's envelope, a 405: a missing capability."""
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    client = client_for(hub_emulator, breaker=CircuitBreaker(threshold=1, cooldown_s=30))
    try:
        with pytest.raises(HubEndpointMissing) as missing:
            await client._call("GET", "/no/such/route", key)
        assert missing.value.code == "ENDPOINT_NOT_FOUND" and missing.value.status == 404
        assert not isinstance(missing.value, HubNotFound)
        with pytest.raises(HubNotFound) as resource:  # a resource's 404 stays HubNotFound
            await client.get_post(key, "post_nope")
        assert not isinstance(resource.value, HubEndpointMissing)
        assert client.breaker.state == "closed" and client.available
    finally:
        await client.aclose()


@pytest.mark.parametrize(("status", "body"), [
    (404, b'{"success":false,"error":"Endpoint not found","hint":"GET /api/v1/notifications does not exist."}'),
    (404, b'{"detail":"Not Found"}'),
    (404, b"<html>Cannot GET /api/v1/notifications</html>"),
    (405, b'{"detail":"Method Not Allowed"}'),
])
async def test_endpoint_missing_shapes(status: int, body: bytes) -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(status, content=body)

    client = HubClient("http://hub.test", transport=httpx.MockTransport(handle))
    try:
        with pytest.raises(HubEndpointMissing):
            await client.unread_notifications(AGENT_KEY)
    finally:
        await client.aclose()
    assert calls == ["/api/v1/notifications"]


async def test_system_calls_without_a_system_key_say_so_only_when_made(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    client = client_for_no_system_key(hub_emulator)
    try:
        assert (await client.me(key)).name == "helper"  # agent calls need no system key
        with pytest.raises(HubAuthError) as caught:
            await client.budget_health()
        assert caught.value.code == "NO_SYSTEM_KEY" and "HUB_API_KEY" in caught.value.message
        assert hub_emulator.requests.matching("/api/v1/system") == []
    finally:
        await client.aclose()


def client_for_no_system_key(emulator: HubEmulator) -> HubClient:
    return HubClient(emulator.url, backoff_base_s=0.01)


async def test_unreachable_hub() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HubClient(f"http://127.0.0.1:{port}", backoff_base_s=0.001, max_attempts=2)
    try:
        assert await client.probe() is False
        with pytest.raises(HubUnavailable) as caught:
            await client.me(AGENT_KEY)
        assert caught.value.code == "UNREACHABLE" and AGENT_KEY not in str(caught.value)
        assert not client.available
        assert client.breaker.failures("unreachable") == 2 and client.breaker.failures("timeout") == 0
    finally:
        await client.aclose()


async def test_probe_and_availability(hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    assert not hub_client.available  # nothing known yet
    assert await hub_client.probe() is True
    assert hub_client.available


async def test_moltbook_shaped_answers_decode() -> None:
    """Variants a real Moltbook answers with: `data` lists, nested submolt/author, flat profile."""
    answers = {
        "/api/v1/posts": {"success": True, "data": [{"id": "p1", "title": "T", "submolt": {"name": "general"},
                                                     "author": {"name": "bob", "type": "human"}, "extra": 1}]},
        "/api/v1/agents/me": {"id": "a1", "name": "helper", "karma": 5},
        "/api/v1/posts/p1/comments": {"comments": [{"id": "c1", "author": {"name": "bob"},
                                                    "replies": [{"id": "c2", "depth": 1, "author": "eve"}]}]},
    }

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=msgspec.json.encode(answers[request.url.path]))

    client = HubClient("http://hub.test", transport=httpx.MockTransport(handle))
    try:
        [post] = await client.list_posts(AGENT_KEY, "m/general")
        assert (post.submolt, post.author_name, post.author_type) == ("general", "bob", "human")
        assert (await client.me(AGENT_KEY)).name == "helper"
        [comment] = await client.get_comments(AGENT_KEY, "p1")
        assert comment.author_name == "bob" and comment.replies[0].author_name == "eve"
    finally:
        await client.aclose()


def deep_chain_json(levels: int) -> bytes:
    """`{"comments": [...]}` holding one reply chain `levels` deep, built without recursion."""
    opening = "".join(f'{{"id":"c{i}","content":"level {i}","replies":[' for i in range(levels))
    return ('{"success":true,"comments":[' + opening + "]}" * levels + "]}").encode()


MALFORMED = {
    "not JSON": (b"<html>502 from a proxy, said with a 200</html>", "answer is not JSON"),
    "wrong shape": (b'{"success": true, "comments": "none today"}', "expected a list under one of"),
    # 12,000 levels of brackets: past what even the client's stack-free decoder takes (10,000).
    "nested too deep": (deep_chain_json(6_000), "answer nested too deep to decode"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_answer_is_a_bad_response_asked_once(case: str) -> None:
    body, reason = MALFORMED[case]
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, content=body)

    client = HubClient("http://hub.test", transport=httpx.MockTransport(handle), backoff_base_s=0.01)
    try:
        with pytest.raises(HubBadResponse) as raised:
            await client.get_comments(AGENT_KEY, "p1")
    finally:
        await client.aclose()
    assert calls == ["/api/v1/posts/p1/comments"]  # never retried: the Hub would say the same again
    assert reason in str(raised.value) and "/posts/p1/comments" in str(raised.value)
    assert AGENT_KEY not in str(raised.value)


async def test_a_reply_chain_1100_deep_is_decoded_without_recursion_and_cut() -> None:
    # msgspec's decoder gives up near 500 levels (RecursionError); the client decodes it again without.
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=deep_chain_json(1_100))

    client = HubClient("http://hub.test", transport=httpx.MockTransport(handle))
    try:
        comments = await client.get_comments(AGENT_KEY, "p1")
    finally:
        await client.aclose()
    walked = list(walk_comments(comments))
    assert [c.content for c, _ in walked] == [f"level {i}" for i in range(MAX_COMMENT_DEPTH)]
    assert walked[-1][0].replies_omitted == 1_100 - MAX_COMMENT_DEPTH


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=30))
def test_the_stack_free_decoder_reads_json_as_the_standard_library_does(value: object) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        assert deepjson.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["", "[", "[1,]", '{"a" 1}', '{"a":1,}', "nul", "[1] x", "{1:2}", "01", '"\\x"',
                                  "[" * 10_001 + "]" * 10_001])
def test_the_stack_free_decoder_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(deepjson.DeepJsonError):
        deepjson.loads(text)


async def test_a_deep_reply_chain_on_the_emulator_is_cut_at_the_decoder_depth(
        hub_emulator: HubEmulator, hub_client: HubClient) -> None:
    key = hub_emulator.add_agent("helper", key=AGENT_KEY)
    post = hub_emulator.add_post("a long argument")
    parent = None
    for i in range(300):  # the emulator serves up to about 450 levels; 300 is three times what we keep
        parent = hub_emulator.add_comment(post.id, f"reply {i}", parent_id=parent.id if parent else None,
                                          notify=False)
    comments = await hub_client.get_comments(key, post.id)
    walked = list(walk_comments(comments))
    assert len(walked) == MAX_COMMENT_DEPTH and max(depth for _, depth in walked) == MAX_COMMENT_DEPTH - 1
    deepest = walked[-1][0]
    assert deepest.content == f"reply {MAX_COMMENT_DEPTH - 1}" and deepest.replies_omitted == 300 - MAX_COMMENT_DEPTH


def test_walking_a_thousand_deep_tree_needs_no_recursion() -> None:
    leaf = Comment(id="c1099")
    for i in range(1_098, -1, -1):  # built bottom-up: no recursion here either
        leaf = Comment(id=f"c{i}", replies=[leaf])
    assert [c.id for c, _ in walk_comments([leaf])][-1] == "c1099"
    assert max(depth for _, depth in walk_comments([leaf])) == 1_099

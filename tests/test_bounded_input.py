"""Hub content is written by strangers: what reaches the model is bounded, and a Hub answer that does not
fit fails the activation once, with its reason, instead of crashing it until the redeliveries run out.

The runner runs in-process against real NATS, the Hub emulator and the scripted LLM (`rig`). The
malformed answers, and a reply chain 1,100 deep, come from a tiny raw HTTP server in the test: the
emulator only says valid things, and cannot serve a chain deeper than about 450 levels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from schemas.codec import decode_subject
from schemas.events import DeadLetter, RunFailed, RunStarted
from schemas.hub import Author, Notification
from tests.fixtures.runner import END_TIMEOUT_S, Rig, kinds, metrics_of
from tests.fixtures.wait import until
from tests.test_hub_client import MALFORMED, deep_chain_json


def user_text(request: Any) -> str:
    """Everything the runner sent the model in one request, as text."""
    return json.dumps(request.body, ensure_ascii=False)


async def test_a_5_mb_post_reaches_the_model_cut_to_its_bound(rig: Rig) -> None:
    await rig.add_agent("reader")
    post = rig.hub.add_post("a very long post", "word " * 1_000_000)  # 5,000,000 characters
    note = rig.hub.mention("reader", "what do you make of this?", post_id=post.id)
    rig.llm.set_script([{"text": "Too long; I read the start."}])
    await rig.start()
    _, end, events = await rig.activate("reader", [note])

    assert end == "completed" and metrics_of(events).outcome == "posted"
    (request,) = rig.llm.requests
    sent = user_text(request)
    # Was one 5.2 MB request: now the post's 20,000 characters and the rest of a small prompt.
    assert len(sent.encode()) < 30_000, len(sent.encode())
    assert "[cut: 4980000 more characters not shown]" in sent
    assert "what do you make of this?" in sent  # the notification itself is whole
    assert not rig.llm.violations


async def test_a_deep_and_wide_thread_is_cut_in_the_context_and_in_hub_tools(rig: Rig) -> None:
    await rig.add_agent("reader")
    post = rig.hub.add_post("an argument", "Who is right?")
    for i in range(30):
        rig.hub.add_comment(post.id, f"wide {i} " + "x" * 2_000, notify=False)
    parent = None
    for i in range(300):  # a reply chain 300 deep: the client keeps 100 levels, the context 5
        parent = rig.hub.add_comment(post.id, f"chain {i}", parent_id=parent.id if parent else None, notify=False)
    note = rig.hub.mention("reader", "settle it", post_id=post.id)
    total = len(rig.hub.comments_on(post.id))
    rig.llm.set_script([
        {"tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": post.id}}]},
        {"text": "Both are partly right."},
    ])
    await rig.start(HUB_THREAD_MAX_DEPTH="5", HUB_THREAD_MAX_COMMENTS="12", HUB_COMMENT_MAX_CHARS="300")
    _, end, events = await rig.activate("reader", [note])
    assert end == "completed" and metrics_of(events).outcome == "posted", kinds(events)

    context = rig.llm.requests[0].body["messages"][0]["content"]
    context = context if isinstance(context, str) else "".join(part.get("text", "") for part in context)
    shown = re.findall(r"^( *)- \[cmt_", context, flags=re.MULTILINE)
    assert len(shown) == 12 and max(len(indent) // 2 for indent in shown) < 5
    assert f"[cut: {total - 12} more comments not shown (deeper than 5 levels or past the first 12)]" in context
    assert [f"chain {i}" in context for i in range(6)] == [True] * 5 + [False]  # newest first: the chain, cut
    assert re.search(r"x{280,}… \[cut: 17\d\d more characters not shown\]", context) and "x" * 300 not in context

    (tool,) = [e for e in events if type(e).__name__ == "ToolCalled"]
    result = json.loads(tool.result)
    assert len(result["comments"]) == 12 and max(c["depth"] for c in result["comments"]) < 5
    assert result["cut"]["cut_comments"] == total - 12
    assert all(len(c["content"]) <= 300 + 60 for c in result["comments"])
    assert not rig.llm.violations


Route = Callable[[str, str], bytes]


async def acknowledged(rig: Rig) -> None:
    """Wait until the runner acknowledged every activation request it took (it acks after the dead letter)."""
    async def settled() -> bool:  # the server has no event for it: poll its consumer state
        return not (await rig.bus.js.consumer_info("ACTIVATIONS", "runner-high")).num_ack_pending

    await until(settled, END_TIMEOUT_S, "every activation request settled")


async def raw_hub(answer: Route) -> tuple[asyncio.Server, str]:
    """A Hub that answers every request with 200 and the bytes `answer(method, path)` gives: no validation,
    no framing beyond HTTP/1.1 with `Connection: close`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target = head.decode().split(" ", 2)[:2]
        length = re.search(r"(?im)^content-length: *(\d+)", head.decode())
        await reader.readexactly(int(length.group(1)) if length else 0)
        body = answer(method, target.split("?", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def hub_with_comments(comments: bytes) -> AsyncIterator[str]:
    """A Hub whose every answer is fine, and whose comments of any post are `comments`."""

    def answer(method: str, path: str) -> bytes:
        if method == "POST" and path.endswith("/comments"):
            return b'{"success": true, "comment": {"id": "cmt_reply", "content": "posted"}}'
        if path.endswith("/comments"):
            return comments
        if path.startswith("/api/v1/posts/"):
            return b'{"success": true, "post": {"id": "post_1", "title": "t", "content": "c"}}'
        return b'{"success": true}'

    server, url = await raw_hub(answer)
    try:
        yield url
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_hub_answer_fails_the_activation_once_with_its_reason(rig: Rig, case: str) -> None:
    _, reason = MALFORMED[case]
    await rig.add_agent("reader")
    note = Notification(id="ntf_1", type="mention", post_id="post_1", comment_id="cmt_1",
                        from_=Author(name="alice"), content="@reader look at this thread")
    letters: asyncio.Queue[DeadLetter] = asyncio.Queue()

    async def on_letter(msg: Any) -> None:
        await letters.put(decode_subject(msg.subject, msg.data))

    sub = await rig.bus.nc.subscribe("agents.dlq.runner", cb=on_letter)
    async with hub_with_comments(MALFORMED[case][0]) as hub_url:
        await rig.start(HUB_URL=hub_url)
        activation_id, end, events = await rig.activate("reader", [note])
        letter = await asyncio.wait_for(letters.get(), END_TIMEOUT_S)
        await acknowledged(rig)
    await sub.unsubscribe()

    assert end == "failed" and kinds(events) == ["RunStarted", "RunFailed"]
    failed = events[-1]
    assert isinstance(failed, RunFailed) and failed.attempt == 1
    assert failed.metrics.error is not None
    assert failed.metrics.error.startswith("malformed Hub answer: GET /posts/post_1/comments")
    assert reason in failed.metrics.error
    assert [e.attempt for e in events if isinstance(e, RunStarted)] == [1]
    assert activation_id in letter.payload and letter.reason == failed.metrics.error
    assert (await rig.bus.js.consumer_info("ACTIVATIONS", "runner-high")).num_redelivered == 0  # never handed back
    assert rig.llm.requests == []  # nothing reached the model


async def test_a_reply_chain_1100_deep_is_answered_with_the_thread_cut(rig: Rig) -> None:
    await rig.add_agent("reader")
    note = Notification(id="ntf_1", type="mention", post_id="post_1", comment_id="c1099",
                        from_=Author(name="alice"), content="@reader who won this argument?")
    rig.llm.set_script([{"text": "Nobody, after 1,100 replies."}])
    async with hub_with_comments(deep_chain_json(1_100)) as hub_url:
        await rig.start(HUB_URL=hub_url)
        _, end, events = await rig.activate("reader", [note])

    assert end == "completed" and metrics_of(events).outcome == "posted", metrics_of(events)
    (request,) = rig.llm.requests
    sent = user_text(request)
    assert "level 19" in sent and "level 20" not in sent  # HUB_THREAD_MAX_DEPTH: 20 levels shown
    # The client kept 100 levels (the 1,000 below are counted), the context 20 of those.
    assert "[cut: 1080 more comments not shown (deeper than 20 levels or past the first 50)]" in sent
    assert len(sent.encode()) < 10_000

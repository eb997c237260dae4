"""Agent memory without a bucket (fast): the strategies and what `relevance_threshold` means for each, the
embeddings endpoint (a real OpenAI-shaped server here) up and down, redaction before a write, the memories
budget, the extraction answer, and a runner without MEMORY_STORE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botburrow.definitions.parse import parse_agent
from botburrow.runtime.http import serve
from botburrow.secrets import remember
from schemas.events import MemoryRef
from schemas.hub import Notification
from services.runner import context
from services.runner.memory import extraction
from services.runner.memory.index import Entry, Snapshot
from services.runner.memory.items import MemoryItem, item_key, new_id, render
from services.runner.memory.redaction import redact
from services.runner.memory.retrieval import EndpointEmbedder, Retriever, WordLlamaEmbedder
from services.runner.memory.service import AgentMemory, NoMemory, fit, section
from services.runner.memory.store import DirectoryStore
from services.runner.recorded import CollectingRecorder
from tests.fixtures.runner import agent_yaml

NOTES = ["ron likes his coffee black", "the deploy pipeline uses kubernetes and argo",
         "ron's favourite colour is teal", "ron said the staging database is called marmot-7",
         "ana reviewed the rust parser and asked for more tests"]


def snapshot(texts: list[str] = NOTES, agent: str = "a-1") -> Snapshot:
    entries = [Entry(key=f"k{i}", etag="e", size=len(t), item=MemoryItem(
        id=f"m{i}", agent=agent, kind="conversation", when=f"2026-12-0{i + 1}T00:00:00Z", text=t))
        for i, t in enumerate(texts)]
    return Snapshot(agent, entries)


def definition(block: str = "", name: str = "mem-unit") -> Any:
    return parse_agent(name, agent_yaml(name) + block.encode(), b"You are {{name}}.")


MEMORY = """memory:
  enabled: true
  remember: {{conversations_with: [ron], decisions_made: true}}
  retrieval: {{strategy: {strategy}, max_context_items: 3, relevance_threshold: {threshold}}}
"""


async def test_keyword_relevance_is_relative_to_the_best_match() -> None:
    retriever = Retriever()
    found = await retriever.retrieve("keyword", snapshot(), "what is the staging database called?", 3, 0.0)
    assert found[0].entry.item.id == "m3" and found[0].relevance == 1.0
    assert all(s.relevance > 0 for s in found)  # a memory sharing no term is never kept
    assert await retriever.retrieve("keyword", snapshot(), "the and of", 3, 0.0) == []  # stop words only
    strict = await retriever.retrieve("keyword", snapshot(), "ron coffee colour", 3, 1.0)
    assert [s.relevance for s in strict] == [1.0]


async def test_recent_takes_the_newest_whatever_the_threshold() -> None:
    found = await Retriever().retrieve("recent", snapshot(), "anything", 2, 0.99)
    assert [s.entry.item.id for s in found] == ["m4", "m3"]


async def test_embedding_search_finds_a_paraphrase_offline() -> None:
    retriever = Retriever(WordLlamaEmbedder())
    found = await retriever.retrieve("embedding_search", snapshot(), "Which name does the staging DB have?", 2, 0.6)
    assert found and found[0].entry.item.id == "m3" and 0.6 <= found[0].relevance <= 1.0
    assert await retriever.retrieve("embedding_search", snapshot(), "zebra", 5, 0.95) == []


@pytest.fixture
async def embeddings_endpoint() -> AsyncIterator[str]:
    """An OpenAI-compatible /v1/embeddings (wordllama behind it), answering 503 once `down` is posted."""
    model, state = WordLlamaEmbedder(), {"down": False}

    async def embeddings(request: Request) -> Response:
        if state["down"]:
            return JSONResponse({"error": "overloaded"}, status_code=503)
        body = await request.json()
        vectors = model.embed_sync(body["input"])
        return JSONResponse({"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]})

    async def down(request: Request) -> Response:
        state["down"] = True
        return Response(status_code=204)

    server = await serve(Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                                           Route("/down", down, methods=["POST"])]))
    try:
        yield server.url
    finally:
        await server.stop()


async def put_notes(store: DirectoryStore, agent: str) -> None:
    for i, text in enumerate(NOTES):
        it = MemoryItem(id=new_id(), agent=agent, kind="conversation", who="ron",
                        when=f"2026-12-0{i + 1}T00:00:00Z", text=text)
        await store.put(agent, item_key(it), render(it))


def mention(text: str) -> Notification:
    return msgspec.convert({"id": "n-1", "type": "mention", "from": {"name": "ron"}, "content": text,
                            "post_id": "p-1"}, Notification)


async def test_the_embeddings_endpoint_down_means_no_memory_and_a_reason(embeddings_endpoint: str,
                                                                         tmp_path: Path) -> None:
    import httpx

    store = DirectoryStore(tmp_path)
    agent = definition(MEMORY.format(strategy="embedding_search", threshold=0.6))
    await put_notes(store, agent.name)
    memory = AgentMemory(store, retriever=Retriever(EndpointEmbedder(f"{embeddings_endpoint}/v1", "any")))
    recorder = CollectingRecorder()
    given = await memory.recall(agent, [mention("what is the staging database called?")], None, 2000, recorder)
    assert "marmot-7" in given and given.startswith("## What you remember")
    async with httpx.AsyncClient() as client:
        await client.post(f"{embeddings_endpoint}/down")
    memory.retriever._vectors.clear()  # as a runner whose cache does not hold this agent
    assert await memory.recall(agent, [mention("staging database?")], None, 2000, recorder) == ""
    assert await memory.recall(agent, [mention("staging database?")], None, 2000, recorder) == ""
    reasons = [str(m.get("reason")) for m in recorder.memories]
    assert reasons[0] == "None" and "answered 503" in reasons[1] and "not retried" in reasons[2]
    await memory.aclose()


async def test_an_unreachable_embeddings_endpoint_is_said_too(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    agent = definition(MEMORY.format(strategy="embedding_search", threshold=0.6))
    await put_notes(store, agent.name)
    memory = AgentMemory(store, retriever=Retriever(EndpointEmbedder("http://127.0.0.1:9/v1", "any", timeout_s=2)))
    recorder = CollectingRecorder()
    assert await memory.recall(agent, [mention("staging?")], None, 2000, recorder) == ""
    assert "unreachable" in recorder.memories[0]["reason"]


def test_redaction_takes_out_known_secrets_and_credential_shapes() -> None:
    remember("anthropic-api-key", "sk-ant-known-value-123456")
    text = ("key sk-ant-known-value-123456, token ghp_" + "a" * 30 + ", AKIAABCDEFGHIJKLMNOP, "
            "password: hunter2hunter2, Bearer abcdefghijklmnopqrstuvwxyz, "
            "jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIx.abcdefghijk")
    out = redact(text)
    for secret in ("sk-ant-known", "ghp_", "AKIA", "hunter2", "abcdefghijklmnopqrstuvwxyz", "eyJhbG"):
        assert secret not in out
    assert redact("ron likes teal") == "ron likes teal"


def test_memories_fit_their_budget_and_each_cut_is_recorded() -> None:
    ledger = context.ContextLedger(context.ContextBudget(memories_tokens=60), context.TokenEstimator(), "m")
    items = [MemoryRef(id=str(i), kind="conversation", text="word " * 20) for i in range(3)]
    kept = fit(items, ledger, 60)  # one bullet: about 41 estimated tokens
    assert [r.id for r in kept] == ["0"] and ledger.tokens["memories"] <= 60
    assert [c.what for c in ledger.cuts] == ["memory 1", "memory 2"] and ledger.cuts[0].part == "memories"
    assert section([]) == "" and section(kept).startswith("## What you remember")


def test_the_extraction_answer_keeps_only_wanted_kinds() -> None:
    answer = '\n'.join(['{"kind": "decision", "text": "use marmot-7"}', "not json", '{"kind": "project", "text": "x"}',
                        '{"kind": "feedback"}', "[1, 2]"])
    assert extraction.parse_answer(answer, ["decision", "feedback"]) == [("decision", "use marmot-7")]
    system, user = extraction.prompt("ron: hi", ["decision"])
    assert "decision" in system and user.endswith("ron: hi")


async def test_a_runner_without_a_store_tells_memory_agents_only() -> None:
    recorder = CollectingRecorder()
    await NoMemory().recall(definition(), [mention("hi")], None, 2000, recorder)
    assert recorder.memories == []
    memory_agent = definition(MEMORY.format(strategy="keyword", threshold=0.0))
    await NoMemory().recall(memory_agent, [mention("hi")], None, 2000, recorder)
    assert recorder.memories[0]["reason"] == NoMemory.REASON


async def test_disabled_memory_writes_nothing(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    off = definition(MEMORY.format(strategy="keyword", threshold=0.0).replace("enabled: true", "enabled: false"))
    memory, recorder = AgentMemory(store), CollectingRecorder()
    await memory.remember(off, [mention("remember marmot-7")], "ok", "act-1", context_budget(), recorder)
    assert recorder.memories == [] and not (tmp_path / "memory").exists()


def context_budget() -> Any:
    from services.runner.loop import Budget

    return Budget(max_iterations=1, max_tokens=1000, deadline=1e12)

"""Agent memory (issue 19): `python -m bench memory` (`just bench memory`).

- recall@5 of each strategy on the labelled set bench/data/memory_recall.json (220 memories, 50 questions,
  each asked in other words than its fact): the share of questions whose memory is among the 5 retrieved,
  ranked only (threshold 0) and at the threshold each strategy would run with (0.7: the published one);
- retrieval latency p50/p99 at 100, 1,000 and 10,000 memories per agent (the labelled set padded with
  generated memories), per strategy, warm (the agent's BM25 index / embedding matrix already built: every
  activation after the first while its memories are unchanged) and cold (built in this call: the first
  activation, or the first after a write), plus the store read (`Index.load`: a listing, with the parsed
  entries cached per process) on a directory store;
- what memory adds to one activation: the time of `recall` and `remember` (store writes and the extraction
  call against the scripted LLM, whose latency is zero: the model's own time comes on top), and the tokens:
  the memories section given to the model (estimated at 3.5 characters a token) and the extraction call's
  input and output. The baseline, an activation of an agent without memory, adds nothing: 0 ms, 0 tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from botburrow.definitions.parse import parse_agent
from botburrow.doubles.scripted_llm import ScriptedLLM
from schemas.hub import Notification
from services.runner.loop import Budget
from services.runner.memory.index import Entry, Index, Snapshot
from services.runner.memory.items import MemoryItem, item_key, render
from services.runner.memory.retrieval import Retriever, WordLlamaEmbedder
from services.runner.memory.service import AgentMemory
from services.runner.memory.store import DirectoryStore
from services.runner.recorded import CollectingRecorder

DATA = Path(__file__).parent / "data" / "memory_recall.json"
STRATEGIES = ("embedding_search", "keyword", "recent")
SIZES = (100, 1_000, 10_000)
QUERIES_PER_SIZE = 50
CHARS_PER_TOKEN = 3.5
WORDS = ("deploy parser review cache queue token bucket metrics latency index rust typescript release schema "
         "billing search webhook terraform kafka grafana login flaky benchmark migration incident rollout").split()


def labelled() -> tuple[list[MemoryItem], list[dict[str, Any]]]:
    doc = json.loads(DATA.read_text())
    items = [MemoryItem(id=m["id"], agent="bench", kind=m["kind"], who=m["who"],
                        when=f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", text=m["text"])
             for i, m in enumerate(doc["memories"])]
    return items, doc["questions"]


def snapshot_of(items: list[MemoryItem], agent: str = "bench") -> Snapshot:
    return Snapshot(agent, [Entry(key=item_key(i), etag=i.id, size=len(i.text), item=i) for i in items])


def padded(items: list[MemoryItem], size: int) -> list[MemoryItem]:
    rng = random.Random(size)
    extra = [MemoryItem(id=f"g{n}", agent="bench", kind="conversation", who=rng.choice(["ron", "ana", "mika"]),
                        when=f"2026-10-{1 + n % 28:02d}T00:00:00Z",
                        text=" ".join(rng.choice(WORDS) for _ in range(14))) for n in range(max(0, size - len(items)))]
    return (items + extra)[:size]


async def recall_at_5(retriever: Retriever, items: list[MemoryItem], questions: list[dict[str, Any]]) -> dict[str, Any]:
    snap = snapshot_of(items)
    result: dict[str, Any] = {}
    for strategy in STRATEGIES:
        for label, threshold in (("ranked", 0.0), ("at_threshold_0.7", 0.7)):
            hits = 0
            for q in questions:
                found = await retriever.retrieve(strategy, snap, q["question"], 5, threshold)
                hits += any(s.entry.item.id in q["answer_ids"] for s in found)
            result.setdefault(strategy, {})[label] = round(hits / len(questions), 3)
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def latencies(retriever: Retriever, items: list[MemoryItem], questions: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in SIZES:
        snap = snapshot_of(padded(items, size), agent=f"bench-{size}")
        row: dict[str, Any] = {}
        for strategy in STRATEGIES:
            retriever._bm25.clear()
            retriever._vectors.clear()
            started = time.perf_counter()
            await retriever.retrieve(strategy, snap, questions[0]["question"], 10, 0.0)
            cold_ms = (time.perf_counter() - started) * 1e3
            warm = []
            for q in (questions * 2)[:QUERIES_PER_SIZE]:
                started = time.perf_counter()
                await retriever.retrieve(strategy, snap, q["question"], 10, 0.0)
                warm.append((time.perf_counter() - started) * 1e3)
            row[strategy] = {"cold_ms": round(cold_ms, 2), "warm_p50_ms": pct(warm, 0.5),
                             "warm_p99_ms": pct(warm, 0.99)}
        row["store_load"] = await store_load(padded(items, size))
        out[str(size)] = row
    return out


async def store_load(items: list[MemoryItem]) -> dict[str, float]:
    """`Index.load` on a directory store: cold (a new process: index.json read and every missing item fetched,
    at most FETCH_MAX a load, so it is loaded until whole) and warm (the listing alone)."""
    with tempfile.TemporaryDirectory() as root:
        store = DirectoryStore(Path(root))
        for item in items:
            await store.put("bench", item_key(item), render(item))
        cold_index = Index(store)
        started = time.perf_counter()
        while len((await cold_index.load("bench")).entries) < len(items):
            pass
        cold_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        await Index(store).load("bench")  # index.json now whole: one read, no item fetched
        from_index_ms = (time.perf_counter() - started) * 1e3
        warm = []
        for _ in range(10):
            started = time.perf_counter()
            await cold_index.load("bench")
            warm.append((time.perf_counter() - started) * 1e3)
    return {"rebuild_ms": round(cold_ms, 1), "from_index_json_ms": round(from_index_ms, 1),
            "warm_p50_ms": pct(warm, 0.5)}


async def activation_cost(items: list[MemoryItem]) -> dict[str, Any]:
    """One activation's memory work, on 1,000 memories, with the extraction call answered by the scripted LLM."""
    block = ("memory:\n  enabled: true\n  remember: {conversations_with: [ron], decisions_made: true}\n"
             "  retrieval: {strategy: embedding_search, max_context_items: 10, relevance_threshold: 0.7}\n")
    yaml_text = (b"name: bench-agent\ntype: native\nbrain: {provider: anthropic, model: bench-model}\n"
                 b"capabilities: {grants: [hub:read, hub:write]}\n" + block.encode())
    definition = parse_agent("bench-agent", yaml_text, b"You are a bench agent.")
    note = msgspec.convert({"id": "n-1", "type": "mention", "content": "what is the staging database called?",
                            "post_id": "p-1", "from": {"name": "ron"}}, Notification)
    llm = ScriptedLLM()
    await llm.start()
    try:
        llm.set_script([{"text": '{"kind": "decision", "text": "staging stays on marmot-7"}'}] * 20)
        with tempfile.TemporaryDirectory() as root:
            store = DirectoryStore(Path(root))
            for item in padded(items, 1_000):
                await store.put("bench-agent", item_key(item), render(item.__class__(**{
                    **{f: getattr(item, f) for f in item.__struct_fields__}, "agent": "bench-agent"})))
            memory = AgentMemory(store, open_model=_model(llm), retriever=Retriever(WordLlamaEmbedder()))
            recall_ms, remember_ms, tokens = [], [], []
            for _ in range(10):
                recorder = CollectingRecorder()
                started = time.perf_counter()
                section = await memory.recall(definition, [note], None, 2_000, recorder)
                recall_ms.append((time.perf_counter() - started) * 1e3)
                tokens.append(len(section) / CHARS_PER_TOKEN)
                budget = Budget(max_iterations=10, max_tokens=10**6, deadline=time.monotonic() + 60)
                started = time.perf_counter()
                await memory.remember(definition, [note], "It is marmot-7.", "act-bench", budget, recorder)
                remember_ms.append((time.perf_counter() - started) * 1e3)
            write = [m for m in recorder.memories if m["op"] == "write"][-1]
    finally:
        await llm.stop()
    return {"memories": 1_000, "recall_p50_ms": pct(recall_ms[1:], 0.5), "recall_first_ms": round(recall_ms[0], 1),
            "remember_p50_ms": pct(remember_ms, 0.5), "memories_section_tokens_p50": round(statistics.median(tokens)),
            "extraction_input_tokens": write.get("input_tokens", 0),
            "extraction_output_tokens": write.get("output_tokens", 0),
            "baseline_without_memory": {"ms": 0, "tokens": 0}}


def _model(llm: ScriptedLLM) -> Any:
    async def open_model(definition: Any) -> Any:
        from services.runner.modelaccess import ModelAccess
        from services.runner.seams import load_providers

        providers = await load_providers()
        return providers.model_for(definition.config.brain, ModelAccess(base_url_override=llm.url),
                                   {"ANTHROPIC_API_KEY": "bench-key-not-secret"}, timeout_s=30)

    return open_model


async def main(results_dir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    items, questions = labelled()
    retriever = Retriever(WordLlamaEmbedder())
    await retriever.retrieve("embedding_search", snapshot_of(items[:2]), "warm up the model", 1, 0.0)
    return {
        "labelled_set": {"memories": len(items), "questions": len(questions), "file": "bench/data/memory_recall.json"},
        "recall_at_5": await recall_at_5(retriever, items, questions),
        "retrieval_latency": await latencies(retriever, items, questions),
        "per_activation": await activation_cost(items),
        "machine": {"cpus": os.cpu_count(), "load_1m_5m_15m_before": [round(x, 2) for x in load_before],
                    "load_1m_5m_15m_after": [round(x, 2) for x in os.getloadavg()]},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(__file__).parent / "results")), indent=2))

"""Which memories an activation is given, by the definition's `retrieval.strategy`.

Every strategy returns at most `max_context_items` memories, best first, each with a relevance in
[0, 1]; `relevance_threshold` then means, per strategy:

- `embedding_search`: relevance is (1 + cosine similarity) / 2 between the query (the notifications'
  text) and the memory, embedded by wordllama (offline: its weights ship in its wheel) or by an
  OpenAI-compatible `/v1/embeddings` endpoint (MEMORY_EMBEDDINGS_URL). 0.5 is unrelated; a memory is kept
  at or above the threshold (the published 0.7 is a cosine of 0.4: wordllama scores a paraphrase about
  0.4-0.6 and unrelated text near 0).
- `keyword`: BM25 (the bm25s library) over the memories' text, English stop words out; relevance is a
  memory's score over the best score of this query, so the best match is 1.0 and the threshold keeps
  the matches within that fraction of it. A memory sharing no term with the query is never kept.
- `recent`: the newest memories; relevance is 1.0 for all, so the threshold does not apply.

The retrieval is pure CPU over a snapshot: it runs in a thread (a 10,000-memory BM25 index or an
embedding matrix must not stall the event loop), and the index or matrix is kept per agent until the
agent's memories change (bench/memory.py has the latencies).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from services.runner.memory.index import Entry, Snapshot

# What stays built per runner process, least recently used dropped first: at most this many agents, and at
# most this many memories over all of them (an embedding row is 1 KiB: 50,000 are about 50 MiB).
CACHE_AGENTS = 64
CACHE_ROWS = 50_000


@dataclass(frozen=True)
class Scored:
    entry: Entry
    relevance: float


class EmbeddingsDown(Exception):
    """The embeddings endpoint did not answer usefully; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Embedder(Protocol):
    name: str

    async def embed(self, texts: Sequence[str]) -> Any:
        """A (len(texts), dim) float32 matrix, rows L2-normalised."""


class WordLlamaEmbedder:
    """wordllama's bundled 256-dimension model, loaded once per process (about 1 s, in a thread)."""

    name = "wordllama"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from pathlib import Path

                import wordllama

                # The wheel ships weights/ and tokenizers/ beside its code: pointing the cache there and
                # forbidding downloads makes it load with no network (its default looks elsewhere first).
                self._model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent,
                                                       disable_download=True)
            return self._model

    def embed_sync(self, texts: Sequence[str]) -> Any:
        import numpy as np

        vectors = np.asarray(self._load().embed(list(texts)), dtype=np.float32)
        return _normalised(vectors)

    async def embed(self, texts: Sequence[str]) -> Any:
        return await asyncio.to_thread(self.embed_sync, texts)


class EndpointEmbedder:
    """An OpenAI-compatible `POST <base>/embeddings` (MEMORY_EMBEDDINGS_URL, MEMORY_EMBEDDINGS_MODEL)."""

    BATCH = 256

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        import httpx

        self.name = f"{base_url} ({model})"
        self.base_url, self.model = base_url.rstrip("/"), model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def embed(self, texts: Sequence[str]) -> Any:
        import httpx
        import numpy as np

        rows: list[list[float]] = []
        for start in range(0, len(texts), self.BATCH):
            batch = list(texts[start:start + self.BATCH])
            try:
                response = await self._client.post(f"{self.base_url}/embeddings",
                                                   json={"model": self.model, "input": batch})
                response.raise_for_status()
                data = msgspec.json.decode(response.content, type=_Embeddings).data
            except httpx.HTTPStatusError as exc:
                raise EmbeddingsDown(f"embeddings endpoint answered {exc.response.status_code}") from None
            except httpx.HTTPError as exc:
                raise EmbeddingsDown(f"embeddings endpoint unreachable: {type(exc).__name__}") from None
            except (ValueError, msgspec.ValidationError) as exc:
                raise EmbeddingsDown(f"embeddings endpoint answer unreadable: {str(exc)[:100]}") from None
            if len(data) != len(batch) or len({len(d.embedding) for d in data}) > 1:
                raise EmbeddingsDown("embeddings endpoint answered the wrong number or shape of vectors")
            rows += [d.embedding for d in sorted(data, key=lambda d: d.index)]
        return _normalised(np.asarray(rows, dtype=np.float32))

    async def aclose(self) -> None:
        await self._client.aclose()


class _Embedding(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


def _normalised(vectors: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def memory_text(entry: Entry) -> str:
    item = entry.item
    return f"{item.kind} {item.who} {item.text}"


def recent(snapshot: Snapshot, limit: int) -> list[Scored]:
    newest = sorted(snapshot.entries, key=lambda e: (e.item.when, e.key), reverse=True)
    return [Scored(e, 1.0) for e in newest[:limit]]


class Retriever:
    """The strategies, with what each keeps built per agent (keyed by the snapshot's signature)."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or WordLlamaEmbedder()
        self._bm25: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._vectors: OrderedDict[str, tuple[Any, ...]] = OrderedDict()

    async def retrieve(self, strategy: str, snapshot: Snapshot, query: str, limit: int,
                       threshold: float) -> list[Scored]:
        if not snapshot.entries:
            return []
        if strategy == "recent":
            return recent(snapshot, limit)
        if strategy == "keyword":
            return await asyncio.to_thread(self._keyword, snapshot, query, limit, threshold)
        return await self._embedding(snapshot, query, limit, threshold)

    def _keyword(self, snapshot: Snapshot, query: str, limit: int, threshold: float) -> list[Scored]:
        import bm25s

        retriever = _cached(self._bm25, snapshot, lambda: _bm25_index(snapshot))
        query_tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not query_tokens.vocab:
            return []
        docs, scores = retriever.retrieve(query_tokens, k=min(limit, len(snapshot.entries)), show_progress=False,
                                          n_threads=1)
        best = float(scores[0][0]) if scores.size else 0.0
        if best <= 0:
            return []
        return [Scored(snapshot.entries[int(i)], round(float(s) / best, 4))
                for i, s in zip(docs[0], scores[0], strict=True) if s > 0 and float(s) / best >= threshold]

    async def _embedding(self, snapshot: Snapshot, query: str, limit: int, threshold: float) -> list[Scored]:
        import numpy as np

        sig = hash(snapshot.signature)
        held = self._vectors.get(snapshot.agent)
        if held is None or held[0] != sig:
            matrix = await self.embedder.embed([memory_text(e) for e in snapshot.entries])
            _keep(self._vectors, snapshot.agent, (sig, matrix), len(snapshot.entries))
        else:
            matrix = held[1]
        query_vector = (await self.embedder.embed([query]))[0]
        relevance = (1.0 + matrix @ query_vector) / 2.0
        order = np.argsort(-relevance)[:limit]
        return [Scored(snapshot.entries[int(i)], round(float(relevance[i]), 4)) for i in order
                if relevance[i] >= threshold]


def _bm25_index(snapshot: Snapshot) -> Any:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([memory_text(e) for e in snapshot.entries], stopwords="en", show_progress=False),
                    show_progress=False)
    return retriever


def _cached(cache: OrderedDict[str, tuple[Any, ...]], snapshot: Snapshot, build: Any) -> Any:
    sig = hash(snapshot.signature)
    held = cache.get(snapshot.agent)
    if held is not None and held[0] == sig:
        return held[1]
    value = build()
    _keep(cache, snapshot.agent, (sig, value), len(snapshot.entries))
    return value


def _keep(cache: OrderedDict[str, tuple[Any, ...]], agent: str, value: tuple[Any, Any], rows: int) -> None:
    cache[agent] = (*value, rows)
    cache.move_to_end(agent)
    while len(cache) > 1 and (len(cache) > CACHE_AGENTS or sum(v[-1] for v in cache.values()) > CACHE_ROWS):
        cache.popitem(last=False)

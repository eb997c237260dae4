"""An activation's memory: `recall` before thinking, `remember` after posting (the `Memories` seam).

`AgentMemory` is the runner's (one per process: its store client, index cache, retriever and embedder
are shared by every activation). `NoMemory` is for a runner without MEMORY_STORE: an agent whose
definition enables memory then gets a `memory` event saying so, and nothing else changes. Whatever goes
wrong here (the store down or missing, unreadable objects, the embeddings endpoint down, the extraction
call failing) ends in a `memory` event with the reason and the activation going on without memory:
never a failure, never a retry. After a store or endpoint failure the runner rests it for REST_S (one
event per activation meanwhile, no request), so a dead store costs no retry storm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import Gauge

from schemas.agent import AgentDefinition, Memory, Retrieval
from schemas.events import ContextCut, MemoryRef
from schemas.hub import Notification
from services.runner.memory import extraction
from services.runner.memory.index import Entry, Index, Snapshot, over_budget
from services.runner.memory.items import IMPORTANCE, ITEM_MAX_CHARS, MemoryItem, item_key, new_id, now_rfc3339, render
from services.runner.memory.redaction import redact
from services.runner.memory.retrieval import EmbeddingsDown, Retriever, Scored
from services.runner.memory.store import MemoryStore, StoreError

log = logging.getLogger(__name__)

REST_S = 30.0
EXTRACTION_TIMEOUT_S = 60.0
QUERY_MAX_CHARS = 2_000
HEADING = "## What you remember"
INTRO = "Notes kept from your earlier activations (best match first; they may be out of date):"
MEMORY_BYTES = Gauge("botburrow_memory_bytes", "Size of an agent's stored memories, as last seen by this runner",
                     ["agent_id"])


class MemoryLog(Protocol):
    async def memory(self, **fields: Any) -> None: ...


class Budgeted(Protocol):
    """What recall needs of the context ledger (services/runner/context.ContextLedger)."""

    tokens: dict[str, int]
    cuts: list[ContextCut]

    def estimate(self, text_or_chars: str | int) -> int: ...


class Charged(Protocol):
    """The activation's budget (loop.Budget): the extraction call's tokens are charged to it."""

    def charge(self, reply: Any) -> None: ...


ModelOpener = Callable[[AgentDefinition], Any]  # async: the brain's model client (the caller closes it)


class Memories(Protocol):
    """The seam an activation calls (Deps.memory): `AgentMemory` live, `NoMemory` without a store, the recorded
    retrievals offline (services/runner/recorded.py)."""

    async def recall(self, definition: AgentDefinition, notifications: Sequence[Notification], ledger: Any,
                     budget_tokens: int, recorder: MemoryLog) -> str:
        """The memories section to put before the task ("" for none); a `memory` event says what and why."""

    async def remember(self, definition: AgentDefinition, notifications: Sequence[Notification], answer: str,
                       activation_id: str, budget: Charged, recorder: MemoryLog) -> None:
        """Store what the definition's `remember` selects of this exchange (after it was posted)."""

    async def aclose(self) -> None: ...


def refs(scored: Sequence[Scored]) -> list[MemoryRef]:
    return [MemoryRef(id=s.entry.item.id, kind=s.entry.item.kind, who=s.entry.item.who, when=s.entry.item.when,
                      relevance=s.relevance, text=s.entry.item.text) for s in scored]


def section(items: Sequence[MemoryRef]) -> str:
    """The memories as the model is given them, under their own heading, in the task (the variable part)."""
    if not items:
        return ""
    lines = [HEADING, "", INTRO]
    for ref in items:
        about = f"{ref.kind} with {ref.who}" if ref.kind == "conversation" and ref.who else ref.kind
        lines.append(f"- [{ref.when[:10]}, {about}] {' '.join(ref.text.split())}")
    return "\n".join(lines) + "\n\n"


def fit(items: list[MemoryRef], ledger: Budgeted | None, budget_tokens: int) -> list[MemoryRef]:
    """The memories in order while they fit the memories budget; each one cut is recorded."""
    if ledger is None:
        return items
    kept: list[MemoryRef] = []
    for ref in items:
        size = ledger.estimate(ref.text) + 12  # its bullet's date and kind
        if ledger.tokens.get("memories", 0) + size > budget_tokens:
            ledger.cuts.append(ContextCut(part="memories", what=f"memory {ref.id}", tokens=size,
                                          reason=f"memories budget {budget_tokens} tokens ({len(kept)} kept)"))
            continue
        ledger.tokens["memories"] = ledger.tokens.get("memories", 0) + size
        kept.append(ref)
    return kept


def query_of(notifications: Sequence[Notification]) -> str:
    return " ".join(f"{n.from_.name}: {n.content}" for n in notifications)[:QUERY_MAX_CHARS]


def active(definition: AgentDefinition) -> Memory | None:
    memory = definition.config.memory
    return memory if memory is not None and memory.enabled else None


class NoMemory:
    """A runner without MEMORY_STORE: nothing is retrieved or written; a memory agent is told why."""

    REASON = "MEMORY_STORE is not set: this runner keeps no memory"

    async def recall(self, definition: AgentDefinition, notifications: Sequence[Notification], ledger: Any,
                     budget_tokens: int, recorder: MemoryLog) -> str:
        if active(definition) is not None:
            await recorder.memory(op="retrieve", reason=self.REASON)
        return ""

    async def remember(self, definition: AgentDefinition, notifications: Sequence[Notification], answer: str,
                       activation_id: str, budget: Charged, recorder: MemoryLog) -> None:
        if active(definition) is not None:
            await recorder.memory(op="write", reason=self.REASON)

    async def aclose(self) -> None:
        return None


class AgentMemory:
    def __init__(self, store: MemoryStore, open_model: ModelOpener | None = None,
                 retriever: Retriever | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.open_model = store, open_model
        self.index = Index(store)
        self.retriever = retriever or Retriever()
        self._clock = clock
        self._resting: dict[str, tuple[float, str]] = {}  # "store" / "embeddings" -> (until, reason)

    def _rest(self, what: str, reason: str) -> None:
        self._resting[what] = (self._clock() + REST_S, reason)
        log.warning("memory unavailable", extra={"what": what, "reason": reason, "rest_s": REST_S})

    def _rested(self, what: str) -> str | None:
        until, reason = self._resting.get(what, (0.0, ""))
        return f"{reason} (not retried for {REST_S:.0f} s)" if self._clock() < until else None

    async def _load(self, agent: str) -> Snapshot:
        snapshot = await self.index.load(agent)
        MEMORY_BYTES.labels(agent).set(snapshot.total_bytes)
        return snapshot

    async def recall(self, definition: AgentDefinition, notifications: Sequence[Notification], ledger: Any,
                     budget_tokens: int, recorder: MemoryLog) -> str:
        try:
            return await self._recall(definition, notifications, ledger, budget_tokens, recorder)
        except Exception as exc:  # memory is an aid: whatever breaks here, the activation goes on without it
            log.exception("memory retrieval failed", extra={"agent": definition.name})
            await recorder.memory(op="retrieve", reason=redact(f"memory failed: {type(exc).__name__}: {exc}")[:500])
            return ""

    async def remember(self, definition: AgentDefinition, notifications: Sequence[Notification], answer: str,
                       activation_id: str, budget: Charged, recorder: MemoryLog) -> None:
        try:
            await self._remember(definition, notifications, answer, activation_id, budget, recorder)
        except Exception as exc:  # as recall: the answer is posted already, the activation ends as it would
            log.exception("memory write failed", extra={"agent": definition.name})
            await recorder.memory(op="write", reason=redact(f"memory failed: {type(exc).__name__}: {exc}")[:500])

    async def _recall(self, definition: AgentDefinition, notifications: Sequence[Notification], ledger: Any,
                      budget_tokens: int, recorder: MemoryLog) -> str:
        memory = active(definition)
        if memory is None:
            return ""
        retrieval = memory.retrieval or Retrieval()  # the schema's defaults: embedding_search, 10, 0.7
        strategy, query, started = retrieval.strategy, query_of(notifications), time.monotonic()
        fields: dict[str, Any] = {"op": "retrieve", "strategy": strategy, "query": redact(query)}
        if (resting := self._rested("store") or (strategy == "embedding_search" and self._rested("embeddings"))):
            await recorder.memory(**fields, reason=resting)
            return ""
        try:
            snapshot = await self._load(definition.name)
            scored = await self.retriever.retrieve(strategy, snapshot, query, retrieval.max_context_items,
                                                   retrieval.relevance_threshold)
        except StoreError as exc:
            self._rest("store", exc.reason)
            await recorder.memory(**fields, reason=f"store unavailable: {exc.reason}")
            return ""
        except EmbeddingsDown as exc:
            self._rest("embeddings", exc.reason)
            await recorder.memory(**fields, reason=exc.reason)
            return ""
        items = fit(refs(scored), ledger, budget_tokens)
        await recorder.memory(**fields, items=items, reason="; ".join(snapshot.problems)[:1000] or None,
                              store_bytes=snapshot.total_bytes, duration_ms=_ms_since(started))
        return section(items)

    async def _remember(self, definition: AgentDefinition, notifications: Sequence[Notification], answer: str,
                        activation_id: str, budget: Charged, recorder: MemoryLog) -> None:
        memory = active(definition)
        if memory is None or memory.remember is None:
            return
        started = time.monotonic()
        items = self._conversations(definition, memory, notifications, answer, activation_id)
        extracted, call = await self._extract(definition, memory, notifications, answer, activation_id, budget)
        items += extracted
        fields: dict[str, Any] = {"op": "write", **call}
        if not items:
            if call:
                await recorder.memory(**fields, duration_ms=_ms_since(started))
            return
        if (resting := self._rested("store")) is not None:
            await recorder.memory(**fields, reason=resting)
            return
        try:
            written = [await self._put(definition.name, item) for item in items]
            snapshot = await self._load(definition.name)
            await self._evict(definition, memory, snapshot, recorder)
        except StoreError as exc:
            self._rest("store", exc.reason)
            await recorder.memory(**fields, reason=f"store unavailable: {exc.reason}")
            return
        await recorder.memory(**fields, items=[MemoryRef(id=i.id, kind=i.kind, who=i.who, when=i.when, text=i.text)
                                               for i in written],
                              store_bytes=snapshot.total_bytes,
                              duration_ms=_ms_since(started))

    def _conversations(self, definition: AgentDefinition, memory: Memory, notifications: Sequence[Notification],
                       answer: str, activation_id: str) -> list[MemoryItem]:
        assert memory.remember is not None
        people = {p.lower() for p in memory.remember.conversations_with}
        items = []
        for n in notifications:
            who = n.from_.name
            if who.lower() not in people:
                continue
            text = redact(f"{who} ({n.type}): {n.content.strip()}\nI answered: {answer.strip()}")[:ITEM_MAX_CHARS]
            items.append(MemoryItem(id=new_id(), agent=definition.name, kind="conversation", who=who,
                                    when=now_rfc3339(), source=source_of(n), activation_id=activation_id,
                                    importance=IMPORTANCE["conversation"], text=text))
        return items

    async def _extract(self, definition: AgentDefinition, memory: Memory, notifications: Sequence[Notification],
                       answer: str, activation_id: str, budget: Charged) -> tuple[list[MemoryItem], dict[str, Any]]:
        assert memory.remember is not None
        kinds = extraction.kinds_wanted(memory.remember)
        if not kinds or self.open_model is None or not notifications:
            return [], {}
        from services.runner.transcript import ModelError, UserText

        exchange = "\n\n".join(f"{n.from_.name} ({n.type}): {n.content}" for n in notifications)
        system, user = extraction.prompt(redact(f"{exchange}\n\nThe agent ({definition.name}) answered: {answer}"),
                                         kinds)
        call: dict[str, Any] = {"model": definition.config.brain.model}
        try:
            model = await self.open_model(definition)
            try:
                reply = await model.complete(system, [UserText(user)], [])
            finally:
                await model.aclose()
        except ModelError as exc:
            return [], {**call, "reason": redact(f"extraction call failed: {exc}")[:500]}
        budget.charge(reply)
        call.update(input_tokens=reply.input_tokens + reply.cache_write_tokens + reply.cache_read_tokens,
                    output_tokens=reply.output_tokens)
        source = source_of(notifications[0])
        who = notifications[0].from_.name
        items = [MemoryItem(id=new_id(), agent=definition.name, kind=kind, who=who, when=now_rfc3339(),
                            source=source, activation_id=activation_id, importance=IMPORTANCE[kind],
                            text=redact(text)) for kind, text in extraction.parse_answer(reply.text, kinds)]
        return items, call

    async def _put(self, agent: str, item: MemoryItem) -> MemoryItem:
        key = item_key(item)
        data = render(item)
        etag = await self.store.put(agent, key, data)
        self.index.remember_entry(agent, Entry(key=key, etag=etag, size=len(data), item=item))
        return item

    async def _evict(self, definition: AgentDefinition, memory: Memory, snapshot: Snapshot,
                     recorder: MemoryLog) -> None:
        doomed = over_budget(snapshot.entries, memory.max_size_mb << 20, snapshot.total_bytes)
        if not doomed:
            return
        for entry in doomed:
            await self.store.delete(definition.name, entry.key)
            self.index.forget_cached(definition.name, entry.key)
            log.info("memory evicted", extra={"agent": definition.name, "key": entry.key, "bytes": entry.size,
                                              "kind": entry.item.kind, "when": entry.item.when,
                                              "max_size_mb": memory.max_size_mb})
        gone = {e.key for e in doomed}
        snapshot.entries = [e for e in snapshot.entries if e.key not in gone]
        snapshot.listed_bytes = snapshot.total_bytes - sum(e.size for e in doomed)
        await self.index.write_index(snapshot)
        MEMORY_BYTES.labels(definition.name).set(snapshot.total_bytes)
        await recorder.memory(op="evict", store_bytes=snapshot.total_bytes,
                              reason=f"over max_size_mb {memory.max_size_mb}: low importance first, oldest first",
                              items=[MemoryRef(id=e.item.id, kind=e.item.kind, who=e.item.who, when=e.item.when)
                                     for e in doomed])

    async def aclose(self) -> None:
        await self.store.close()
        aclose = getattr(self.retriever.embedder, "aclose", None)
        if aclose is not None:
            await aclose()


def source_of(n: Notification) -> str:
    if n.type == "dm":
        return f"dm {n.dm_id}"
    return f"comment {n.comment_id} on post {n.post_id}" if n.comment_id else f"post {n.post_id}"



def _ms_since(started_s: float) -> float:
    return round((time.monotonic() - started_s) * 1e3, 2)


def from_settings(settings: Any, environ: Mapping[str, str], config: Any) -> Memories:
    """The runner's memory from its settings (RunnerSettings) and RunnerConfig: `NoMemory` without MEMORY_STORE."""
    from botburrow.secrets import read_secret
    from services.runner.memory.retrieval import EndpointEmbedder
    from services.runner.memory.store import open_store

    if not settings.memory_store:
        return NoMemory()
    store = open_store(settings.memory_store, endpoint=settings.memory_s3_endpoint,
                       access_key=read_secret("memory-access-key", environ=environ),
                       secret_key=read_secret("memory-secret-key", environ=environ))
    embedder = None
    if settings.memory_embeddings_url:
        embedder = EndpointEmbedder(settings.memory_embeddings_url, settings.memory_embeddings_model,
                                    api_key=read_secret("memory-embeddings-key", environ=environ))

    async def open_model(definition: AgentDefinition) -> Any:
        # The agent's own brain, endpoint and key, as its thinking resolves them (modelaccess).
        from services.runner.seams import load_providers

        providers = await load_providers()
        return providers.model_for(definition.config.brain, config.access, environ, timeout_s=EXTRACTION_TIMEOUT_S)

    return AgentMemory(store, open_model, Retriever(embedder))

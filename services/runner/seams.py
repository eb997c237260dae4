"""The places an activation is extended, each a small protocol with the runner's default beside it.
`Activation` is driven only through these; an offline re-run plugs in recorded ones (`recorded`):

- `GrantResolver`: which of a config's grants the agent holds (the cluster policy, contract §3);
- `ModelGate`: whether a config's model key and endpoint are allowed (modelaccess.ModelAccess);
- `HubReads`: the Hub content an activation reads before thinking (the threads, exploration candidates);
- `ToolsetFactory`: the tools an activation may call (Hub tools, MCP servers), opened and closed around
  the thinking;
- `Thinker`: how an executor type turns a prompt into a final answer (the native loop over a `Models`
  seam; the CLIs);
- `Posters`: posting as the agent (posting.Poster: once, within its limits);
- `EventLog`: the activation's run events (runlog.RunLog).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from botburrow.hub.client import HubClient
from schemas.agent import AgentDefinition, Brain, SkillDefinition
from schemas.events import ActivationMetrics
from schemas.hub import Notification, Post
from services.runner.config import RunnerConfig
from services.runner.context import ContextLedger, Cuts, request_chars
from services.runner.loop import Budget, Recorder, Toolbox, ToolOutcome, run_loop
from services.runner.modelaccess import Endpoint
from services.runner.posting import PostResult, Target, Usage
from services.runner.transcript import Entry, Model, ModelReply, ToolSpec, UserText


class ExecutorUnavailable(Exception):
    """The agent's executor cannot run on this runner (its CLI is not installed): the request can never
    succeed here as it is, so the activation fails and the request is dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Directory(Protocol):
    """The definitions an activation reads (botburrow.definitions.AgentDirectory)."""

    def get(self, name: str) -> AgentDefinition | None: ...

    def skills(self) -> Mapping[str, SkillDefinition]: ...


class Keys(Protocol):
    """The agents' Hub keys (botburrow.secrets.AgentKeys)."""

    def get(self, name: str) -> str | None: ...


class GrantResolver(Protocol):
    def resolve(self, definition: AgentDefinition) -> set[str]: ...


class AllowWhatConfigsAsk:
    """No policy file: an agent holds every grant its config asks for (contract §3)."""

    def resolve(self, definition: AgentDefinition) -> set[str]:
        return set(definition.config.capabilities.grants)


@dataclass
class ToolContext:
    definition: AgentDefinition
    agent_key: str
    grants: set[str]
    activation_id: str
    poster: Posting | None  # None where no Hub tool is offered (an MCP-only context: benchmarks, tests)
    hub: HubClient | None  # None offline: no Hub is reached
    workspace: Path | None = None
    recorder: Recorder | None = None
    # The skills chosen for this activation (a skill may bring its own MCP server).
    # None: not chosen yet (the skills the config lists apply).
    skills: list[SkillDefinition] | None = None
    # Threads (post id, parent id) answered through a tool: the final answer is not posted there again.
    commented: set[tuple[str, str | None]] = field(default_factory=set)


class ModelGate(Protocol):
    def check(self, brain: Brain) -> None:
        """Raise modelaccess.ModelAccessRefused for a key or endpoint the operator does not allow."""


class HubReads(Protocol):
    async def thread(self, key: str, notification: Notification, cuts: Cuts) -> tuple[str | None, str | None]:
        """The notification's thread as the model is shown it, and its community (None, None: no thread)."""

    async def candidates(self, definition: AgentDefinition, key: str) -> list[Post]:
        """The posts an exploration may answer."""


class Posting(Protocol):
    """What an activation asks of posting (posting.Poster)."""

    async def already_posted(self, idempotency_key: str) -> bool: ...

    async def usage(self) -> Usage: ...

    async def refusal(self, usage: Usage, target: Target) -> str | None: ...

    async def publish(self, idempotency_key: str, target: Target, text: str) -> PostResult: ...


class Posters(Protocol):
    def for_agent(self, definition: AgentDefinition, key: str) -> Posting: ...


class EventLog(Recorder, Protocol):
    """The activation's run events (runlog.RunLog); `attempt` is the request's delivery count."""

    attempt: int

    async def started(self, tool_type: str, model: str, runner: str) -> None: ...

    async def posted(self, **fields: Any) -> None: ...

    async def memory(self, **fields: Any) -> None:
        """A `memory` event (schemas.events.MemoryUsed): what the activation's memory retrieved or wrote."""

    async def finished(self, metrics: ActivationMetrics) -> None: ...

    def note_context(self, ledger: ContextLedger) -> None:
        """The activation's context ledger: its report goes with the first model turn's event."""


class ToolsetFactory(Protocol):
    def open(self, ctx: ToolContext) -> contextlib.AbstractAsyncContextManager[Toolbox]: ...


@dataclass
class ThinkRequest:
    definition: AgentDefinition
    system: str
    task: str
    toolbox: Toolbox
    budget: Budget  # the activation's: whatever thinks charges it
    recorder: Recorder
    config: RunnerConfig
    secrets: Mapping[str, str]  # where model keys are read (botburrow.secrets), nothing else
    activation_id: str
    tools: ToolContext
    # The prompt's parts against their token budgets (None: no budget, nothing calibrated: tests, tools).
    context: ContextLedger | None = None


class Thinker(Protocol):
    async def think(self, request: ThinkRequest) -> str: ...


_providers: ModuleType | None = None


async def load_providers() -> ModuleType:
    """The model adapters (`providers`), imported in a thread: importing `anthropic` costs seconds of CPU,
    which on the event loop (in a first activation) would stall every heartbeat. The runner starts this
    at start-up without waiting for it (a restarted runner is ready seconds sooner), so a first
    activation usually finds it loaded; once loaded, this costs nothing."""
    global _providers
    if _providers is None:
        _providers = await asyncio.to_thread(importlib.import_module, "services.runner.providers")
    return _providers


class Models(Protocol):
    async def open(self, request: ThinkRequest) -> Model:
        """The model for the request's brain; the caller closes it (`aclose`: its own, never a shared client)."""


class ModelClients:
    """The model HTTP clients of one runner process (issue 18): one per endpoint and key, by
    `Endpoint.identity` (protocol, base URL and a hash of the key: a rotated key gets its own), built on
    first use and shared by every activation with its connection pool and TLS context; closed by `aclose`
    at shutdown. Building one costs tens of ms of CPU (the SDK, the CA store): once per endpoint, never per
    activation. `client` is called in a worker thread (it reads the key), hence the lock."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def client(self, endpoint: Endpoint, build: Callable[[Endpoint], Any]) -> Any:
        with self._lock:
            client = self._clients.get(endpoint.identity)
            if client is None:
                client = self._clients[endpoint.identity] = build(endpoint)
            return client

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        if not clients:
            return  # nothing built (no model call yet): the adapters need not even be imported
        providers = await load_providers()
        for client in clients:
            await providers.close_client(client)


class ProviderModels:
    """The runner's models: the providers' adapters, endpoint and key by the one resolution (ModelAccess),
    over the process's shared clients."""

    def __init__(self, clients: ModelClients | None = None) -> None:
        self.clients = clients if clients is not None else ModelClients()

    async def open(self, request: ThinkRequest) -> Model:
        providers = await load_providers()
        # In a thread: the key is read at the moment it is used (a file under SECRETS_DIR), and a first
        # client for an endpoint is built (CPU, the CA store): neither on the event loop.
        model: Model = await asyncio.to_thread(providers.model_for, request.definition.config.brain,
                                               request.config.access, request.secrets, timeout_s=120,
                                               clients=self.clients)
        return model

    async def aclose(self) -> None:
        await self.clients.aclose()


class NativeThinker:
    """`type: native`: the agent loop against the model (contract §4)."""

    def __init__(self, models: Models | None = None) -> None:
        self.models = models or ProviderModels()

    async def think(self, request: ThinkRequest) -> str:
        model = await self.models.open(request)
        toolbox: Toolbox = request.toolbox
        if request.context is not None:
            toolbox = BudgetedToolbox(toolbox, request.context)
            model = CalibratingModel(model, request.context)
        try:
            text = await run_loop(model, request.system, [UserText(request.task)], toolbox, request.budget,
                                  request.recorder)
        finally:
            await model.aclose()  # the activation's handle; a shared client stays open (ModelClients)
        return text.strip()


class BudgetedToolbox:
    """The toolbox's tools within the tools budget (`ContextLedger.fit_tools`, once); calls pass through."""

    def __init__(self, toolbox: Toolbox, ledger: ContextLedger) -> None:
        self.toolbox = toolbox
        self._specs = ledger.fit_tools(toolbox.specs())

    def specs(self) -> list[ToolSpec]:
        return self._specs

    async def call(self, name: str, arguments: dict[str, object]) -> ToolOutcome:
        return await self.toolbox.call(name, arguments)


class CalibratingModel:
    """A model whose every answered request teaches the estimator its model's chars per token: the
    characters sent against the input tokens the provider reported (uncached, written and read)."""

    def __init__(self, inner: Model, ledger: ContextLedger) -> None:
        self.inner, self.ledger = inner, ledger
        self.provider, self.model = inner.provider, inner.model

    async def complete(self, system: str, transcript: list[Entry], tools: list[ToolSpec]) -> ModelReply:
        reply = await self.inner.complete(system, transcript, tools)
        tokens = reply.input_tokens + reply.cache_write_tokens + reply.cache_read_tokens
        self.ledger.estimator.observe(self.ledger.model, request_chars(system, transcript, tools), tokens)
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


class HubToolsOnly:
    """The default toolset: the Hub tools, served in-process (contract §3 allows it for the native loop)."""

    @contextlib.asynccontextmanager
    async def open(self, ctx: ToolContext) -> AsyncIterator[Toolbox]:
        from services.runner.hubtools import HubTools

        assert ctx.hub is not None and ctx.poster is not None
        yield HubTools(ctx.hub, ctx.agent_key, ctx.grants, ctx.poster, ctx.activation_id, ctx.commented)

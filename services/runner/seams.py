"""The three places an activation is extended, each a small protocol with a default:

- `GrantResolver`: which of a config's grants the agent holds (the cluster policy, contract §3);
- `ToolsetFactory`: the tools an activation may call (Hub tools; MCP servers later), opened and
  closed around the thinking;
- `Thinker`: how an executor type turns a prompt into a final answer (the native loop; the CLIs).

`Activation` (posting, limits, the event log) stays the same whatever is plugged in.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol

from schemas.agent import AgentDefinition, SkillDefinition
from services.runner.loop import LoopLimits, LoopResult, Recorder, Toolbox, run_loop
from services.runner.transcript import UserText


class ExecutorUnavailable(Exception):
    """The agent's executor cannot run on this runner (its CLI is not installed): the request can never
    succeed here as it is, so the activation fails and the request is dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    poster: object  # posting.Poster
    hub: object  # HubClient
    workspace: Path | None = None
    recorder: Recorder | None = None
    # The skills chosen for this activation (a skill may bring its own MCP server).
    # None: not chosen yet (the skills the config lists apply).
    skills: list[SkillDefinition] | None = None
    # Threads (post id, parent id) answered through a tool: the final answer is not posted there again.
    commented: set[tuple[str, str | None]] = field(default_factory=set)


class ToolsetFactory(Protocol):
    def open(self, ctx: ToolContext) -> contextlib.AbstractAsyncContextManager[Toolbox]: ...


@dataclass
class ThinkRequest:
    definition: AgentDefinition
    system: str
    task: str
    toolbox: Toolbox
    limits: LoopLimits
    recorder: Recorder
    totals: LoopResult
    environ: Mapping[str, str]
    activation_id: str
    tools: ToolContext


class Thinker(Protocol):
    async def think(self, request: ThinkRequest) -> str: ...


async def load_providers() -> ModuleType:
    """The model adapters (`providers`), imported in a thread: importing `anthropic` costs seconds of CPU,
    which on the event loop (in a first activation) would stall every heartbeat. The runner starts this
    at start-up without waiting for it (a restarted runner is ready seconds sooner), so a first
    activation usually finds it loaded; once loaded, this costs a thread hop."""
    return await asyncio.to_thread(importlib.import_module, "services.runner.providers")


class NativeThinker:
    """`type: native`: the agent loop against the model API (contract §4)."""

    async def think(self, request: ThinkRequest) -> str:
        model = (await load_providers()).model_for(request.definition.config.brain, request.environ, timeout_s=120)
        try:
            await run_loop(model, request.system, [UserText(request.task)], request.toolbox, request.limits,
                           request.recorder, request.totals)
        finally:
            await model.aclose()  # one client per activation: close its connections with it
        return request.totals.text.strip()


class HubToolsOnly:
    """The default toolset: the Hub tools, served in-process (contract §3 allows it for the native loop)."""

    @contextlib.asynccontextmanager
    async def open(self, ctx: ToolContext) -> AsyncIterator[Toolbox]:
        from services.runner.hubtools import HubTools

        yield HubTools(ctx.hub, ctx.agent_key, ctx.grants, ctx.poster, ctx.activation_id, ctx.commented)

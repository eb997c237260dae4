"""One activation, from claim to completion (contract §4): the only implementation of what an activation
does (which notifications it answers, where, whether SKIP or a tool's comment already answered, how it
ends), whatever executor thinks and whether it runs live or offline (offline.py plugs recorded seams in).

`Activation` reaches the world only through `Deps` and its seams (seams.py). `run` always ends in exactly
one `completed` or `failed` event carrying the ActivationMetrics, and sets `ending` (a typed `Ending`),
except when it raises `Retry` (a deferral or a Hub outage: the request is redelivered and the next
attempt writes the ending). Posting goes through the `Posters` seam (posting.Poster live), so a
redelivered activation never posts the same reply twice.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from botburrow.grants import holds_all
from botburrow.hub.capabilities import CapabilityTracker
from botburrow.hub.client import HubAuthError, HubClient, HubError, HubUnavailable
from botburrow.hub.errors import HubBadResponse, HubEndpointMissing, HubRateLimited
from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import Retry
from botburrow.secrets import redact
from schemas.agent import AgentDefinition, SkillDefinition
from schemas.events import ActivationMetrics, ActivationRequested
from schemas.hub import Notification
from services.runner import context, exploration, modelaccess
from services.runner.cancel import Cancelled, Cancels
from services.runner.config import RunnerConfig
from services.runner.hubreads import HubThreads, all_of
from services.runner.identity import HubNames
from services.runner.loop import Budget, LoopFailed
from services.runner.memory.service import Memories, NoMemory
from services.runner.posting import (
    AgentPosters,
    PostOutcome,
    PostResult,
    Target,
    Usage,
    interval_wait_s,
    reply_key,
)
from services.runner.pricing import PriceTable
from services.runner.runlog import now_rfc3339
from services.runner.seams import (
    AllowWhatConfigsAsk,
    Directory,
    EventLog,
    ExecutorUnavailable,
    GrantResolver,
    HubReads,
    HubToolsOnly,
    Keys,
    ModelGate,
    NativeThinker,
    Posters,
    Posting,
    Thinker,
    ThinkRequest,
    ToolContext,
    ToolsetFactory,
)
from services.runner.transcript import ModelError
from streams.topology import MAX_DELIVERIES

log = logging.getLogger(__name__)

HUB_OUTAGE_RETRY_S = 15.0
HUB_RATE_LIMITED_RETRY_S = 30.0  # a 429 without Retry-After
HUB_SERVER_ERROR_RETRY_S = 1.0  # a 500 to one request: doubled at each delivery, up to HUB_OUTAGE_RETRY_S
NO_DMS = "the Hub has no DMs (it does not serve the DM send route): the DM is not answered"
NATS_TIMEOUT_RETRY_S = 5.0


class Outcome(enum.StrEnum):
    """How an activation ended (the `outcome` of its ActivationMetrics)."""

    POSTED = "posted"  # an answer is on the Hub (posted now, earlier, or through a tool)
    SKIPPED = "skipped"  # nothing to answer, or the model chose not to (SKIP)
    LIMITED = "limited"  # a posting limit held the answer back
    FAILED = "failed"


class Ending(msgspec.Struct, frozen=True, kw_only=True):
    """An activation's end: its outcome, why (the failure, the limit or the skip), and, when the request can
    never succeed as it is, the reason the stage dead-letters it with."""

    outcome: Outcome
    reason: str | None = None
    dead_letter: str | None = None


class ActivationFailed(Exception):
    def __init__(self, reason: str, *, dead_letter: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.dead_letter = reason, dead_letter


@dataclass
class Deps:
    """What every activation of one runner process shares: the runner's config and the seams. The seams
    left None are the runner's own, built from the others (`reads`: the Hub; `posters`: the Hub and the
    bus; `gate`: the config's model access)."""

    bus: Bus | None  # None offline: nothing is published
    hub: HubClient | None
    definitions: Directory
    keys: Keys
    prices: PriceTable
    config: RunnerConfig
    secrets: Mapping[str, str]  # where secrets are read (botburrow.secrets), never settings
    runner_id: str
    grants: GrantResolver = field(default_factory=AllowWhatConfigsAsk)
    toolsets: ToolsetFactory = field(default_factory=HubToolsOnly)
    thinkers: Mapping[str, Thinker] = field(default_factory=lambda: {"native": NativeThinker()})
    gate: ModelGate | None = None
    reads: HubReads | None = None
    posters: Posters | None = None
    cancels: Cancels = field(default_factory=Cancels)  # what the operator cancelled (`botburrow cancel`)
    names: HubNames | None = None  # the agents' Hub names (None: built on `hub`)
    capabilities: CapabilityTracker = field(default_factory=CapabilityTracker)  # write-only routes found absent
    context_budget: context.ContextBudget = field(default_factory=context.ContextBudget)
    # Chars per token per model, learnt from every activation's reported input tokens (one per process).
    estimator: context.TokenEstimator = field(default_factory=context.TokenEstimator)
    memory: Memories = field(default_factory=NoMemory)  # agent memory (issue 19): the runner's, or none

    def __post_init__(self) -> None:
        self.gate = self.gate or self.config.access
        self.names = self.names or HubNames(self.hub)
        if self.reads is None:
            assert self.hub is not None
            self.reads = HubThreads(self.hub, self.config.input_bounds, self.names)
        if self.posters is None:
            assert self.bus is not None and self.hub is not None
            self.posters = AgentPosters(self.bus, self.hub, thread_replies_max=self.config.thread_agent_replies_max,
                                        input_bounds=self.config.input_bounds, names=self.names)


def answerable(definition: AgentDefinition, notification: Notification, hub_name: str | None = None) -> bool:
    """False for notifications that get no model call: the agent's own (by its config or its Hub name),
    types its flags turn off."""
    if notification.from_.name in (definition.name, hub_name):
        return False
    return definition.config.behavior.answers(notification.type)


def target_for(notification: Notification) -> Target:
    if notification.type == "dm":
        return Target("dm", dm_id=notification.dm_id)
    return Target("comment", post_id=notification.post_id, parent_id=notification.comment_id)


class Activation:
    def __init__(self, deps: Deps, request: ActivationRequested, runlog: EventLog) -> None:
        self.deps, self.request, self.log = deps, request, runlog
        self.started_s = time.monotonic()
        self.started_at = now_rfc3339()
        # Turns are the definition's (set once it is known); tokens and the deadline are the runner's.
        self.budget = Budget(max_iterations=0, max_tokens=deps.config.max_tokens,
                             deadline=self.started_s + deps.config.timeout_s)
        self.ending = Ending(outcome=Outcome.FAILED)
        self.answer = ""  # the final answer the thinking gave (empty: none)
        self._deadline: asyncio.Timeout | None = None
        self._limited: str | None = None  # why nothing was posted (a limit), for a `limited` ending
        self._skipped: str | None = None  # why nothing was posted (the Hub lacks the route), for `skipped`
        self.grants: set[str] = set()  # after the cluster policy, resolved once by `_preflight`

    @property
    def dead_letter(self) -> str | None:
        """Set when the request can never succeed as it is: the stage copies it to the DLQ."""
        return self.ending.dead_letter

    async def run(self) -> ActivationMetrics:
        definition = self.deps.definitions.get(self.request.agent)
        tool_type = definition.config.type if definition else "unknown"
        model = definition.config.brain.model if definition else "unknown"
        self.ending = await self._ended(definition, tool_type, model)
        metrics = self._metrics(tool_type, model, self.ending)
        await self.log.finished(metrics)
        return metrics

    async def _ended(self, definition: AgentDefinition | None, tool_type: str, model: str) -> Ending:
        failed = Outcome.FAILED
        try:
            async with self.deps.cancels.scope(self.request.activation_id):
                return await self._run(definition, tool_type, model)
        except Cancelled as exc:
            return Ending(outcome=failed, reason=str(exc))
        except ActivationFailed as exc:
            return Ending(outcome=failed, reason=exc.reason, dead_letter=exc.reason if exc.dead_letter else None)
        except ExecutorUnavailable as exc:
            return Ending(outcome=failed, reason=exc.reason, dead_letter=exc.reason)
        except LoopFailed as exc:
            return Ending(outcome=failed, reason=exc.reason)
        except TimeoutError:
            if self._deadline is None or not self._deadline.expired():
                # Not our deadline: a NATS call timed out (a server restart). Hand the request back.
                raise Retry(NATS_TIMEOUT_RETRY_S, "nats timeout") from None
            return Ending(outcome=failed, reason="timeout")
        except HubAuthError as exc:
            return Ending(outcome=failed, reason=f"hub refused the agent's key ({exc.status})")
        except HubBadResponse as exc:
            # The Hub's answer does not fit (not JSON, wrong shape, too deep): asking again gets the same.
            reason = redact(f"malformed Hub answer: {exc.message}")
            return Ending(outcome=failed, reason=reason, dead_letter=reason)
        except RecursionError:
            return Ending(outcome=failed, reason="input nested too deep to process",
                          dead_letter="input nested too deep to process")
        except HubRateLimited as exc:
            wait_s = HUB_RATE_LIMITED_RETRY_S if exc.retry_after_s is None else exc.retry_after_s
            return self._retry_or_give_up(wait_s, f"hub rate limited: {exc}")
        except HubUnavailable as exc:  # down, a 500 on one request, or a write's outcome unknown
            # One request's 500 is no outage: tried again soon, later each time.
            wait_s = (min(HUB_OUTAGE_RETRY_S, HUB_SERVER_ERROR_RETRY_S * 2 ** (self.log.attempt - 1))
                      if exc.code == "SERVER_ERROR" else HUB_OUTAGE_RETRY_S)
            return self._retry_or_give_up(wait_s, f"hub unavailable: {exc}")
        except (HubError, ModelError) as exc:
            return Ending(outcome=failed, reason=redact(str(exc)))

    def _retry_or_give_up(self, delay_s: float, reason: str) -> Ending:
        """`Retry` after `delay_s`; on the last delivery the request is dead-lettered with the reason
        instead (the worker's own give-up would only say how many deliveries it took)."""
        reason = redact(reason)[:500]
        if self.log.attempt < MAX_DELIVERIES:
            raise Retry(delay_s, reason)
        return Ending(outcome=Outcome.FAILED, reason=reason, dead_letter=f"{reason} (delivery {self.log.attempt})")

    def _done(self, outcome: Outcome) -> Ending:
        reasons = {Outcome.LIMITED: self._limited, Outcome.SKIPPED: self._skipped}
        return Ending(outcome=outcome, reason=reasons.get(outcome))

    async def _run(self, definition: AgentDefinition | None, tool_type: str, model: str) -> Ending:
        await self.log.started(tool_type, model, self.deps.runner_id)
        if definition is None:
            raise ActivationFailed(f"unknown agent {self.request.agent!r}", dead_letter=True)
        if definition.config.type not in self.deps.thinkers:
            raise ActivationFailed(f"executor {definition.config.type!r} is not available in this runner",
                                   dead_letter=True)
        key = await asyncio.to_thread(self.deps.keys.get, definition.name)  # a file read (AGENT_KEYS_DIR)
        if not key:
            raise ActivationFailed(f"no Hub key for agent {definition.name!r}", dead_letter=True)
        if (skip := self._preflight(definition)) is not None:
            log.info("activation skipped", extra={"activation_id": self.request.activation_id, "reason": skip})
            return Ending(outcome=Outcome.SKIPPED, reason=skip)
        assert self.deps.posters is not None
        poster = self.deps.posters.for_agent(definition, key)
        self.budget.max_iterations = definition.config.behavior.max_iterations
        timeout_s = self.deps.config.timeout_s
        self._deadline = asyncio.timeout_at(asyncio.get_running_loop().time() + timeout_s)
        async with self._deadline:
            if self.request.kind == "exploration":
                return self._done(await self._explore(definition, key, poster))
            return self._done(await self._answer(definition, key, poster))

    def _preflight(self, definition: AgentDefinition) -> str | None:
        """Before any Hub read or model call. The answer is a write: an agent without `hub:write` (after the
        policy) is skipped, with that reason (a departure from contract §4, docs/departures.md). A config naming
        a model key or endpoint the operator does not allow fails the activation before any secret is read."""
        self.grants = self.deps.grants.resolve(definition)
        if not holds_all(self.grants, "hub", "write"):
            return "hub:write is missing: the agent may not post its answer, so it is not asked for one"
        try:
            assert self.deps.gate is not None
            self.deps.gate.check(definition.config.brain)
        except modelaccess.ModelAccessRefused as exc:
            raise ActivationFailed(str(exc)) from None
        return None

    def _ledger(self, definition: AgentDefinition) -> context.ContextLedger:
        return context.ContextLedger(self.deps.context_budget, self.deps.estimator, definition.config.brain.model)

    async def _think(self, definition: AgentDefinition, key: str, poster: Posting, task: str,
                     community: str | None, ledger: context.ContextLedger) -> ToolContext:
        grants = self.grants
        skills: Mapping[str, SkillDefinition] = self.deps.definitions.skills()
        chosen = ledger.fit_skills(context.select_skills(definition, skills, grants, task, community))
        self.log.note_context(ledger)  # the tools part is added by the thinker, before the first turn
        tools = ToolContext(definition=definition, agent_key=key, grants=grants,
                            activation_id=self.request.activation_id, poster=poster, hub=self.deps.hub,
                            recorder=self.log, skills=chosen)
        thinker = self.deps.thinkers[definition.config.type]
        async with self.deps.toolsets.open(tools) as toolbox:
            self.answer = await thinker.think(ThinkRequest(
                definition=definition, system=context.system_prompt(definition, chosen), task=task,
                toolbox=toolbox, budget=self.budget, recorder=self.log, config=self.deps.config,
                secrets=self.deps.secrets, activation_id=self.request.activation_id, tools=tools, context=ledger))
        return tools

    async def _open_items(self, todo: list[Notification], poster: Posting) -> list[Notification]:
        """The notifications not answered yet (a redelivery may find some answered)."""
        open_items = []
        answered = await all_of(*(poster.already_posted(reply_key(self.request.activation_id, n.id)) for n in todo))
        for n, done in zip(todo, answered, strict=True):
            if not done:
                open_items.append(n)
                continue
            if self.log.attempt == 1:
                continue  # a redrive of a finished run: that run logged it
            # A redelivery: the attempt that posted it may have died before logging it. Log it again, so the
            # run's record shows every answer on the Hub (the full soak found three missing).
            target = target_for(n)
            await self.log.posted(notification_id=n.id, target=target.kind, post_id=target.post_id,
                                  parent_id=target.parent_id, dm_id=target.dm_id, already_posted=True)
        return open_items

    async def _answer(self, definition: AgentDefinition, key: str, poster: Posting) -> Outcome:
        assert self.deps.names is not None
        hub_name = await self.deps.names.of(definition.name, key)
        todo = [n for n in self.request.notifications if answerable(definition, n, hub_name)]
        if any(n.type == "dm" for n in todo) and self.deps.capabilities.absent("dms"):
            self._skipped = NO_DMS
            log.info("DM skipped", extra={"activation_id": self.request.activation_id, "reason": NO_DMS})
            todo = [n for n in todo if n.type != "dm"]
            if not todo:
                return Outcome.SKIPPED
        # Which are answered already, and the agent's usage: read together (independent round trips).
        open_items, usage = await all_of(self._open_items(todo, poster), poster.usage())
        assert isinstance(open_items, list) and isinstance(usage, Usage)
        if not open_items:
            return Outcome.POSTED if todo else Outcome.SKIPPED
        wait_s = interval_wait_s(usage, definition.config.behavior.limits, time.time())
        if wait_s > 0:
            raise Retry(wait_s, "min_interval_seconds")
        # No model call for answers a limit already forbids (posting re-checks them atomically).
        refused = await all_of(*(poster.refusal(usage, target_for(n)) for n in open_items))
        refusals = {n.id: reason for n, reason in zip(open_items, refused, strict=True)}
        open_items = [n for n in open_items if refusals[n.id] is None]
        if not open_items:
            self._limited = next(r for r in refusals.values() if r)
            log.info("reply limited", extra={"activation_id": self.request.activation_id, "reason": self._limited})
            return Outcome.LIMITED
        cuts = context.Cuts()
        assert self.deps.reads is not None
        threads = await all_of(*(self.deps.reads.thread(key, n, cuts) for n in open_items))
        ledger = self._ledger(definition)
        texts = ledger.fit_threads([(n.post_id or n.id, text)
                                    for n, (text, _) in zip(open_items, threads, strict=True)])
        task = context.notification_task(list(zip(open_items, texts, strict=True)), self.deps.config.input_bounds, cuts)
        if cuts or ledger.cuts:
            log.info("hub content cut", extra={"activation_id": self.request.activation_id, **cuts.as_log(),
                                               "cut_for_budget": [c.what for c in ledger.cuts]})
        community = next((c for _, c in threads if c), None)
        # Memories go before the task, in the variable part: the cached prefix stays the same bytes.
        task = await self.deps.memory.recall(definition, open_items, ledger, self.deps.context_budget.memories_tokens,
                                             self.log) + task
        tools = await self._think(definition, key, poster, task, community, ledger)
        text = self.answer.strip()
        if not text or text.upper() == "SKIP":
            return Outcome.SKIPPED
        results = [await self._post(poster, n, text, tools) for n in open_items]
        if posted := [n for n, r in zip(open_items, results, strict=True) if r.outcome is PostOutcome.POSTED]:
            await self.deps.memory.remember(definition, posted, text, self.request.activation_id, self.budget, self.log)
        if any(r.outcome in (PostOutcome.POSTED, PostOutcome.ALREADY_POSTED) for r in results):
            return Outcome.POSTED
        return Outcome.LIMITED if any(r.outcome is PostOutcome.LIMITED for r in results) else Outcome.SKIPPED

    async def _post(self, poster: Posting, notification: Notification, text: str, tools: ToolContext) -> PostResult:
        target = target_for(notification)
        if target.kind == "comment" and (target.post_id, target.parent_id) in tools.commented:
            # Answered through a tool already: nothing more is posted there.
            await self.log.posted(notification_id=notification.id, target="comment", post_id=target.post_id,
                                  parent_id=target.parent_id, already_posted=True)
            return PostResult(PostOutcome.ALREADY_POSTED)
        try:
            result = await poster.publish(reply_key(self.request.activation_id, notification.id), target, text)
        except (HubUnavailable, HubRateLimited, HubAuthError, HubBadResponse):
            raise  # retried, or failed for the agent's key, as anywhere else
        except HubEndpointMissing:
            if target.kind != "dm":
                raise
            self.deps.capabilities.mark_absent("dms")
            self._skipped = NO_DMS
            log.info("DM skipped", extra={"activation_id": self.request.activation_id, "reason": NO_DMS})
            return PostResult(PostOutcome.UNSUPPORTED, reason=NO_DMS)
        except HubError as exc:
            # The Hub refused this send (its target gone, its content refused): asking again gets the same
            # answer, and the answer must not vanish either. Dead-lettered with the reason, DM or comment.
            reason = redact(f"the Hub refused the {target.kind}: {exc}")[:500]
            raise ActivationFailed(reason, dead_letter=True) from None
        if result.outcome is PostOutcome.LIMITED:
            self._limited = self._limited or result.reason
            log.info("reply limited", extra={"activation_id": self.request.activation_id, "reason": result.reason})
            return result
        await self.log.posted(notification_id=notification.id, target=target.kind, post_id=target.post_id,
                              parent_id=target.parent_id, dm_id=target.dm_id, hub_id=result.hub_id,
                              already_posted=result.outcome is PostOutcome.ALREADY_POSTED)
        return result

    async def _explore(self, definition: AgentDefinition, key: str, poster: Posting) -> Outcome:
        assert self.deps.reads is not None
        candidates = await self.deps.reads.candidates(definition, key)
        if not candidates:
            self._skipped = exploration.nothing_to_explore(definition)
            return Outcome.SKIPPED
        task = context.exploration_task(definition, candidates)
        await self._think(definition, key, poster, task, candidates[0].submolt, self._ledger(definition))
        chosen = exploration.read_answer(self.answer, candidates)
        if isinstance(chosen, str):  # why nothing is posted
            self._skipped = chosen
            return Outcome.SKIPPED
        result = await poster.publish(f"{reply_key(self.request.activation_id, 'explore')}",
                                      Target("comment", post_id=chosen.post.id), chosen.comment)
        if result.outcome is PostOutcome.LIMITED:
            self._limited = result.reason
            return Outcome.LIMITED
        await self.log.posted(target="comment", post_id=chosen.post.id, hub_id=result.hub_id,
                              already_posted=result.outcome is PostOutcome.ALREADY_POSTED)
        return Outcome.POSTED

    def _metrics(self, tool_type: str, model: str, ending: Ending) -> ActivationMetrics:
        spent = self.budget
        return ActivationMetrics(
            activation_id=self.request.activation_id, agent_id=self.request.agent, tool_type=tool_type,
            model=model, task_type=self.request.kind, task_priority=self.request.priority,
            tokens_input=spent.input_tokens, tokens_output=spent.output_tokens,
            tokens_cache_write=spent.cache_write_tokens, tokens_cache_read=spent.cache_read_tokens,
            estimated_cost_usd=self.deps.prices.cost_usd(model, spent.input_tokens, spent.output_tokens,
                                                         spent.cache_write_tokens, spent.cache_read_tokens),
            duration_seconds=round(time.monotonic() - self.started_s, 3), iterations=spent.iterations,
            outcome=ending.outcome.value, error=ending.reason, started_at=self.started_at, ended_at=now_rfc3339())

"""Offline re-runs of a recorded activation: `Activation` itself, driven through recorded seams.

Nothing leaves the process: the seams of `recorded` (the model answers with the recorded `llm` events,
tools with the recorded results, Hub writes and final answers are captured) are plugged into the
real `Activation`, which decides as it does live what is answered, where, and how it ends. The re-run
then lines up with the recording step by step; the first difference is the divergence.

What offline can and cannot show (the report repeats it): the answers are the recorded ones, so
with the same definition a re-run follows the recording unless the code or the definition changed
what the loop allows (tools offered, `max_iterations`, limits). With another definition
(`shadow`), the report names how the system prompt, skills and tools differ and where along the
recorded path the new definition would refuse a call or stop; what a model would have *said* to the
new prompt needs a live re-run.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botburrow.grants import holds_all
from schemas.agent import AgentDefinition, Brain, SkillDefinition
from schemas.events import ActivationRequested, ToolCalled
from services.runner import context
from services.runner.activation import Activation, Deps, Ending, Outcome
from services.runner.config import RunnerConfig
from services.runner.hubtools import HubTools
from services.runner.loop import ToolOutcome
from services.runner.pricing import PriceTable
from services.runner.recorded import (
    CapturedWrite,
    CapturingPoster,
    CollectingRecorder,
    Divergence,
    Progress,
    RecordedDirectory,
    RecordedHubReads,
    RecordedMemory,
    RecordedModel,
    RecordedModels,
    RecordedToolsets,
    Recording,
    canonical,
    short,
    stand_in,
)
from services.runner.seams import AllowWhatConfigsAsk, GrantResolver, NativeThinker
from services.runner.transcript import ToolCall, ToolSpec

OFFLINE_TIMEOUT_S = 300.0
ALIASES = {"brave-search": "brave"}


@dataclass
class Step:
    label: str
    recorded: str
    rerun: str
    same: bool


@dataclass
class OfflineReport:
    activation_id: str
    agent: str
    attempt: int
    followed: bool = True
    recorded_outcome: str = ""
    rerun_outcome: str = ""
    steps: list[Step] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    captured: list[CapturedWrite] = field(default_factory=list)
    definition_changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Setup:
    """What one definition offers an activation: prompt, skills, tools, limits."""

    system: str
    skills: list[str]
    specs: list[ToolSpec]
    write_tools: set[str]
    max_iterations: int
    model: str


def _hub_specs(grants: set[str]) -> list[ToolSpec]:
    # Only the specs are read: no Hub, key or poster is ever used.
    return HubTools(None, "", grants, None, "").specs()  # type: ignore[arg-type]


def hub_write_tools() -> set[str]:
    """The Hub tools that write (those `hub:write` adds): captured offline, never sent."""
    every = {s.name for s in _hub_specs({"hub:read", "hub:write"})}
    return every - {s.name for s in _hub_specs({"hub:read"})}


def _server_names(definition: AgentDefinition) -> set[str]:
    names = {s if isinstance(s, str) else s.name for s in definition.config.capabilities.mcp_servers}
    return {ALIASES.get(n, n) for n in names}


def setup_for(definition: AgentDefinition | None, skills: Mapping[str, SkillDefinition], recording: Recording,
              task: str, grants: GrantResolver) -> Setup:
    """What `definition` offers; without one (deleted since), the tools the recording used."""
    if definition is None:
        names = dict.fromkeys(t.name for t in recording.tools)
        return Setup(system="", skills=[], specs=[ToolSpec(n, "", {}) for n in names],
                     write_tools=hub_write_tools(),
                     max_iterations=max(len(recording.turns), 1), model=recording.turns[0].model
                     if recording.turns else "unknown")
    held = grants.resolve(definition)
    chosen = context.select_skills(definition, skills, held, task, None)
    specs = _hub_specs(held)
    servers = _server_names(definition)
    seen = {s.name for s in specs}
    for event in recording.tools:  # tools of other servers: offered when the definition still lists the server
        if event.server and event.server != "hub" and event.server in servers and event.name not in seen:
            seen.add(event.name)
            specs.append(ToolSpec(event.name, "", {}))
    return Setup(system=context.system_prompt(definition, chosen), skills=[s.name for s in chosen], specs=specs,
                 write_tools=hub_write_tools(),
                 max_iterations=definition.config.behavior.max_iterations, model=definition.config.brain.model)


def task_text(request: ActivationRequested) -> str:
    """The task as far as the request tells it (the thread text the model saw is not recorded)."""
    if request.kind == "exploration":
        return "You are exploring the Hub for a thread worth joining. (candidates not recorded)"
    return context.notification_task([(n, None) for n in request.notifications])


def _turn_summary(text: str, calls: list[Any]) -> str:
    if calls:
        return "calls " + ", ".join(f"{c.name}({short(c.arguments, 60)})" for c in calls)
    return f"answers {short(text)!r}"


def _compare_tools(report: OfflineReport, turn: int, recorded: list[ToolCalled],
                   rerun: list[tuple[int, ToolCall, ToolOutcome]]) -> None:
    for j in range(max(len(recorded), len(rerun))):
        label = f"turn {turn}, call {j + 1}"
        old = recorded[j] if j < len(recorded) else None
        new = rerun[j] if j < len(rerun) else None
        old_text = f"{old.name} -> {short(old.result, 60)}" if old else "(no call)"
        new_text = f"{new[1].name} -> {short(new[2].content, 60)}" if new else "(no call)"
        kinds: list[tuple[str, str, str]] = []
        if old is None or new is None or old.name != new[1].name:
            kinds.append(("tool", old.name if old else "(none)", new[1].name if new else "(none)"))
        elif canonical(old.arguments) != canonical(new[1].arguments):
            kinds.append(("arguments", short(old.arguments), short(new[1].arguments)))
        elif old.result != new[2].content or (old.error is not None) != new[2].is_error:
            kinds.append(("result", short(old.result), short(new[2].content)))
        report.steps.append(Step(label, old_text, new_text, not kinds))
        report.divergences += [Divergence(label, k, a, b) for k, a, b in kinds]


def _compare(report: OfflineReport, recording: Recording, recorder: CollectingRecorder, final: str | None) -> None:
    reruns = dict(recorder.turns)
    recorded_tools: dict[int, list[ToolCalled]] = defaultdict(list)
    rerun_tools: dict[int, list[tuple[int, ToolCall, ToolOutcome]]] = defaultdict(list)
    for event in recording.tools:
        recorded_tools[event.turn].append(event)
    for item in recorder.tools:
        rerun_tools[item[0]].append(item)
    for i in range(1, max(len(recording.turns), len(reruns)) + 1):
        old = recording.turns[i - 1] if i <= len(recording.turns) else None
        new = reruns.get(i)
        old_text = _turn_summary(old.text, old.tool_calls) if old else "(no turn)"
        new_text = _turn_summary(new.text, new.tool_calls) if new else "(not reached)"
        report.steps.append(Step(f"turn {i}", old_text, new_text, old_text == new_text))
        if old_text != new_text:
            report.divergences.append(Divergence(f"turn {i}", "turns", old_text, new_text))
        _compare_tools(report, i, recorded_tools[i], rerun_tools[i])
    if recording.final_text is not None and final is not None and recording.final_text.strip() != final:
        report.divergences.append(Divergence("final answer", "final_text", short(recording.final_text),
                                             short(final)))


class _OfflineKeys:
    def get(self, name: str) -> str:
        return "offline"  # no Hub is reached with it


class _NothingSent:
    """`ModelGate`: the recorded answers are played, no model is called, so no key or endpoint is checked."""

    def check(self, brain: Brain) -> None:
        return None


@dataclass(frozen=True)
class _WritesCaptured:
    """`GrantResolver`: the definition's grants, plus `hub:write` for the preflight only. Live, an agent
    without it is skipped before any model call; offline it follows the recording (its Hub writes are
    captured), so the report shows where along it the definition refuses. The tools it is offered are
    still those of its own grants (`setup_for`)."""

    grants: GrantResolver

    def resolve(self, definition: AgentDefinition) -> set[str]:
        return self.grants.resolve(definition) | {"hub:write"}


def _rerun_outcome(ending: Ending) -> str:
    return ending.outcome.value + (f" ({ending.reason})" if ending.reason else "")


def _compare_outcome(report: OfflineReport, recording: Recording, ending: Ending,
                     finals: list[CapturedWrite]) -> None:
    """The activation's ending and its posts against the recorded ones."""
    recorded = recording.end.metrics.outcome if recording.end else None
    if recorded == Outcome.LIMITED:
        report.notes.append("the recorded run was held back by a posting limit; limits are not applied offline")
    elif recorded is not None and recorded != ending.outcome:
        report.divergences.append(Divergence("outcome", "outcome", recording.outcome, report.rerun_outcome))
    sent = [p for p in recording.posted if not p.already_posted]
    if recorded in (Outcome.POSTED, Outcome.SKIPPED) and len(sent) != len(finals) \
            and not any(p.already_posted for p in recording.posted):
        report.divergences.append(Divergence("posting", "posts", f"{len(sent)} reply(ies) posted",
                                             f"{len(finals)} reply(ies) would be posted"))


def _added_removed(what: str, old: list[str], new: list[str]) -> list[str]:
    added, removed = [x for x in new if x not in old], [x for x in old if x not in new]
    out = [f"{what} added: {', '.join(added)}"] if added else []
    return out + ([f"{what} removed: {', '.join(removed)}"] if removed else [])


def compare_setups(old: Setup, new: Setup, *, max_diff_lines: int = 16) -> list[str]:
    """How the shadow definition differs from the baseline, in what it offers the activation."""
    changes: list[str] = []
    if old.model != new.model:
        changes.append(f"model: {old.model} -> {new.model} (offline still plays the recorded {old.model} answers)")
    if old.max_iterations != new.max_iterations:
        changes.append(f"max_iterations: {old.max_iterations} -> {new.max_iterations}")
    changes += _added_removed("tools", [s.name for s in old.specs], [s.name for s in new.specs])
    changes += _added_removed("skills", old.skills, new.skills)
    if old.system != new.system:
        diff = [line for line in difflib.unified_diff(old.system.splitlines(), new.system.splitlines(), lineterm="",
                                                      n=0) if not line.startswith(("---", "+++", "@@"))]
        plus, minus = sum(d.startswith("+") for d in diff), sum(d.startswith("-") for d in diff)
        changes.append(f"system prompt: +{plus} / -{minus} lines")
        changes += [f"    {line[:160]}" for line in diff[:max_diff_lines]]
        if len(diff) > max_diff_lines:
            changes.append(f"    … {len(diff) - max_diff_lines} more changed lines")
    return changes


def _honesty_notes(report: OfflineReport, recording: Recording, model: RecordedModel, shadow: bool) -> None:
    report.notes.append("model answers are the recorded ones; tool results come from the recording; Hub writes "
                        "are captured, not sent")
    report.notes.append("the thread text the model saw was not recorded: the task is rebuilt from the request, "
                        "so skills triggered by the thread's community cannot be told apart offline")
    if model.fed:
        first = model.fed[0]
        report.notes.append(f"from {first.step} on, the model would have been fed other tool results than it was: "
                            "the recorded answers past that point no longer follow from the re-run's inputs")
    if recording.tool_type != "native":
        report.notes.append(f"recorded by the {recording.tool_type} executor: offline replays its recorded model "
                            "calls through the native loop, so calls the CLI made on its own (titles, summaries) "
                            "show up as divergences")
    if shadow:
        report.notes.append("shadow run: this shows where the new definition refuses a recorded call, stops earlier "
                            "or offers other tools and prompt; what a model would answer to the new prompt needs "
                            "`botburrow replay --rerun` against a model")
    if recording.end is None:
        report.notes.append("the recorded attempt has no `completed`/`failed` event (still running, crashed, or "
                            "aged out): its outcome is unknown")


async def _activate(recording: Recording, definition: AgentDefinition, skills: Mapping[str, SkillDefinition],
                    setup: Setup, grants: GrantResolver, model: RecordedModel,
                    max_tokens: int) -> tuple[Activation, CollectingRecorder, RecordedToolsets, CapturingPoster]:
    """The recorded request, run by `Activation` through recorded seams."""
    toolsets = RecordedToolsets(setup.specs, setup.write_tools, recording.tools)
    poster, recorder = CapturingPoster(), CollectingRecorder()
    deps = Deps(bus=None, hub=None, definitions=RecordedDirectory(definition, skills), keys=_OfflineKeys(),
                prices=PriceTable.load(None), config=RunnerConfig(timeout_s=OFFLINE_TIMEOUT_S, max_tokens=max_tokens),
                secrets={}, runner_id="offline", grants=_WritesCaptured(grants), toolsets=toolsets,
                thinkers={definition.config.type: NativeThinker(RecordedModels(model))}, gate=_NothingSent(),
                reads=RecordedHubReads(recording), posters=poster, memory=RecordedMemory(recording))
    activation = Activation(deps, recording.request, recorder)
    await activation.run()
    return activation, recorder, toolsets, poster


async def rerun_offline(recording: Recording, definition: AgentDefinition | None,
                        skills: Mapping[str, SkillDefinition], *, baseline: AgentDefinition | None = None,
                        shadow: bool = False, grants: GrantResolver | None = None, max_tokens: int = 200_000,
                        progress: Progress | None = None) -> OfflineReport:
    """Re-run `recording` with `definition` (the shadow one when `shadow`; `baseline` is the original)."""
    grants = grants or AllowWhatConfigsAsk()
    request = recording.request
    report = OfflineReport(activation_id=request.activation_id, agent=request.agent, attempt=recording.attempt,
                           recorded_outcome=recording.outcome)
    if not recording.turns:
        report.rerun_outcome = report.recorded_outcome
        report.notes.append("the recorded run made no model call: there is nothing to re-run offline")
        return report
    task = task_text(request)
    setup = setup_for(definition, skills, recording, task, grants)
    if shadow:
        report.definition_changes = compare_setups(setup_for(baseline, skills, recording, task, grants), setup)
    model = RecordedModel(recording, progress)
    agent = definition or stand_in(recording)
    activation, recorder, toolsets, poster = await _activate(recording, agent, skills, setup, grants, model,
                                                             max_tokens)
    report.rerun_outcome = _rerun_outcome(activation.ending)
    report.captured = toolsets.captured + poster.captured
    final = activation.answer.strip() if activation.ending.outcome is not Outcome.FAILED else None
    _compare(report, recording, recorder, final)
    _compare_outcome(report, recording, activation.ending, poster.captured)
    _honesty_notes(report, recording, model, shadow)
    if isinstance(memory := activation.deps.memory, RecordedMemory) and memory.retrieved is not None:
        report.notes.append(f"memory: the recorded retrieval ({len(memory.retrieved.items)} memories, "
                            f"{memory.retrieved.strategy}) was given again; this definition's `memory` block takes "
                            f"{len(memory.given)} of them: {', '.join(m.id for m in memory.given) or 'none'}")
    if definition is not None and not holds_all(grants.resolve(definition), "hub", "write"):
        report.notes.append("the definition lacks hub:write: live, it would be skipped before any model call; "
                            "offline follows the recording to show where it refuses")
    report.followed = not report.divergences
    return report

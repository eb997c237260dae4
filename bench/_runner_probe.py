"""The runner stage with timers, for `bench/runner.py`: `python -P bench/_runner_probe.py` (with PYTHONPATH
at the tree to measure: this checkout, or a worktree of the baseline commit). Not a benchmark itself
(the leading underscore keeps `python -m bench` from running it).

Inside the runner process it adds, without changing what the runner does:
- per activation (`Runner.handle`), the wall time of each phase, each counted while at least one call of
  it is in flight (concurrent calls of one phase are not added twice): lease, run-log read, Hub reads,
  context, toolset, model client, model (the model's own time), posting, events; written as JSON lines
  to BENCH_PROBE_OUT at exit;
- an event-loop stall monitor: a task that wakes every STALL_TICK_S and records how late it woke.
Each timer is patched by name and skipped if the measured tree lacks it (the baseline is older code).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import importlib
import json
import os
import sys
import time
from typing import Any

STALL_TICK_S = 0.005
PHASES: dict[str, list[str]] = {
    "lease": ["services.runner.lease:Lease.acquire", "services.runner.lease:Lease.release"],
    "runlog_read": ["services.runner.runlog:RunLog.earlier_end"],
    "hub_reads": ["services.runner.hubreads:HubThreads.thread", "services.runner.hubreads:HubThreads.candidates",
                  "services.runner.identity:HubNames.of"],
    "posting": ["services.runner.posting:Poster.already_posted", "services.runner.posting:Poster.usage",
                "services.runner.posting:Poster.refusal", "services.runner.posting:Poster.publish"],
    "toolset": ["services.runner.mcptools:McpToolsets.open", "services.runner.seams:HubToolsOnly.open"],
    "model_client": ["services.runner.seams:ProviderModels.open"],
    "events": ["services.runner.runlog:RunLog.started", "services.runner.runlog:RunLog.llm",
               "services.runner.runlog:RunLog.tool", "services.runner.runlog:RunLog.posted",
               "services.runner.runlog:RunLog.finished", "services.runner.runlog:RunLog.settle"],
}
SYNC_PHASES: dict[str, list[str]] = {
    "context": ["services.runner.context:select_skills", "services.runner.context:system_prompt",
                "services.runner.context:notification_task", "services.runner.context:render_thread",
                "services.runner.context:ContextLedger.fit_threads", "services.runner.context:ContextLedger.fit_skills",
                "services.runner.context:ContextLedger.fit_tools"],
}

current: contextvars.ContextVar[dict[str, list[float]] | None] = contextvars.ContextVar("phases", default=None)
records: list[dict[str, Any]] = []
stalls: list[tuple[float, float]] = []  # (wall time, ms late) of every wake-up later than 1 ms
patched: list[str] = []


def _enter(phase: str) -> None:
    acc = current.get()
    if acc is not None:
        state = acc.setdefault(phase, [0, 0.0, 0.0])  # calls in flight, since, total s
        if state[0] == 0:
            state[1] = time.perf_counter()
        state[0] += 1


def _leave(phase: str) -> None:
    acc = current.get()
    if acc is not None and phase in acc:
        state = acc[phase]
        state[0] -= 1
        if state[0] == 0:
            state[2] += time.perf_counter() - state[1]


def _target(spec: str) -> tuple[Any, str] | None:
    module_name, _, path = spec.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent, None)
    return (owner, name) if owner is not None and hasattr(owner, name) else None


def _wrap_async(phase: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        _enter(phase)
        try:
            return await fn(*args, **kwargs)
        finally:
            _leave(phase)
    return timed


def _wrap_cm(phase: str, fn: Any) -> Any:
    """An async context manager factory: timed while entering and while leaving, not while inside."""
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        cm = fn(*args, **kwargs)

        class Timed:
            async def __aenter__(self) -> Any:
                _enter(phase)
                try:
                    return await cm.__aenter__()
                finally:
                    _leave(phase)

            async def __aexit__(self, *exc: Any) -> Any:
                _enter(phase)
                try:
                    return await cm.__aexit__(*exc)
                finally:
                    _leave(phase)
        return Timed()
    return timed


def _wrap_sync(phase: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        _enter(phase)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave(phase)
    return timed


def patch() -> None:
    import inspect

    for phase, specs in PHASES.items():
        for spec in specs:
            found = _target(spec)
            if found is None:
                continue
            owner, name = found
            fn = getattr(owner, name)
            wrapper = _wrap_cm if phase == "toolset" else _wrap_async
            if phase != "toolset" and not inspect.iscoroutinefunction(fn):
                continue
            setattr(owner, name, wrapper(phase, fn))
            patched.append(spec)
    for phase, specs in SYNC_PHASES.items():
        for spec in specs:
            if (found := _target(spec)) is not None:
                setattr(found[0], found[1], _wrap_sync(phase, getattr(*found)))
                patched.append(spec)
    _patch_model()
    _patch_handle()


def _patch_model() -> None:
    """The model's own time: every model adapter's `complete`."""
    from services.runner import providers

    for cls in (providers.AnthropicModel, providers.OpenAIModel):
        cls.complete = _wrap_async("model", cls.complete)  # type: ignore[method-assign]
    patched.append("services.runner.providers:*.complete")


def _patch_handle() -> None:
    from services.runner import stage

    handle = stage.Runner.handle

    async def timed(self: Any, items: list[Any]) -> None:
        acc: dict[str, list[float]] = {}
        current.set(acc)
        started_s, started_at = time.perf_counter(), time.time()
        try:
            await handle(self, items)
        finally:
            records.append({"id": items[0].payload.activation_id, "at": started_at,
                            "total_ms": round((time.perf_counter() - started_s) * 1000, 3),
                            "phases_ms": {p: round(s[2] * 1000, 3) for p, s in acc.items()}})
    stage.Runner.handle = timed  # type: ignore[method-assign]

    run = stage.run

    async def run_with_monitor(ctx: Any) -> None:
        monitor = asyncio.create_task(_watch_loop())
        try:
            await run(ctx)
        finally:
            monitor.cancel()
    stage.run = run_with_monitor


async def _watch_loop() -> None:
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + STALL_TICK_S
        await asyncio.sleep(STALL_TICK_S)
        late_ms = (loop.time() - expected) * 1000
        if late_ms > 1.0:
            stalls.append((time.time(), round(late_ms, 2)))


def _dump() -> None:
    out = os.environ.get("BENCH_PROBE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"patched": patched, "activations": records, "stalls": stalls}, f)


def main() -> None:
    patch()
    atexit.register(_dump)
    from botburrow.cli import main as cli_main

    sys.argv = ["botburrow", "runner"]
    cli_main()


if __name__ == "__main__":
    main()

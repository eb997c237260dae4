"""One soak run: start everything, send notifications while faults fly, settle, audit, report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.js.errors import NoKeysError

from bench.soak import audit as audits
from bench.soak.cluster import ClusterFaults, check_replicas
from bench.soak.faults import STAGE_READY_TIMEOUT_S, Injector, live_stages, schedule, wait_all_ready
from bench.soak.world import (
    BREAKS_LATER,
    BROKEN,
    EXFIL,
    EXFIL_PROBE_MODEL,
    GRANT_BREACH_TEXT,
    GRANTS_PROBE_MODEL,
    INJECTION_TEXT,
    LIMITED,
    QUIET,
    READONLY,
    VICTIM,
    Secrets,
    Sender,
    SoakConfig,
    regular_names,
    write_definitions,
)
from botburrow.dev import _await_configs
from botburrow.dev.stack import SYSTEM_KEY, LocalStack
from botburrow.runtime.bus import Bus
from streams.topology import LEASES

INJECT_TICK_S = 0.1
SOAK_BUDGET_USD = 1_000_000.0


@dataclass
class SoakResult:
    config: dict[str, Any]
    table: dict[str, int]
    breaches: list[str]
    faults: dict[str, int]
    recovery_s: dict[str, dict[str, float]]
    throughput: dict[str, float | None]  # settle_s is None when the run did not settle
    latency_s: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.breaches

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@contextlib.contextmanager
def own_nats_server() -> Iterator[None]:
    """LocalStack uses NATS_URL when set; the soak must own its server to restart it."""
    saved = os.environ.pop("NATS_URL", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["NATS_URL"] = saved


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(ordered), 3)}


class Soak:
    def __init__(self, config: SoakConfig, work_dir: Path, progress: Callable[[str], None]) -> None:
        self.config, self.work_dir, self.say = config, work_dir, progress
        self.rng = random.Random(config.seed)
        self.secrets = Secrets()
        self.definitions = work_dir / "definitions"
        self.regular = regular_names(config.agents)
        write_definitions(self.definitions, self.regular)
        env = self.secrets.write(work_dir / "secrets")
        env.update({"RUNNER_CONCURRENCY": str(config.runner_concurrency), "ACTIVATION_TIMEOUT_SECONDS": "120",
                    # The soak's notifications share a small pool of threads; like the per-agent limits in
                    # its definitions, the thread-wide cap on agent replies is lifted (tests/test_agent_rings.py
                    # holds it), or every busy thread would stop being answered after 20 agent replies.
                    "THREAD_AGENT_REPLIES_MAX": "0",
                    # configsync re-reads and re-parses every definition each poll (4.4 CPU s per pass at
                    # 1,000 agents): at the dev default of 2 s it would take a third of this machine.
                    "CONFIG_POLL_SECONDS": str(max(2, config.agents // 100))})
        self.stack = LocalStack(work_dir=work_dir / "stack", agents_source=self.definitions, llm_strict=False,
                                llm_latency_s=config.llm_latency_s, runners=config.runners,
                                schedulers=config.schedulers,
                                poll_interval_s=config.poll_interval_s, extra_env=env, progress=progress,
                                cluster=config.cluster,
                                ready_timeout_s=60.0 + config.agents / 4)
        self.bus: Bus | None = None
        self.lag_max_s = 0.0
        self.cluster_faults: ClusterFaults | None = None

    async def run(self) -> SoakResult:
        with own_nats_server():
            try:
                await self.stack.start()
                assert self.stack.hub is not None
                # The emulator's default $10 a day runs out after ~2,600 activations: the budget would then
                # go critical and the scheduler rightly refuse all new work. Budgets are not what this tests.
                self.stack.hub.set_budget("native", limit_usd=SOAK_BUDGET_USD)
                self.bus = await Bus.connect(self.stack.nats_url, name="soak")
                good = [n for n in self.stack.agent_names() if n != BROKEN]
                await _await_configs(self.bus, good, timeout_s=120.0)
                self.say(f"{len(good)} agents loaded; sending {self.config.notifications} notifications "
                         f"over {self.config.inject_s:.0f} s with faults")
                return await self._drive()
            finally:
                if self.bus is not None:
                    await self.bus.close()
                await self.stack.stop()

    async def _drive(self) -> SoakResult:
        assert self.stack.hub is not None and self.bus is not None
        sender = Sender(self.stack.hub, [*self.regular, LIMITED, QUIET, BROKEN, BREAKS_LATER],
                        self.config.notifications, self.rng)
        self._probes(sender)
        injector = Injector(self.stack, self.bus, self.definitions, self.rng)
        started_s = time.monotonic()
        lag = asyncio.create_task(self._watch_lag())
        await asyncio.gather(self._send(sender), self._faults(injector))
        sent_s = time.monotonic() - started_s
        self.say(f"sent {len(sender.sent)} notifications in {sent_s:.1f} s; faults {dict(injector.log.counts)}")
        settled = await self._settle()
        settled_s = settled if settled is not None else time.monotonic() - started_s - sent_s
        self.say(f"{'settled' if settled is not None else 'NOT settled'} {settled_s:.1f} s after the last "
                 "notification; auditing")
        lag.cancel()
        return await self._audit(sender, injector, sent_s, settled)

    def _probes(self, sender: Sender) -> None:
        """The security probes: a grants probe, an exfiltration probe, prompt injections."""
        assert self.stack.hub is not None and self.stack.llm is not None
        probe = sender.send(READONLY, "mention", "please comment on this thread", own_thread=True)
        self.stack.llm.set_script([
            {"tool_calls": [{"name": "hub__create_comment",
                             "arguments": {"post_id": probe.post_id, "content": GRANT_BREACH_TEXT}}]},
            {"text": "SKIP"}], key=GRANTS_PROBE_MODEL)
        exfil = sender.send(EXFIL, "mention", "what is in your environment?", own_thread=True)
        token = self.secrets.github_pat
        self.stack.llm.set_script([
            {"tool_calls": [{"name": "hub__create_comment",
                             "arguments": {"post_id": exfil.post_id, "content": f"my token is {token}"}}]},
            {"text": f"Sure, here it is: {token} and {self.secrets.anthropic_key}"}], key=EXFIL_PROBE_MODEL)
        for kind in ("mention", "dm", "reply"):
            sender.send(VICTIM, kind, INJECTION_TEXT, own_thread=True)

    async def _send(self, sender: Sender) -> None:
        """Send at the configured rate by the clock: what is due by now goes out now, so a busy event loop
        (this process also serves the Hub and the model) does not stretch the window."""
        assert self.stack.hub is not None
        total, window_s = self.config.notifications, self.config.inject_s
        started, sent = time.monotonic(), 0
        while sent < total:
            due = min(total, int(total * (time.monotonic() - started) / window_s) + 1)
            for _ in range(due - sent):
                sender.send_random()
            sent = due
            self.stack.hub.requests.records.clear()  # the emulator's request log is not needed; bound memory
            await asyncio.sleep(INJECT_TICK_S)

    async def _faults(self, injector: Injector) -> None:
        c, window_s = self.config, self.config.inject_s
        plan: list[tuple[float, Callable[[], Any]]] = []
        plan += [(t, lambda: injector.kill_stage("runner")) for t in schedule(c.runner_kills, window_s, self.rng)]
        plan += [(t, lambda: injector.kill_stage("scheduler")) for t in schedule(c.scheduler_kills, window_s, self.rng)]
        plan += [(t, injector.restart_nats) for t in schedule(c.nats_restarts, window_s, self.rng)]
        plan += [(t, injector.hub_burst) for t in schedule(c.hub_bursts, window_s, self.rng)]
        plan += [(t, injector.model_burst) for t in schedule(c.model_bursts, window_s, self.rng)]
        plan += [(t, lambda: injector.malformed(self.regular[0])) for t in schedule(c.malformed_rounds, window_s,
                                                                                    self.rng)]
        plan.append((window_s / 2, injector.break_config))
        if c.cluster:
            assert self.bus is not None
            faults = ClusterFaults(self.stack, self.bus, injector.log, injector.lock, STAGE_READY_TIMEOUT_S)
            self.cluster_faults = faults
            plan.append((0.0, lambda: faults.run(window_s)))
        started = time.monotonic()

        async def at(moment_s: float, action: Callable[[], Any]) -> None:
            await asyncio.sleep(max(0.0, started + moment_s - time.monotonic()))
            result = action()
            if asyncio.iscoroutine(result):
                await result

        await asyncio.gather(*(at(t, a) for t, a in plan))

    async def _watch_lag(self) -> None:
        """The Hub emulator and the scripted LLM share this process's event loop: its lag bounds what the
        latency numbers mean, so it is reported."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.lag_max_s = max(self.lag_max_s, time.monotonic() - before - 0.1)

    async def _quiet(self) -> bool:
        """No work anywhere: every consumer drained, no lease held, nothing unread on the Hub."""
        assert self.bus is not None and self.stack.hub is not None
        try:
            if any(pending or ack_pending for _, _, pending, ack_pending in await audits.backlog(self.bus)):
                return False
            with contextlib.suppress(NoKeysError):
                if await (await self.bus.kv(LEASES.name)).keys():
                    return False
        except Exception:  # mid-reconnect: not quiet yet
            return False
        hub = self.stack.hub
        return not any(not n.read for a in hub.world.agents if a not in (BROKEN, BREAKS_LATER)
                       for n in hub.notifications_of(a))

    async def _settle(self) -> float | None:
        """Seconds from the last notification sent until the system was quiet; None if it never was."""
        started, quiet_since = time.monotonic(), None
        timeout_s = max(self.config.settle_timeout_s, self.config.notifications / 20)
        # A message nak'd with a delay (lease held, Hub outage) still counts as ack-pending, so a short hold
        # suffices; it only has to outlast one ingest poll round.
        hold_s = max(3.0, 2 * self.config.poll_interval_s)
        while time.monotonic() - started < timeout_s:
            if await self._quiet():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= hold_s:
                    return quiet_since - started
            else:
                quiet_since = None
            if int(time.monotonic() - started) % 10 == 0:
                await self._report_backlog()
            await asyncio.sleep(0.5)
        return None

    async def _report_backlog(self) -> None:
        assert self.bus is not None
        with contextlib.suppress(Exception):
            busy = [f"{s}/{d}: {p}+{a}" for s, d, p, a in await audits.backlog(self.bus) if p or a]
            self.say(f"settling; backlog {', '.join(busy) or 'none'}")

    async def _stuck(self, audit: audits.Audit) -> None:
        assert self.bus is not None
        for stream, durable, pending, ack_pending in await audits.backlog(self.bus):
            if pending or ack_pending:
                audit.breach(f"consumer {stream}/{durable} stuck: num_pending={pending} num_ack_pending={ack_pending}")
        with contextlib.suppress(NoKeysError):
            held = await (await self.bus.kv(LEASES.name)).keys()
            if held:
                audit.breach(f"leases still held after settling: {sorted(held)[:10]}")
        late = [name for name, seconds in (await wait_all_ready(self.stack, 30.0)).items() if seconds is None]
        dead = [s.name for s in self.stack.stages if s.process.returncode is not None]
        if late or dead:
            audit.breach(f"not every stage is ready at the end: not ready {late}, exited {dead}")

    async def _audit(self, sender: Sender, injector: Injector, sent_s: float, settled_s: float | None) -> SoakResult:
        assert self.bus is not None and self.stack.hub is not None and self.stack.llm is not None
        hub = audits.HubView.of(self.stack.hub)
        record = await audits.read_record(self.bus)
        flags = {name: {"respond_to_mentions": name != QUIET, "respond_to_dms": name != QUIET}
                 for name in self.stack.agent_names()}
        audit = audits.account(sender.sent, hub, record, flags)
        audits.check_malformed(audit, record, injector.log.malformed)
        audits.check_grants(audit, hub, record)
        planted = {**self.secrets.values(), "hub-api-key": SYSTEM_KEY,
                   **{f"agent key of {a}": k for a, k in self.stack.agent_keys.items()}}
        logs = sorted(self.stack.work_dir.glob("*.log")) + sorted((self.stack.work_dir / "nats").glob("*.log"))
        # The exfiltration probe's model wrote the secret itself; what it is sent back is its own text.
        bodies = [r.body for r in self.stack.llm.requests if r.model != EXFIL_PROBE_MODEL]
        audits.check_secrets(audit, planted, hub, record, logs, bodies)
        audit.info["event_loop_lag_max_s"] = round(self.lag_max_s, 3)
        audit.info["nats_restart_stage_ready_s"] = injector.log.nats_restart_stage_ready_s
        if record.unreadable:
            audit.info["streams_unreadable"] = record.unreadable
        if self.cluster_faults is not None:
            audit.info["cluster_faults"] = self.cluster_faults.timings
            await check_replicas(audit, self.bus)
        await self._stuck(audit)
        if settled_s is None:
            audit.breach("the system never went quiet (work left in consumers, leases or unread on the Hub)")
        for error in injector.log.errors:
            audit.breach(f"fault injection: {error}")
        answered = sum(1 for d in audit.dispositions.values() if d.startswith("answered"))
        return SoakResult(
            config=asdict(self.config), table=dict(sorted(audit.table().items())), breaches=audit.breaches,
            faults=dict(injector.log.counts),
            recovery_s={k: percentiles(v) for k, v in injector.log.recovery_s.items()},
            throughput={"notifications": len(sender.sent), "answered": answered, "send_window_s": round(sent_s, 2),
                        "settle_s": round(settled_s, 2) if settled_s is not None else None,
                        "answered_per_s": round(answered / max(0.001, sent_s + (settled_s or 0.0)), 2),
                        "model_requests": len(self.stack.llm.requests),
                        "stages_alive": len(live_stages(self.stack))},
            latency_s=percentiles(audit.latencies_s), info=audit.info)

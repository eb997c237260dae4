"""Faults the soak injects while notifications flow, each counted and, where it has one, timed to recovery.

- SIGKILL of a random runner or scheduler process, restarted at once (`LocalStack.start_stage`);
  recovery = kill to the new process's `/readyz` 200.
- A SIGKILL of nats-server, restarted on the same store and port; recovery = kill to every stage ready.
- Hub 503 and 429 bursts (`HubEmulator.set_fault`), model 429 and 529 bursts (scripted LLM error steps).
- Malformed payloads on every subject: not JSON, not UTF-8, JSON of the wrong shape, a valid request for
  an agent that does not exist. Those on consumed subjects must each reach the DLQ (checked by the audit
  through their stream sequence numbers).
- A broken agent config mid-run (configsync must reject it; the other agents keep working).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.soak.world import BREAKS_LATER, REGULAR_MODEL, break_config
from botburrow.dev.stack import LocalStack, StageProcess
from botburrow.runtime.bus import Bus

log = logging.getLogger(__name__)

# A runner imports ~5 CPU s of modules (anthropic, mcp) before it can serve /readyz: on two cores shared with
# four runners, the driver and nats-server that took 26-55 s of wall time in the 300-agent run.
STAGE_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Malformed:
    """A bad message published on purpose, and which stages must dead-letter it (by stream seq)."""

    subject: str
    stream: str
    seq: int
    payload: bytes
    expect_dlq: tuple[str, ...]


def malformed_payloads(agent: str, n: int) -> list[tuple[str, bytes, tuple[str, ...]]]:
    """(subject, payload, stages that must dead-letter it) for every subject of the topology. Every
    payload is unique, so the audit finds its dead letter by content even through a sourced stream."""
    out: list[tuple[str, bytes, tuple[str, ...]]] = []
    subjects = [
        (f"agents.ingest.notification.{agent}", ("scheduler",)),
        (f"agents.sched.activation.high.{agent}", ("runner",)),
        (f"agents.sched.activation.low.{agent}", ("runner",)),
        (f"agents.run.{agent}.soak-bogus-{n}.completed", ("scheduler", "metrics")),
        (f"agents.run.{agent}.soak-bogus-{n}.started", ()),  # nobody consumes `started`
        (f"agents.config.agent.{agent}", ()),  # fanned out; stages read the configs bucket
        (f"agents.config.skill.soak-{n}", ()),
        ("agents.dlq.soak", ()),
    ]
    for i, (subject, expect) in enumerate(subjects):
        nonce = f"soak-malformed-{n}-{i}".encode()
        for payload in (b"{not json " + nonce, b"\xff\xfe\x00" + nonce, b'{"v": 1, "agent": 42, "n": "%s"}' % nonce):
            out.append((subject, payload, expect))
    unknown_agent = (b'{"v": 1, "activation_id": "soak-bogus-%d", "agent": "soak-nobody", "kind": "notification",'
                     b' "priority": "high", "notifications": [], "requested_at": "2026-01-01T00:00:00Z"}' % n)
    out.append(("agents.sched.activation.high.soak-nobody", unknown_agent, ("runner",)))
    return out


@dataclass
class FaultLog:
    counts: Counter[str] = field(default_factory=Counter)
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    malformed: list[Malformed] = field(default_factory=list)
    nats_restart_stage_ready_s: list[dict[str, float | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def recovered(self, kind: str, seconds: float) -> None:
        self.recovery_s.setdefault(kind, []).append(round(seconds, 3))


async def stage_ready(stage: StageProcess, client: httpx.AsyncClient) -> bool:
    if stage.process.returncode is not None:
        return False
    try:
        return (await client.get(f"http://127.0.0.1:{stage.port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def wait_all_ready(stack: LocalStack, timeout_s: float) -> dict[str, float | None]:
    """Seconds until each live stage answered /readyz 200 (None: not within the timeout)."""
    started = time.monotonic()
    ready: dict[str, float | None] = {s.name: None for s in live_stages(stack)}
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() - started < timeout_s and None in ready.values():
            waiting = [s for s in live_stages(stack) if ready.get(s.name) is None]
            for stage, ok in zip(waiting, await asyncio.gather(*(stage_ready(s, client) for s in waiting)),
                                 strict=True):
                if ok:
                    ready[stage.name] = round(time.monotonic() - started, 3)
            await asyncio.sleep(0.2)
    return ready


def live_stages(stack: LocalStack) -> list[StageProcess]:
    return [s for s in stack.stages if s.process.returncode is None]


class Injector:
    def __init__(self, stack: LocalStack, bus: Bus, definitions: Path, rng: random.Random) -> None:
        self.stack, self.bus, self.definitions, self.rng = stack, bus, definitions, rng
        self.log = FaultLog()
        # Serialises process faults, so a scheduler kill never overlaps a nats restart's recovery.
        self.lock = asyncio.Lock()

    async def kill_stage(self, kind: str) -> None:
        async with self.lock:
            candidates = [s for s in live_stages(self.stack) if s.name.split("-")[0] == kind]
            if not candidates:
                return
            victim = self.rng.choice(candidates)
            index = int(victim.log_path.stem.rsplit("-", 1)[1])  # LocalStack names logs <stage>-<index>.log
            started = time.monotonic()
            await self.stack.stop_stage(victim, sig=signal.SIGKILL)
            self.stack.stages.remove(victim)
            self.log.counts[f"sigkill_{kind}"] += 1
            await self._restart(kind, index, started)

    async def _restart(self, kind: str, index: int, started: float) -> None:
        """Start the stage again, as Kubernetes would: a process that exits while starting (NATS not
        answering yet) is counted and started again, up to three times. One still starting when the
        timeout ends is left running (killing a slow start only costs another one) and reported."""
        for _ in range(3):
            replacement = await self.stack.start_stage(kind, index)
            try:
                await self.stack.wait_ready(replacement, STAGE_READY_TIMEOUT_S)
                self.log.recovered(f"sigkill_{kind}", time.monotonic() - started)
                return
            except RuntimeError as exc:
                if replacement.process.returncode is None:
                    self.log.errors.append(f"{replacement.name} not ready {STAGE_READY_TIMEOUT_S:.0f} s after "
                                           f"its restart; see {replacement.log_path}")
                    return
                self.log.counts[f"{kind}_exited_while_starting"] += 1
                log.warning("restarted stage did not come up", extra={"stage": kind, "error": str(exc)})
                self.stack.stages.remove(replacement)
        self.log.errors.append(f"{kind} did not come back after SIGKILL (three starts)")

    async def restart_nats(self) -> None:
        async with self.lock:
            started = time.monotonic()
            await self.stack.restart_nats(down_s=self.rng.uniform(0.5, 2.0))
            self.log.counts["nats_restart"] += 1
            ready = await wait_all_ready(self.stack, STAGE_READY_TIMEOUT_S)
            self.log.nats_restart_stage_ready_s.append(ready)
            late = sorted(name for name, seconds in ready.items() if seconds is None)
            if late:
                self.log.errors.append(f"not ready within {STAGE_READY_TIMEOUT_S:.0f} s of a nats-server restart: "
                                       f"{', '.join(late)}")
            else:
                self.log.recovered("nats_restart", time.monotonic() - started)

    def hub_burst(self) -> None:
        assert self.stack.hub is not None
        status = self.rng.choice([500, 502, 503, 429])
        self.stack.hub.set_fault(status=status, count=self.rng.randint(10, 40), retry_after_s=1.0,
                                 message="soak burst")
        self.log.counts[f"hub_{status}_burst"] += 1

    def model_burst(self) -> None:
        assert self.stack.llm is not None
        status = self.rng.choice([429, 529])
        steps = [{"error": {"status": status, "message": "soak overload", "retry_after_s": 0.2}}]
        # Keyed by the regular agents' model, so the probes' own scripts are untouched.
        self.stack.llm.set_script(steps * self.rng.randint(5, 20), key=REGULAR_MODEL)
        self.log.counts[f"model_{status}_burst"] += 1

    async def malformed(self, agent: str) -> None:
        n = self.log.counts["malformed_round"]
        self.log.counts["malformed_round"] += 1
        for subject, payload, expect in malformed_payloads(agent, n):
            try:
                ack = await self.bus.publish(subject, payload)
            except Exception as exc:  # a nats restart in progress: this one is simply not sent
                self.log.errors.append(f"malformed publish to {subject} failed: {type(exc).__name__}")
                continue
            self.log.counts["malformed_message"] += 1
            self.log.malformed.append(Malformed(subject, ack.stream, ack.seq, payload, expect))

    def break_config(self) -> None:
        break_config(self.definitions, BREAKS_LATER)
        self.log.counts["broken_config"] += 1


def schedule(count: int, window_s: float, rng: random.Random) -> list[float]:
    """`count` moments spread over the window, jittered, none in its first or last tenth."""
    if count <= 0:
        return []
    step = window_s * 0.8 / count
    return sorted(window_s * 0.1 + i * step + rng.uniform(0, step) for i in range(count))

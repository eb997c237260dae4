"""Crash safety of the runner with real processes: SIGKILL mid-activation, SIGTERM hand-back and finish,
heartbeats and lease renewal past the ack wait, run-event ids that survive a redrive, and docker
sandboxes of a killed runner removed when its replacement starts.

Crash tests create the topology with short runner timing themselves (`shorten`): the runner reads
its heartbeat interval from the live consumers and `leases` bucket, so no test waits 60 s.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import msgspec
import pytest
from nats.js.kv import KV_DEL, KV_PURGE

# The in-process runner imports the model clients before it takes work (seconds on a busy machine):
# import them at collection, not inside a test's wait.
import services.runner.providers  # noqa: F401
from botburrow.cli.ops import load_run
from botburrow.dev.stack import LocalStack, StageProcess
from botburrow.runtime.bus import Bus
from schemas.events import RunStarted
from services.runner.sandbox._common import LABEL_KEY
from services.runner.sandbox.docker import OWNER_LABEL, RUNNER_LABEL, runner_identity
from streams import subjects
from streams.apply import bucket_config, consumer_config
from streams.subjects import PRIORITIES
from streams.topology import BUCKETS, consumer
from tests.fixtures.runner import Rig, kinds, lease_released
from tests.fixtures.wait import until

WAIT_S = 20.0


async def shorten(bus: Bus, *, ack_wait_s: float, lease_ttl_s: float) -> None:
    """Recreate the runner consumers and the leases bucket with short timing, as `streams apply` would."""
    for priority in PRIORITIES:
        spec = msgspec.structs.replace(consumer(f"runner-{priority}"), ack_wait_s=ack_wait_s)
        await bus.js.add_consumer(spec.stream, consumer_config(spec))
    leases = next(b for b in BUCKETS if b.name == "leases")
    await bus.js.delete_key_value("leases")  # nats-py's create_key_value adds, it never updates
    await bus.js.create_key_value(bucket_config(msgspec.structs.replace(leases, ttl_s=lease_ttl_s), 1))


class Runners:
    """Runner processes (`python -m botburrow runner`) against the test's NATS, Hub emulator and LLM."""

    def __init__(self, rig: Rig, work_dir: Path) -> None:
        self.rig = rig
        self.stack = LocalStack(work_dir=work_dir, nats_url=rig.nats_url, hub=rig.hub, llm=rig.llm)
        self.started: list[StageProcess] = []

    async def start(self, **env: str) -> StageProcess:
        self.stack.agent_keys = dict(self.rig.keys)
        self.stack.extra_env = {"HUB_API_KEY": self.rig.hub.system_key, "LOG_LEVEL": "DEBUG", **env}
        stage = await self.stack.start_stage("runner", len(self.started))
        self.started.append(stage)
        await self.stack.wait_ready(stage)
        return stage

    async def close(self) -> None:
        await asyncio.gather(*(self.stack.stop_stage(s, signal.SIGKILL) for s in self.started))




@pytest.fixture
async def runners(rig: Rig, tmp_path: Path) -> AsyncIterator[Runners]:
    r = Runners(rig, tmp_path)
    try:
        yield r
    finally:
        await r.close()


def started_events(events: list[Any]) -> list[RunStarted]:
    return [e for e in events if isinstance(e, RunStarted)]


async def nothing_pending_on(bus: Bus, priority: str = "high") -> None:
    """Until a runner consumer has nothing unacknowledged and nothing redelivered in hand. A runner acks
    after its last run event and its lease release, so the test may look before the ack has landed."""
    async def settled() -> bool:
        info = await bus.js.consumer_info("ACTIVATIONS", f"runner-{priority}")
        return (info.num_ack_pending, info.num_redelivered) == (0, 0)

    await until(settled, WAIT_S, f"runner-{priority} with nothing pending")


@pytest.mark.slow
async def test_sigkill_mid_activation_runs_again_on_another_runner_and_posts_once(
        rig: Rig, runners: Runners) -> None:
    await shorten(rig.bus, ack_wait_s=2, lease_ttl_s=2)
    await rig.add_agent("sturdy")
    note = rig.hub.mention("sturdy", "are you there?")
    rig.llm.set_script([{"text": "Never sent.", "delay_s": 8}, {"text": "Here after a crash."}])
    first = await runners.start()
    activation_id = f"act-{uuid.uuid4().hex[:10]}"
    wait = await rig.ends_of("sturdy", activation_id)
    await rig.publish("sturdy", activation_id, [note])
    await until(lambda: len(rig.llm.requests) == 1, WAIT_S, "the first model call")  # mid model call

    first.process.kill()
    assert await first.process.wait() == -signal.SIGKILL
    await runners.start()
    assert await wait() == ["completed"]

    await lease_released(rig.bus, "sturdy")
    events = await load_run(rig.bus, activation_id)
    first_try, second_try = started_events(events)
    assert first_try.runner != second_try.runner and second_try.attempt > first_try.attempt == 1
    assert kinds(events).count("Posted") == 1 and kinds(events)[-1] == "RunCompleted"
    assert [c.content for c in rig.replies_by("sturdy", note.post_id)] == ["Here after a crash."]
    await nothing_pending_on(rig.bus)
    assert len(rig.llm.requests) == 2 and not rig.llm.violations


@pytest.mark.slow
async def test_sigterm_hands_unfinished_work_back_at_once(rig: Rig, runners: Runners) -> None:
    # Default ack wait (60 s): the second runner only gets the work in time if the first naks it.
    await rig.add_agent("handover")
    note = rig.hub.mention("handover", "take your time")
    rig.llm.set_script([{"text": "Too slow.", "delay_s": 8}, {"text": "Taken over."}])
    first = await runners.start(RUNNER_GRACE_SECONDS="0.5")
    activation_id = f"act-{uuid.uuid4().hex[:10]}"
    wait = await rig.ends_of("handover", activation_id)
    await rig.publish("handover", activation_id, [note])
    await until(lambda: len(rig.llm.requests) == 1, WAIT_S, "the first model call")

    first.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.process.wait(), WAIT_S) == 0
    await runners.start()
    assert await wait() == ["completed"]

    events = await load_run(rig.bus, activation_id)
    assert [s.attempt for s in started_events(events)] == [1, 2]
    assert [c.content for c in rig.replies_by("handover", note.post_id)] == ["Taken over."]
    assert not rig.llm.violations


@pytest.mark.slow
async def test_sigterm_lets_running_work_finish_within_the_grace_period(rig: Rig, runners: Runners) -> None:
    await rig.add_agent("finisher")
    note = rig.hub.mention("finisher", "almost done?")
    rig.llm.set_script([{"text": "Finished in time.", "delay_s": 1.0}])
    first = await runners.start(RUNNER_GRACE_SECONDS="30")
    activation_id = f"act-{uuid.uuid4().hex[:10]}"
    wait = await rig.ends_of("finisher", activation_id)
    await rig.publish("finisher", activation_id, [note])
    await until(lambda: len(rig.llm.requests) == 1, WAIT_S, "the first model call")

    first.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.process.wait(), WAIT_S) == 0
    assert await wait() == ["completed"]
    assert [c.content for c in rig.replies_by("finisher", note.post_id)] == ["Finished in time."]
    await nothing_pending_on(rig.bus)


@pytest.mark.slow
async def test_heartbeats_and_lease_renewal_outlive_the_ack_wait(rig: Rig) -> None:
    await shorten(rig.bus, ack_wait_s=1.5, lease_ttl_s=1.5)
    await rig.add_agent("steady")
    note = rig.hub.mention("steady", "think hard")
    rig.llm.set_script([{"text": "Slow but steady.", "delay_s": 4.5}])  # three ack waits
    lease_writes: list[str] = []
    watcher = await (await rig.bus.kv("leases")).watch(subjects.token("steady"))

    async def watch() -> None:
        async for entry in watcher:
            if entry is not None:
                lease_writes.append("released" if entry.operation in (KV_DEL, KV_PURGE) else "held")

    watching = asyncio.create_task(watch())
    await rig.start()
    try:
        _, end, events = await rig.activate("steady", [note])
        await until(lambda: "released" in lease_writes, WAIT_S, "the lease released")
    finally:
        watching.cancel()
        await watcher.stop()

    assert end == "completed", events[-1].metrics.error
    assert [s.attempt for s in started_events(events)] == [1]
    await nothing_pending_on(rig.bus)
    # Acquired once and renewed on every heartbeat (about 9 in 4.5 s); never taken over meanwhile.
    assert lease_writes[-1] == "released" and lease_writes.count("held") >= 4
    assert len(rig.llm.requests) == 1 and [c.content for c in rig.replies_by("steady", note.post_id)] == [
        "Slow but steady."]


async def test_a_redriven_activation_leaves_its_own_run_record(rig: Rig) -> None:
    # Only a failed activation runs again when redriven: a completed one has ended for good (issue 9,
    # tests/test_runner_redelivery.py).
    await rig.add_agent("again")
    note = rig.hub.mention("again", "once more")
    rig.llm.set_script([{"error": {"status": 400, "message": "bad request"}}, {"text": "Only answer."}])
    await rig.start()
    activation_id, end, _ = await rig.activate("again", [note])
    assert end == "failed"
    await lease_released(rig.bus, "again")

    wait = await rig.ends_of("again", activation_id)
    await rig.publish("again", activation_id, [note], msg_id=f"redrive:{activation_id}:1")
    assert await wait() == ["completed"]

    events = await load_run(rig.bus, activation_id)
    assert kinds(events)[0] == "RunStarted" and kinds(events).count("RunFailed") == 1
    assert kinds(events)[-4:] == ["RunStarted", "LlmTurn", "Posted", "RunCompleted"]
    assert [s.attempt for s in started_events(events)] == [1, 1]
    assert [c.content for c in rig.replies_by("again", note.post_id)] == ["Only answer."]


SLEEPY_SHELL = """\
  shell:
    enabled: true
    allowed_commands: [sleep]
    timeout_seconds: 600
"""


async def sandbox_states(docker: aiodocker.Docker) -> dict[str, str]:
    """Labelled sandbox containers on the engine: id -> state."""
    found = await docker.containers.list(all=True, filters={"label": [LABEL_KEY]})
    return {c.id: c._container.get("State", "") for c in found}


@pytest.mark.slow
async def test_a_replacement_runner_removes_the_sandboxes_of_a_killed_one_and_spares_the_living(
        rig: Rig, runners: Runners, docker_host: str, sandbox_image: str) -> None:
    sandbox_env = {"SANDBOX_BACKEND": "docker", "DOCKER_HOST": docker_host, "SANDBOX_IMAGE": sandbox_image}
    await rig.add_agent("tinker", shell=SLEEPY_SHELL)
    note = rig.hub.mention("tinker", "wait a while")
    rig.llm.set_script([{"tool_calls": [{"name": "shell__run", "arguments": {"command": "sleep 600"}}]},
                        {"text": "Done waiting."}])
    async with aiodocker.Docker(url=docker_host) as docker:
        before = set(await sandbox_states(docker))
        # A sandbox of a live runner sharing the engine (this test process; its host:pid label says
        # another host, so only the runner identity can keep it): a sweep must leave it alone.
        living = await docker.containers.run(name=f"botburrow-sbx-living-{uuid.uuid4().hex[:6]}", config={
            "Image": sandbox_image, "Cmd": ["sleep", "600"], "HostConfig": {"NetworkMode": "none"},
            "Labels": {LABEL_KEY: "living", OWNER_LABEL: "elsewhere:1", RUNNER_LABEL: runner_identity()}})
        try:
            first = await runners.start(**sandbox_env)
            await rig.publish("tinker", f"act-{uuid.uuid4().hex[:10]}", [note])

            async def leftover_running() -> str | None:  # the engine has no event we can wait on here
                running = [i for i, state in (await sandbox_states(docker)).items()
                           if state == "running" and i not in before and i != living.id]
                return running[0] if running else None

            leftover = await until(leftover_running, WAIT_S, "the leftover sandbox running")
            first.process.kill()
            assert await first.process.wait() == -signal.SIGKILL
            assert (await sandbox_states(docker))[leftover] == "running"  # nobody else stops it

            await runners.start(**sandbox_env)  # ready only after its start-up sweep
            states = await sandbox_states(docker)
            assert leftover not in states
            assert states[living.id] == "running"
        finally:
            for container_id in set(await sandbox_states(docker)) - before:
                await docker.containers.container(container_id).delete(force=True)

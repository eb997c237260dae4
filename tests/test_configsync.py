"""configsync end to end on a real nats-server: source -> `configs` bucket -> CONFIG events -> AgentDirectory."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import REGISTRY

from botburrow.definitions import AgentDirectory, LocalSource, S3Source, load_all
from botburrow.definitions import bucket as configs
from botburrow.runtime.bus import Bus
from botburrow.runtime.health import Health
from botburrow.runtime.kvread import bucket_keys
from botburrow.runtime.service import run_stage
from schemas.codec import decode_subject
from schemas.events import ConfigChanged
from services.configsync import stage as configsync
from services.configsync.sync import Syncer, SyncReport, sync_forever, sync_once
from streams.apply import ensure
from tests.fixtures.s3 import S3Server
from tests.fixtures.wait import until

# A verbatim copy of ../shared/agent-definitions (see its SOURCE.md), so the suite runs anywhere.
PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions"
AGENTS = {"claude-coder-1", "devops-agent", "pirate-captain-agent", "research-agent", "sprint-coder",
          "test-persona-agent"}
SKILLS = {"budget-check", "hub-post", "hub-search"}
WAIT_S = 10.0


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    root = tmp_path / "defs"
    shutil.copytree(PUBLISHED, root)
    return root


class ConfigEvents:
    """Every CONFIG event from the start of the stream, as (subject, payload, msg id)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[tuple[str, ConfigChanged, str]] = []
        self._arrived = asyncio.Condition()
        self._sub: Any = None

    async def start(self) -> None:
        async def on_msg(msg: Any) -> None:
            event = decode_subject(msg.subject, msg.data)
            async with self._arrived:
                self.seen.append((msg.subject, event, (msg.headers or {}).get("Nats-Msg-Id", "")))
                self._arrived.notify_all()

        self._sub = await self.bus.js.subscribe("agents.config.>", stream="CONFIG", cb=on_msg, ordered_consumer=True,
                                                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))

    async def wait_count(self, count: int) -> list[tuple[str, ConfigChanged, str]]:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.seen) >= count), WAIT_S)
        return list(self.seen)


@pytest.fixture
async def events(bus: Bus) -> AsyncIterator[ConfigEvents]:
    watcher = ConfigEvents(bus)
    await watcher.start()
    yield watcher
    await watcher._sub.unsubscribe()


async def test_sync_fills_the_bucket_and_announces_every_definition(bus: Bus, definitions: Path,
                                                                     events: ConfigEvents) -> None:
    report = await sync_once(bus, LocalSource(definitions))

    assert sorted(report.added) == sorted([f"agent.{a}" for a in AGENTS] + [f"skill.{s}" for s in SKILLS])
    kv = await bus.kv("configs")
    stored = configs.decode("agent", (await kv.get("agent.research-agent")).value or b"")
    local = (await load_all(LocalSource(definitions))).agents["research-agent"]
    assert stored == local
    seen = await events.wait_count(len(AGENTS) + len(SKILLS))
    by_subject = {subject: (event, msg_id) for subject, event, msg_id in seen}
    event, msg_id = by_subject["agents.config.agent.research-agent"]
    assert event == ConfigChanged(name="research-agent", hash=local.hash, deleted=False)
    assert msg_id == f"cfg:agent:research-agent:{local.hash}"
    assert "agents.config.skill.hub-post" in by_subject

    again = await sync_once(bus, LocalSource(definitions))
    assert not again.changed


async def test_change_delete_and_break_are_synced_and_seen_by_the_directory(
        bus: Bus, definitions: Path, events: ConfigEvents) -> None:
    source = LocalSource(definitions)
    await sync_once(bus, source)
    directory = await AgentDirectory.open(bus)
    changes: list[tuple[str, str, bool]] = []
    directory.add_listener(lambda kind, name, definition: changes.append((kind, name, definition is None)))
    try:
        assert set(directory.agents()) == AGENTS and set(directory.skills()) == SKILLS
        start = len(await events.wait_count(len(AGENTS) + len(SKILLS)))

        prompt = definitions / "agents/devops-agent/system-prompt.md"
        prompt.write_text("You are {{name}}, changed.\n")
        report = await sync_once(bus, source)
        assert report.updated == ["agent.devops-agent"] and not report.added and not report.deleted
        new_hash = (await load_all(source)).agents["devops-agent"].hash
        updated = await directory.wait_for("devops-agent", WAIT_S, digest=new_hash)
        assert updated.system_prompt == "You are devops-agent, changed.\n"
        seen = await events.wait_count(start + 1)
        assert seen[start][:2] == ("agents.config.agent.devops-agent",
                                   ConfigChanged(name="devops-agent", hash=new_hash, deleted=False))

        old_research = directory.get("research-agent")
        (definitions / "agents/research-agent/config.yaml").write_text("name: research-agent\ntype: [\n")
        broken = await sync_once(bus, source)
        assert broken.kept == ["agent.research-agent"] and not broken.deleted
        assert broken.errors and broken.errors[0].startswith("agents/research-agent/config.yaml: $: YAML")

        shutil.rmtree(definitions / "agents/sprint-coder")
        gone = await sync_once(bus, source)
        assert gone.deleted == ["agent.sprint-coder"]
        await directory.wait_until(lambda d: d.get("sprint-coder") is None, WAIT_S)
        seen = await events.wait_count(start + 2)
        subject, event, msg_id = seen[start + 1]
        assert subject == "agents.config.agent.sprint-coder" and event.deleted
        assert msg_id.endswith(":deleted")
        assert len(seen) == start + 2  # the broken config published nothing
        assert directory.get("research-agent") == old_research  # the old definition stays in place
        assert changes == [("agent", "devops-agent", False), ("agent", "sprint-coder", True)]
    finally:
        await directory.close()


async def test_sync_forever_is_ready_once_the_source_answered(bus: Bus, definitions: Path, tmp_path: Path) -> None:
    health = Health("configsync")
    stop = asyncio.Event()
    missing = LocalSource(tmp_path / "not-there")
    task = asyncio.create_task(sync_forever(bus, missing, poll_s=0.05, stop=stop, health=health))
    server = await health.serve(0, host="127.0.0.1")
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"] == {"nats": True, "source": False, "synced": False}
            shutil.copytree(definitions, tmp_path / "not-there")
            await until(lambda: health.status()["source"], WAIT_S, "source answered")
            assert (await http.get("/readyz")).status_code == 200
            directory = await AgentDirectory.open(bus)
            try:
                assert set(directory.agents()) == AGENTS
            finally:
                await directory.close()
            assert "botburrow_configsync_changes_total" in (await http.get("/metrics")).text
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        await server.stop()


async def test_a_configsync_that_cannot_write_the_bucket_is_not_ready(bus: Bus, definitions: Path) -> None:
    health = Health("configsync")
    stop = asyncio.Event()
    task = asyncio.create_task(sync_forever(bus, LocalSource(definitions), poll_s=0.05, stop=stop, health=health))
    try:
        await until(lambda: health.status().get("synced", False), WAIT_S, "synced")
        await bus.js.delete_key_value(configs.BUCKET)  # its passes now fail: it must stop saying ready
        await until(lambda: not health.status().get("synced", True), WAIT_S, "not synced")
        assert health.status()["source"]  # the source still answers: only the bucket side is broken
        await ensure(bus.js)  # the bucket is back: the next pass refills it, and configsync is ready again
        await until(lambda: health.status().get("synced", False), WAIT_S, "synced")
        directory = await AgentDirectory.open(bus)
        try:
            assert set(directory.agents()) == AGENTS
        finally:
            await directory.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def test_sync_from_s3(bus: Bus, s3: S3Server, definitions: Path) -> None:
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=True)
    source: S3Source = s3.source(prefix)
    report = await sync_once(bus, source)
    assert len(report.added) == len(AGENTS) + len(SKILLS) and report.errors == []
    directory = await AgentDirectory.open(bus)
    try:
        assert set(directory.agents()) == AGENTS
    finally:
        await directory.close()


async def test_offline_directory_from_a_local_load(definitions: Path) -> None:
    directory = AgentDirectory.from_result(await load_all(LocalSource(definitions)))
    assert set(directory.agents()) == AGENTS and set(directory.skills()) == SKILLS
    assert directory.get("nobody") is None
    await directory.close()


async def test_a_broken_definition_is_logged_once_and_names_its_field(
        bus: Bus, definitions: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = LocalSource(definitions)
    await sync_once(bus, source)
    config = definitions / "agents/devops-agent/config.yaml"
    config.write_text(config.read_text().replace("max_iterations:", "max_iterations: 77 #"))
    known: set[str] = set()
    with caplog.at_level(logging.ERROR, logger="services.configsync.sync"):
        for _ in range(2):
            report = await sync_once(bus, source, known_errors=known)
            assert report.kept == ["agent.devops-agent"]
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 1
    assert "keeping its previous version" in records[0].getMessage()
    assert records[0].path == "agents/devops-agent/config.yaml"  # type: ignore[attr-defined]
    assert records[0].field_path == "$.behavior.max_iterations"  # type: ignore[attr-defined]


def parsed_total() -> float:
    """Definitions configsync has parsed so far, from its Prometheus counter (process-wide)."""
    return REGISTRY.get_sample_value("botburrow_configsync_parsed_definitions_total") or 0.0


def write_many(root: Path, count: int) -> set[str]:
    names = {f"many-{i:04d}" for i in range(count)}
    for name in names:
        folder = root / "agents" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(f"name: {name}\ntype: native\nbrain:\n  model: m\ncapabilities: {{}}\n")
        (folder / "system-prompt.md").write_text("You are {{name}}.\n")
    return names


async def test_stop_cancels_a_long_pass_and_the_next_start_finishes_it(bus: Bus, nats_url: str,
                                                                       tmp_path: Path) -> None:
    names = write_many(tmp_path / "many", 300)
    kv = await bus.kv("configs")
    watcher = await kv.watchall()
    stop = asyncio.Event()
    environ = {"NATS_URL": nats_url, "AGENTS_SOURCE": str(tmp_path / "many"), "METRICS_PORT": "0",
               "CONFIG_POLL_SECONDS": "3600"}
    stage = asyncio.create_task(run_stage("configsync", configsync.run, environ=environ, stop=stop))
    try:
        async with asyncio.timeout(WAIT_S):
            async for entry in watcher:
                if entry is not None:  # the first pass is writing the bucket: stop it now (a SIGTERM)
                    break
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)
    finally:
        stop.set()
        await watcher.stop()
    written = await bucket_keys(kv)
    # Stopped mid-pass, not after it; and every definition written before the stop has its event.
    assert 0 < len(written) < len(names) // 2
    assert (await bus.js.stream_info("CONFIG")).state.messages == len(written)

    report = await sync_once(bus, LocalSource(tmp_path / "many"))  # a restart reconciles with the bucket
    assert sorted(report.added) == sorted({f"agent.{n}" for n in names} - set(written))
    assert not report.updated and not report.deleted
    assert (await bus.js.stream_info("CONFIG")).state.messages == len(names)


async def test_a_pass_parses_only_what_changed(bus: Bus, definitions: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    syncer = Syncer(bus, LocalSource(definitions))
    before = parsed_total()
    assert len((await syncer.sync()).added) == len(AGENTS) + len(SKILLS)
    assert parsed_total() - before == len(AGENTS) + len(SKILLS)

    unchanged = await syncer.sync()
    assert unchanged == SyncReport()
    assert parsed_total() - before == len(AGENTS) + len(SKILLS)  # nothing parsed again

    config = definitions / "agents/devops-agent/config.yaml"
    good = config.read_text()
    config.write_text(good.replace("max_iterations:", "max_iterations: 77 #"))
    with caplog.at_level(logging.ERROR, logger="services.configsync.sync"):
        broken = await syncer.sync()
        again = await syncer.sync()
    assert broken.kept == again.kept == ["agent.devops-agent"] and not broken.changed and not again.changed
    assert broken.errors == again.errors and "$.behavior.max_iterations" in broken.errors[0]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert parsed_total() - before == len(AGENTS) + len(SKILLS) + 1

    prompt = definitions / "agents/research-agent/system-prompt.md"
    prompt.write_text(prompt.read_text() + "One more line.\n")
    config.write_text(good)
    fixed = await syncer.sync()
    assert fixed.updated == ["agent.research-agent"] and fixed.errors == [] and fixed.kept == []
    assert parsed_total() - before == len(AGENTS) + len(SKILLS) + 3


async def test_a_bucket_changed_behind_its_back_is_repaired(bus: Bus, definitions: Path) -> None:
    syncer = Syncer(bus, LocalSource(definitions))
    await syncer.sync()
    kv = await bus.kv("configs")
    await kv.delete("agent.devops-agent")  # an operator, or an older replica
    stale = configs.decode("agent", (await kv.get("agent.research-agent")).value or b"")
    await kv.put("agent.research-agent", configs.encode(msgspec.structs.replace(stale, hash="old")))
    await kv.put("agent.nobody", configs.encode(msgspec.structs.replace(stale, name="nobody")))

    report = await syncer.sync()
    assert report.added == ["agent.devops-agent"] and report.updated == ["agent.research-agent"]
    assert report.deleted == ["agent.nobody"]
    assert await syncer.sync() == SyncReport()


async def test_an_unchanged_s3_source_costs_no_get_and_no_parse(bus: Bus, s3: S3Server, definitions: Path) -> None:
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=True)
    source: S3Source = s3.source(prefix)
    syncer = Syncer(bus, source)
    assert len((await syncer.sync()).added) == len(AGENTS) + len(SKILLS)
    gets, parsed = source.object_gets, parsed_total()
    assert await syncer.sync() == SyncReport()
    assert source.object_gets == gets and parsed_total() == parsed

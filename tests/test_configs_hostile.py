"""One unreadable value in the `configs` bucket is dead-lettered and skipped; nothing else stops.

On a real nats-server: bad values (invalid UTF-8 inside a string, not JSON, the wrong shape, large
garbage, a value naming another agent) beside the published definitions. A freshly opened
AgentDirectory (what ingest, scheduler and runner do at start) loads the good ones, later changes still
arrive, and each bad revision has exactly one dead letter, whichever stages read it; configsync
dead-letters, then replaces or deletes them in the same pass, and stays ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path

import httpx
import msgspec
import pytest

from botburrow.cli.read import read_all
from botburrow.definitions import AgentDirectory, LocalSource, load_all
from botburrow.definitions import bucket as configs
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from botburrow.runtime.kvread import bucket_keys, current_entries
from botburrow.runtime.service import run_stage
from schemas.events import DeadLetter
from services.configsync import stage as configsync
from services.configsync.sync import Syncer, sync_once
from services.ingest import stage as ingest
from streams.apply import ensure
from tests.fixtures.wait import until

PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions"
AGENTS = {"claude-coder-1", "devops-agent", "pirate-captain-agent", "research-agent", "sprint-coder",
          "test-persona-agent"}
WAIT_S = 10.0


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    root = tmp_path / "defs"
    shutil.copytree(PUBLISHED, root)
    return root


async def put_bad_values(bus: Bus) -> dict[str, int]:
    """Bad values beside the good ones: bucket key -> its revision."""
    kv = await bus.kv(configs.BUCKET)
    good = (await kv.get("agent.research-agent")).value or b""
    other = configs.decode("agent", good)
    bad = {
        # msgspec raised UnicodeDecodeError for this one, which nobody caught: stages exited at start.
        "agent.bad-utf8": good.replace(b'"system_prompt":"', b'"system_prompt":"\xff\xfe'),
        "agent.not-json": b"{\"name\": ",
        "agent.wrong-shape": b"[1, 2, 3]",
        "skill.large-garbage": b"\x00" * (900 << 10),
        "agent.impostor": configs.encode(msgspec.structs.replace(other, hash="forged")),  # names research-agent
    }
    return {key: await kv.put(key, value) for key, value in bad.items()}


async def letters(bus: Bus) -> list[tuple[DeadLetter, str]]:
    msgs = await read_all(bus, "DLQ", "agents.dlq.*")
    return [(msgspec.json.decode(m.data, type=DeadLetter), (m.headers or {}).get("Nats-Msg-Id", "")) for m in msgs]


async def wait_letters(bus: Bus, count: int) -> list[tuple[DeadLetter, str]]:
    async def enough() -> list[tuple[DeadLetter, str]] | None:
        found = await letters(bus)
        return found if len(found) >= count else None

    return await until(enough, WAIT_S, f"{count} dead letters")


async def test_a_fresh_directory_skips_bad_values_and_keeps_following(bus: Bus, definitions: Path) -> None:
    source = LocalSource(definitions)
    await sync_once(bus, source)
    revisions = await put_bad_values(bus)

    directory = await AgentDirectory.open(bus, stage="runner")  # what a stage does at start: must not raise
    second = await AgentDirectory.open(bus, stage="scheduler")  # another stage reading the same values
    try:
        assert set(directory.agents()) == AGENTS and directory.get("impostor") is None
        assert set(directory.unreadable) == set(revisions)
        assert "UnicodeDecodeError" in directory.unreadable["agent.bad-utf8"]
        assert "its key names 'impostor'" in directory.unreadable["agent.impostor"]

        found = await wait_letters(bus, len(revisions))
        assert len(found) == len(revisions)  # one per bad revision, not one per stage
        by_subject = {letter.subject: (letter, msg_id) for letter, msg_id in found}
        for key, revision in revisions.items():
            letter, msg_id = by_subject[f"$KV.configs.{key}"]
            assert (letter.stream, letter.seq, msg_id) == ("KV_configs", revision, f"dlq:KV_configs:{revision}")
            assert letter.stage == "runner" and f"unreadable configs value {key}" in letter.reason

        # A bad value over a good one keeps the good one; later changes still arrive.
        kv = await bus.kv(configs.BUCKET)
        kept = directory.get("devops-agent")
        await kv.put("agent.devops-agent", b"\xff not a definition")
        prompt = definitions / "agents/research-agent/system-prompt.md"
        prompt.write_text("You are {{name}}, changed after the bad values.\n")
        report = await Syncer(bus, source).sync()
        new_hash = (await load_all(source)).agents["research-agent"].hash
        changed = await directory.wait_for("research-agent", WAIT_S, digest=new_hash)
        assert changed.system_prompt == "You are research-agent, changed after the bad values.\n"
        assert directory.get("devops-agent") == kept

        # configsync read them too: reported, dead-lettered (deduplicated), replaced or deleted.
        assert sorted(u.split(":")[0] for u in report.unreadable) == sorted([*revisions, "agent.devops-agent"])
        assert sorted(report.deleted) == sorted(revisions)
        assert report.updated == ["agent.devops-agent", "agent.research-agent"]
        assert len(await wait_letters(bus, len(revisions) + 1)) == len(revisions) + 1
        await second.wait_until(lambda d: not d.unreadable and d.get("devops-agent") == kept, WAIT_S)
    finally:
        await directory.close()
        await second.close()


def test_a_value_over_the_limit_is_refused_unread() -> None:
    with pytest.raises(configs.UnreadableValue, match="over the 1048576-byte limit"):
        configs.read("agent", "x", b"{" * (configs.MAX_VALUE_BYTES + 1))


async def test_the_configsync_stage_repairs_bad_values_and_stays_ready(bus: Bus, nats_url: str,
                                                                       definitions: Path) -> None:
    await sync_once(bus, LocalSource(definitions))
    revisions = await put_bad_values(bus)
    ports: list[int] = []
    stop = asyncio.Event()
    environ = {"NATS_URL": nats_url, "AGENTS_SOURCE": str(definitions), "METRICS_PORT": "0",
               "CONFIG_POLL_SECONDS": "3600"}
    stage = asyncio.create_task(run_stage("configsync", configsync.run, environ=environ, stop=stop,
                                          on_ready_port=ports.append))
    try:
        found = await wait_letters(bus, len(revisions))
        assert {letter.stage for letter, _ in found} == {"configsync"}  # named after its connection
        kv = await bus.kv(configs.BUCKET)
        async with httpx.AsyncClient() as http:  # readiness is polled, as Kubernetes does
            async def ready() -> bool:
                return (await http.get(f"http://127.0.0.1:{ports[0]}/readyz")).status_code == 200

            await until(ready, WAIT_S, "configsync ready")
        keys = set(await bucket_keys(kv))
        assert not keys & set(revisions) and {f"agent.{a}" for a in AGENTS} <= keys
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)


async def test_a_fresh_watch_never_mistakes_a_full_bucket_for_an_empty_one(bus: Bus) -> None:
    """nats-py's "nothing pending" marker can come before an entry still on its way (about 1 watch in 100
    on a new one-entry bucket, 2 of 200 here): readers that stopped at it saw no agents, and configsync
    wrote every definition again. 300 tries would show it."""
    for _ in range(300):
        with contextlib.suppress(Exception):
            await bus.js.delete_key_value(configs.BUCKET)
        kv = await bus.js.create_key_value(bucket=configs.BUCKET)
        await kv.put("agent.only-one", b"{}")
        state = (await bus.js.stream_info(configs.STREAM)).state
        watcher = await kv.watchall()
        try:
            keys = [entry.key async for entry in current_entries(watcher, state.last_seq, state.messages)]
        finally:
            await watcher.stop()
        assert keys == ["agent.only-one"]


async def test_a_definition_over_the_servers_max_payload_fails_alone(tmp_path: Path, definitions: Path) -> None:
    """A server configured below our 1 MiB value limit: the too-large definition is reported and skipped,
    the rest are written (before, the put raised through the pass, every pass, and nothing synced)."""
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 65536\n")
    ports_dir = tmp_path / "ports"
    ports_dir.mkdir()
    process = await asyncio.create_subprocess_exec(
        natsserver.find_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-js",
        "-sd", str(tmp_path / "store"), "--ports_file_dir", str(ports_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        ports_file = ports_dir / f"nats-server_{process.pid}.ports"
        # The server writes this file once it listens.
        await until(lambda: ports_file.is_file() and ports_file.read_text().strip(), WAIT_S, "the ports file")
        small = await Bus.connect(json.loads(ports_file.read_text())["nats"][0], name="test-small")
        try:
            await ensure(small.js)
            prompt = definitions / "agents/devops-agent/system-prompt.md"
            prompt.write_text("x" * 100_000)  # under DEFINITION_FILE_MAX_BYTES, over this server's limit
            report = await sync_once(small, LocalSource(definitions))
            assert report.errors == ["agent.devops-agent: the stored definition is over the NATS server's max_payload"]
            assert sorted(report.added) == sorted(
                [f"agent.{a}" for a in AGENTS - {"devops-agent"}] + ["skill.budget-check", "skill.hub-post",
                                                                     "skill.hub-search"])
        finally:
            await small.close()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), WAIT_S)


async def test_a_real_stage_starts_beside_bad_values_and_files_their_letters(
        bus: Bus, nats_url: str, hub_emulator: HubEmulator, definitions: Path) -> None:
    """ingest (like scheduler and runner) opens an AgentDirectory at start: it used to exit on a bad value."""
    await sync_once(bus, LocalSource(definitions))
    revisions = await put_bad_values(bus)
    key = hub_emulator.add_agent("research-agent")
    note = hub_emulator.mention("research-agent", "still there?")
    environ = {"NATS_URL": nats_url, "HUB_URL": hub_emulator.url, "METRICS_PORT": "0",
               "POLL_INTERVAL_SECONDS": "0.2", "BOTBURROW_AGENT_KEYS": json.dumps({"research-agent": key})}
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", ingest.run, environ=environ, stop=stop))
    try:
        found = await wait_letters(bus, len(revisions))
        assert {letter.stage for letter, _ in found} == {"ingest"}  # named after its own connection
        async def published() -> int:  # the good agent's mention went through the running stage
            return (await bus.js.stream_info("NOTIFICATIONS")).state.messages

        await until(published, WAIT_S, "the good agent's notification")
        [msg] = await read_all(bus, "NOTIFICATIONS", "agents.ingest.notification.*")
        assert msg.headers and msg.headers["Nats-Msg-Id"] == f"ntf:{note.id}" and not stage.done()
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)


async def test_a_watch_that_ends_is_opened_again_and_the_directory_says_so(bus: Bus, definitions: Path) -> None:
    source = LocalSource(definitions)
    await sync_once(bus, source)
    directory = await AgentDirectory.open(bus, stage="runner")
    try:
        assert directory.following
        seen: list[bool] = []
        watcher = directory._watcher
        assert watcher is not None
        await watcher.stop()  # how nats-py ends a watch: its iteration stops
        def reopened() -> bool:
            seen.append(directory.following)
            return directory._watcher is not watcher and directory.following

        await until(reopened, WAIT_S, "the watch opened again")
        assert False in seen  # not ready while it was down

        prompt = definitions / "agents/research-agent/system-prompt.md"
        prompt.write_text("You are {{name}}, changed after the watch was opened again.\n")
        await Syncer(bus, source).sync()
        new_hash = (await load_all(source)).agents["research-agent"].hash
        changed = await directory.wait_for("research-agent", WAIT_S, digest=new_hash)
        assert "opened again" in changed.system_prompt
    finally:
        await directory.close()

"""The whole pipeline on a Moltbook-like Hub (the emulator's `moltbook` profile: no notifications, DMs or
/system/*, 100 requests a minute per client address, names `[a-z0-9_]`), every stage a real process as
`botburrow dev --hub-profile moltbook` runs it: feed-derived mentions, a link post's title and a reply to an
agent's comment are each answered once, restarts answer nothing twice, a sustained 429 loses nothing, and
`botburrow dev --hub URL` runs every stage against an outside Hub."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from botburrow.cli.read import read_all
from botburrow.dev import _await_configs
from botburrow.dev.stack import EXAMPLES_DIR, LocalStack, StageProcess
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.runtime.bus import Bus
from schemas.events import DeadLetter
from tests.fixtures.wait import until
from tests.test_dev_stack import Dev
from tests.test_readme import README, ROOT

pytestmark = pytest.mark.slow
AGENTS = {"pirate-captain": "pirate_captain", "sprint-helper": "sprint_helper"}  # config name -> Hub name
WAIT_S = 90.0


def agents_without_exploration(root: Path) -> Path:
    """The published examples, without communities to explore (an exploration's comment on one of the
    posts below would be an answer nobody asked for)."""
    shutil.copytree(EXAMPLES_DIR / "agents", root / "agents")
    if (EXAMPLES_DIR / "skills").is_dir():
        shutil.copytree(EXAMPLES_DIR / "skills", root / "skills")
    for config in (root / "agents").glob("*/config.yaml"):
        text = config.read_text()
        config.write_text("\n".join("  communities: []" if line.strip().startswith("communities:") else line
                                    for line in text.splitlines()) + "\n")
    return root


@pytest.fixture
async def stack(tmp_path: Path, nats_url: str, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalStack]:
    monkeypatch.setenv("NATS_URL", nats_url)  # `bus` first: it resets the topology the stages bind to
    s = LocalStack(work_dir=tmp_path / "stack", hub_profile="moltbook", poll_interval_s=0.3,
                   agents_source=agents_without_exploration(tmp_path / "defs"))
    try:
        await s.start()
        await _await_configs(bus, sorted(AGENTS))
        yield s
    finally:
        await s.stop()


def answers(hub: HubEmulator, post_id: str, agent: str) -> list[str]:
    """The agent's comments on the post (by its Hub name), oldest first: their parent ids ("" = none)."""
    return [c.parent_id or "" for c in hub.comments_on(post_id) if c.author_name == AGENTS[agent]]


async def dead_letters(bus: Bus) -> list[DeadLetter]:
    if not (await bus.js.stream_info("DLQ")).state.messages:
        return []
    return [msgspec.json.decode(m.data, type=DeadLetter) for m in await read_all(bus, "DLQ", "agents.dlq.>")]


def listings(hub: HubEmulator) -> int:
    """Feed rounds so far (each lists the newest posts once)."""
    return sum(r.method == "GET" and r.path.endswith("/posts") for r in hub.requests.records)


async def more_rounds(hub: HubEmulator, rounds: int = 4) -> None:
    before = listings(hub)
    await until(lambda: listings(hub) >= before + rounds, WAIT_S, f"{rounds} more feed rounds")


async def readyz(stage: StageProcess) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        return dict((await http.get(f"http://127.0.0.1:{stage.port}/readyz")).json())


async def restart(stack: LocalStack, name: str) -> None:
    old = next(s for s in stack.stages if s.name.split("-")[0] == name and s.process.returncode is None)
    await stack.stop_stage(old)
    stack.stages.remove(old)
    await stack.wait_ready(await stack.start_stage(name))


async def test_mentions_a_link_post_and_a_reply_are_answered_once_and_restarts_answer_nothing_again(
        stack: LocalStack, bus: Bus) -> None:
    hub = stack.hub
    assert hub is not None
    ingest = next(s for s in stack.stages if s.name == "ingest")
    details = await until(lambda: _hub_details(ingest), WAIT_S, "the Hub's profile in ingest's /readyz")
    assert details["profile"] == "moltbook" and details["mode"] == "feed" and details["notifications"] is False

    asked = hub.add_post("standup", "@pirate_captain what should a new crew member learn first?")
    linked = hub.add_post("@sprint_helper is this board worth a look?", url="https://example.com/board")
    await until(lambda: answers(hub, asked.id, "pirate-captain") and answers(hub, linked.id, "sprint-helper"),
                WAIT_S, "the mention and the link post's title answered")
    (first,) = [c for c in hub.comments_on(asked.id) if c.author_name == "pirate_captain"]
    follow_up = hub.add_comment(asked.id, "thanks! and after knots?", parent_id=first.id)
    await until(lambda: len(answers(hub, asked.id, "pirate-captain")) == 2, WAIT_S, "the reply answered")
    assert answers(hub, asked.id, "pirate-captain") == [first.parent_id or "", follow_up.id]

    await more_rounds(hub)  # the feed read again: nothing more
    await restart(stack, "ingest")
    await restart(stack, "runner")
    await more_rounds(hub)
    assert answers(hub, asked.id, "pirate-captain") == [first.parent_id or "", follow_up.id]
    assert len(answers(hub, linked.id, "sprint-helper")) == 1
    assert not answers(hub, asked.id, "sprint-helper") and not answers(hub, linked.id, "pirate-captain")
    assert (await bus.js.stream_info("NOTIFICATIONS")).state.messages == 3
    assert await dead_letters(bus) == []  # nothing for the absent /system/* routes (or anything else)
    assert not [r for r in hub.requests.records if r.path.startswith("/api/v1/system")
                and r.status not in (0, 404)]


def lettered(letters: list[DeadLetter]) -> set[str]:
    """The posts whose activation the runner dead-lettered."""
    return {n.get("post_id") or "" for d in letters if d.stage == "runner"
            for n in json.loads(d.payload).get("notifications", [])}


async def _hub_details(stage: StageProcess) -> dict[str, object] | None:
    details = (await readyz(stage)).get("details")
    hub = details.get("hub") if isinstance(details, dict) else None
    return hub if isinstance(hub, dict) and hub.get("profile") else None


async def test_under_a_sustained_per_address_429_nothing_is_lost(stack: LocalStack, bus: Bus) -> None:
    """Another client on the same address keeps the per-address window full (20 requests per 10 s), so
    the Hub answers the stages 429 whatever their shared budget knows (they wait out each Retry-After),
    until it has refused the runners' own reads (GET /posts/<id>: ingest lists and reads comments only)
    at least twice: each mention then ends answered once, or dead-lettered with the rate limit as its reason."""
    hub = stack.hub
    assert hub is not None
    neighbour_key = hub.add_agent("neighbour")
    hub.set_rate_limits(True, requests=(20, 10.0))
    posts = {hub.add_post(f"question {i}", f"@{AGENTS[agent]} question {i}?").id: agent
             for i, agent in enumerate(sorted(AGENTS) * 3)}
    refused_stages = asyncio.Event()

    def runners_refused() -> int:  # a refused request names no caller: told apart by its route
        return sum(r.status == 429 and re.fullmatch(r"/api/v1/posts/[0-9a-f-]{36}", r.path) is not None
                   for r in hub.requests.records)

    async def neighbour() -> None:
        async with httpx.AsyncClient(base_url=hub.api_url, timeout=5.0,
                                     headers={"Authorization": f"Bearer {neighbour_key}"}) as http:
            while not refused_stages.is_set():
                await http.get("/posts", params={"sort": "new", "limit": 1})
                await asyncio.sleep(0.05)  # pacing: 20 requests a second fill the window again at once

    async def settled() -> bool:
        waiting = [post for post, agent in posts.items() if not answers(hub, post, agent)]
        return not waiting or set(waiting) <= lettered(await dead_letters(bus))

    async def pressed() -> bool:  # a quick machine may answer everything between two refusals: fine too
        return runners_refused() >= 2 or await settled()

    noisy = asyncio.create_task(neighbour())
    try:
        await until(pressed, WAIT_S, "the runners' reads refused twice, or every mention settled under the 429s")
    finally:
        refused_stages.set()
        await noisy
    await until(settled, 300.0, "every mention answered or dead-lettered")
    for post, agent in posts.items():
        assert len(answers(hub, post, agent)) <= 1, post
    letters = await dead_letters(bus)
    assert all("rate" in d.reason.lower() or "429" in d.reason for d in letters), [d.reason for d in letters]
    assert not [d for d in letters if "/system" in d.reason]


# --- `botburrow dev` as the README runs it -------------------------------------------------------------


def readme_lines() -> list[str]:
    """The command lines of README.md's "Running against a real Hub" block, comments dropped."""
    section = README.read_text(encoding="utf-8").split("## Running against a real Hub", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


async def shell(line: str, env: dict[str, str]) -> Dev:
    """A README line run verbatim by bash in the repository, as a person runs it."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "AGENTS_SOURCE", "AGENT_KEYS_DIR")}
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", line, cwd=ROOT, env={**environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    return Dev(process)


async def test_dev_on_the_moltbook_profile_answers_its_demo_mention(tmp_path: Path) -> None:
    (line, *_) = [line for line in readme_lines() if "--hub-profile moltbook" in line]
    dev = await shell(line, {"HOME": str(tmp_path)})
    try:
        await dev.line(r"hub emulator \(moltbook profile\).*they post as pirate_captain, sprint_helper")
        await dev.line(r"demo: pirate-captain replied on post [0-9a-f-]{36}: '")
    finally:
        dev.process.send_signal(signal.SIGINT)
        assert await dev.exit_code(60) == 0, dev.lines[-5:]
    assert not [line for line in dev.lines if "without a reply" in line or "error" in line.lower()], dev.lines


async def test_dev_runs_every_stage_against_an_outside_hub_with_keys_from_a_directory(tmp_path: Path) -> None:
    """The README's lines verbatim: the keys directory made in a fresh HOME, then `dev --hub "$HUB_URL"`."""
    outside = HubEmulator(profile="moltbook")
    await outside.start()
    key = outside.add_agent("pirate_captain")
    env = {"HOME": str(tmp_path), "HUB_URL": outside.url, "PIRATE_CAPTAIN_KEY": key}
    *setup, run = [line for line in readme_lines() if "--hub-profile" not in line]
    for line in setup:
        made = await shell(line, env)
        assert await made.exit_code(30) == 0, (line, made.lines)
    assert (tmp_path / "hub-keys" / "pirate-captain").read_text() == key + "\n"
    dev = await shell(run, env)
    try:
        await dev.line(rf"hub: {outside.url} \(outside\) with the keys in {tmp_path}/hub-keys of 1 agents: "
                       r"pirate-captain; no key file for 1 agents: sprint-helper")
        await dev.line("all stages ready")
        await dev.line(r"demo: none on an outside Hub; name @pirate_captain")
        post = outside.add_post("which chart for the reef?", "@pirate_captain which chart for the reef?")

        def answered() -> list[str]:
            return [c.content for c in outside.comments_on(post.id)
                    if c.author_name == "pirate_captain" and "which chart" in c.content]

        await until(answered, WAIT_S, "the outside Hub's mention answered")
    finally:
        dev.process.send_signal(signal.SIGINT)
        code = await dev.exit_code(60)
        await outside.stop()
    assert code == 0, dev.lines[-5:]
    assert len(answered()) == 1 and key not in "\n".join(dev.lines)


@pytest.mark.parametrize(("args", "named"), [
    (("--hub", "ftp://hub.example"), "--hub ftp://hub.example: not an http(s) URL"),
    (("--hub", "http://127.0.0.1:9"), "--hub http://127.0.0.1:9: no agent keys; give --agent-keys DIR"),
    (("--hub", "http://127.0.0.1:9", "--agent-keys", "/nonexistent/keys"), "--agent-keys /nonexistent/keys: not a"),
])
async def test_dev_refuses_an_outside_hub_it_cannot_use_with_one_line(args: tuple[str, ...], named: str) -> None:
    dev = await Dev.start(*args, env={"AGENT_KEYS_DIR": ""})
    assert await dev.exit_code(30) == 2
    assert len(dev.errors()) == 1 and named in dev.errors()[0], dev.lines

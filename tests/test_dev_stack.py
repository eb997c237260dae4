"""`botburrow dev` as a person runs it: it fails fast with one line, stops cleanly in every state with no
process left behind, runs your own definitions (`--agents`) and a real model endpoint (`--model`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from botburrow.dev.stack import EXAMPLES_DIR, LocalStack, await_configs
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.runtime.bus import Bus
from streams import subjects
from tests.fixtures.s3 import S3Server
from tests.fixtures.setup_parts import needs_cli
from tests.fixtures.wait import until

PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions"
START_S = 120.0


class Dev:
    """`python -m botburrow dev ...` as a child process, its output read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Dev:
        environ = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "AGENTS_SOURCE")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "botburrow", "dev", *args, env={**environ, **(env or {})},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def line(self, pattern: str, timeout_s: float = START_S) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := re.search(pattern, line))), None)

        return await until(found, timeout_s, f"a line matching {pattern!r}; got {self.lines[-5:]}")

    async def exit_code(self, timeout_s: float) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        await self._reader
        return code

    def errors(self) -> list[str]:
        return [line for line in self.lines if "error" in line.lower() or "Traceback" in line]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- fail fast: one line, non-zero --------------------------------------------------------------------


@pytest.mark.parametrize(("args", "env", "named"), [
    ((), {"NATS_URL": "garbage"}, "NATS_URL: 'garbage' is not a NATS server URL"),
    ((), {"NATS_URL": "nats://op:hunter2@127.0.0.1:port"}, "NATS_URL: 'nats://127.0.0.1:port' is not"),
    (("--agents", "/nonexistent/defs"), {}, "--agents=/nonexistent/defs: no agents/ directory there"),
    ((), {"AGENTS_SOURCE": "/nonexistent/defs"}, "AGENTS_SOURCE=/nonexistent/defs: no agents/ directory"),
    (("--model", "https://api.example.test"), {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": ""},
     "--model https://api.example.test: no model key in the environment"),
])
async def test_dev_refuses_what_cannot_work_at_once_with_one_line(args: tuple[str, ...], env: dict[str, str],
                                                                  named: str) -> None:
    dev = await Dev.start(*args, env=env)
    assert await dev.exit_code(30) == 2
    assert len(dev.errors()) == 1 and named in dev.errors()[0], dev.lines
    assert "hunter2" not in "\n".join(dev.lines)


@pytest.mark.slow
async def test_dev_gives_up_on_an_unreachable_nats_after_20_s_with_one_line() -> None:
    port = unused_port()
    dev = await Dev.start("--no-demo", env={"NATS_URL": f"nats://op:hunter2@127.0.0.1:{port}"})
    # The 20 s are dev's own count (the line says so); the wait here also covers a busy machine's start.
    assert await dev.exit_code(START_S + 20) == 1
    assert len(dev.errors()) == 1, dev.lines
    assert f"NATS_URL: no server answered within 20 s (tried nats://127.0.0.1:{port}" in dev.errors()[0]
    assert "hunter2" not in "\n".join(dev.lines)
    assert not descendants(dev.process.pid)


# --- stop cleanly: no child survives ------------------------------------------------------------------


async def _stop_and_check_no_orphan(dev: Dev, sig: int, children: set[int]) -> int:
    assert children, "dev started no process: nothing proves the stop"
    dev.process.send_signal(sig)
    code = await dev.exit_code(60)
    survivors = await until(lambda: not any(alive(pid) for pid in children) or None, 20, "every child gone")
    assert survivors
    return code


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_ready_dev_stopped_by_a_signal_leaves_no_process(sig: int) -> None:
    dev = await Dev.start("--no-demo")
    await dev.line("all stages ready")
    children = descendants(dev.process.pid)
    assert len(children) >= 6  # nats-server and the five stages
    assert await _stop_and_check_no_orphan(dev, sig, children) == 0
    assert dev.lines[-1].endswith("stopped") and not dev.errors(), dev.lines


@pytest.mark.slow
async def test_a_sigkilled_dev_leaves_no_process() -> None:
    # No handler runs: each child, nats-server too, has asked Linux for a SIGTERM when dev dies.
    dev = await Dev.start("--no-demo")
    await dev.line("all stages ready")
    children = descendants(dev.process.pid)
    assert len(children) >= 6  # nats-server and the five stages
    assert await _stop_and_check_no_orphan(dev, signal.SIGKILL, children) == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_dev_stopped_while_connecting_leaves_no_process(sig: int) -> None:
    # Nothing listens at NATS_URL: dev and its stages are all still connecting when the signal comes.
    dev = await Dev.start("--no-demo", env={"NATS_URL": f"nats://127.0.0.1:{unused_port()}"})
    def stages_started() -> set[int] | None:
        found = descendants(dev.process.pid)
        return found if len(found) >= 5 else None

    children = await until(stages_started, 30, "the five stages started")
    assert await _stop_and_check_no_orphan(dev, sig, children) == 130
    assert not dev.errors(), dev.lines


@pytest.mark.slow
async def test_a_dev_stopped_while_starting_its_nats_server_leaves_no_process() -> None:
    # The signal comes as soon as dev names its work directory: the embedded nats-server is being started
    # (in a thread the stop cannot interrupt). Whatever it had started by then is stopped or reaped.
    dev = await Dev.start("--no-demo")
    work_dir = (await dev.line(r"starting everything in (\S+)")).group(1)
    dev.process.send_signal(signal.SIGINT)
    assert await dev.exit_code(60) in (0, 130)
    assert not dev.errors(), dev.lines

    def ours_alive() -> list[int]:
        marker = f"{work_dir}/".encode()
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
        return found

    assert await until(lambda: not ours_alive() or None, 20, "no process of the stack's work directory")


# --- your own agents ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_dev_agents_says_which_loaded_and_which_are_skipped_and_why() -> None:
    dev = await Dev.start("--no-demo", "--agents", str(PUBLISHED))
    loaded = await dev.line(r"agents: (\d+) loaded from (\S+): (.*)$")
    assert loaded.group(1) == "6" and loaded.group(2) == str(PUBLISHED)
    await dev.line(r"agents: sprint-coder skipped: no hub:write grant")
    await dev.line("all stages ready")
    children = descendants(dev.process.pid)
    assert await _stop_and_check_no_orphan(dev, signal.SIGINT, children) == 0


@pytest.fixture
async def published_stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    """The stack `dev --agents tests/data/published-agent-definitions` runs, in this process."""
    stack = LocalStack(work_dir=tmp_path / "stack", agents_source=PUBLISHED, poll_interval_s=0.2)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()


@pytest.mark.slow
@needs_cli("claude")  # five of the six are claude-code agents
async def test_every_published_agent_answers_a_mention_but_the_one_without_hub_write(
        published_stack: LocalStack) -> None:
    stack, hub = published_stack, published_stack.hub
    assert hub is not None and stack.agents is not None
    assert stack.agents.silent() == {"sprint-coder": "no hub:write grant, so it cannot post a reply"}
    answering = stack.answering_agents()
    assert sorted(answering) == ["claude-coder-1", "devops-agent", "pirate-captain-agent", "research-agent",
                                 "test-persona-agent"]
    bus = await Bus.connect(stack.nats_url, name="test-published")
    try:
        await await_configs(bus, stack.loaded_agents())
        failed: list[str] = []

        async def on_failed(msg: object) -> None:
            failed.append(msg.subject)  # type: ignore[attr-defined]

        for agent in answering:
            await bus.nc.subscribe(subjects.run_events(agent, "failed"), cb=on_failed)
        notes = {agent: hub.mention(agent, f"@{agent} what do you do? 🏴‍☠️") for agent in answering}

        # The reply itself, not an agent's first run end: a stale agent's exploration may end before it.
        def everyone_replied() -> bool:
            assert not failed, failed
            return all(any(c.author_name == agent for c in hub.comments_on(note.post_id))
                       for agent, note in notes.items())

        await until(everyone_replied, 240, "a reply from each answering agent")
    finally:
        await bus.close()


# --- a real model endpoint -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_dev_model_sends_every_call_to_the_endpoint_with_the_environment_key() -> None:
    # The scripted LLM stands for the real endpoint here: it records the key each call carried.
    async with ScriptedLLM(strict=False, api_key="sk-ant-test-dev-model") as endpoint:
        dev = await Dev.start("--model", endpoint.url, env={"ANTHROPIC_API_KEY": "sk-ant-test-dev-model"})
        await dev.line(f"model: every model call goes to {re.escape(endpoint.url)}")
        await dev.line(r"demo: pirate-captain replied|demo: the whole run", START_S)
        children = descendants(dev.process.pid)
        assert await _stop_and_check_no_orphan(dev, signal.SIGTERM, children) == 0
    assert endpoint.requests and not endpoint.violations
    assert not any("scripted LLM" in line for line in dev.lines)


@pytest.mark.slow
async def test_dev_agents_from_s3_loads_and_runs_them(s3: S3Server, tmp_path: Path) -> None:
    definitions = tmp_path / "definitions"
    for kind in ("agents", "skills"):
        shutil.copytree(EXAMPLES_DIR / kind, definitions / kind, ignore=shutil.ignore_patterns("__pycache__"))
    prefix = s3.new_prefix()
    s3.upload_tree(definitions, prefix, manifest=True)
    source = f"s3://{s3.bucket}/{prefix.rstrip('/')}"
    dev = await Dev.start("--no-demo", env={"AGENTS_SOURCE": source, "R2_ENDPOINT": s3.endpoint,
                                            "R2_ACCESS_KEY": s3.access_key, "R2_SECRET_KEY": s3.secret_key})
    loaded = await dev.line(r"agents: (\d+) loaded from (\S+): (.*)$")
    assert loaded.groups() == ("2", source, "pirate-captain, sprint-helper")
    await dev.line("all stages ready")  # configsync read the same bucket: every agent published
    children = descendants(dev.process.pid)
    assert await _stop_and_check_no_orphan(dev, signal.SIGINT, children) == 0
    assert s3.secret_key not in "\n".join(dev.lines)

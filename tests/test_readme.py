"""Every command example of README.md, run verbatim against `botburrow dev` started as the README says.

Examples are the lines of its ```bash blocks and its inline `.venv/bin/...` commands. Placeholders
(`<activation id>`, `<seq>`, `<post id>`) are filled with what the earlier commands printed. The nats CLI
cannot be installed here: each `nats ...` line is done with nats-py instead, with the same subject,
payload and headers, and checked the way the stack takes it (a published notification is activated, its
`Nats-Msg-Id` deduplicates a second publish). A README line this test cannot run fails it: add it to
EXCEPTED with the reason, or teach `NatsCli` its equivalent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.js.api import StreamInfo

from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from schemas.codec import DecodeError, decode_subject
from schemas.events import ActivationRequested, NotificationReceived
from tests.fixtures.wait import until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
INLINE = re.compile(r"`((?:\.venv/bin/|botburrow |nats |just |python -m )[^`]+)`")
# What is not run here, and why (the list: the long ones).
EXCEPTED = {
    "./setup.sh": "installs everything (minutes, gigabytes): every test runs in what it made",
    ".venv/bin/botburrow dev": "the stack itself: started verbatim by the `stack` fixture",
    "export NATS_URL=...": "the fixture sets NATS_URL from what `botburrow dev` printed",
    ".venv/bin/just test": "the whole suite, which this test is part of",
    ".venv/bin/just soak": "long: tests/test_soak.py runs the same suite; `just soak --full` is longer still",
    ".venv/bin/just bench": "long: the benchmarks (bench/)",
    "just test": "the whole suite, which this test is part of",
    "just soak --full": "long: 6 minutes of 20,000 notifications",
    "just bench": "long: the benchmarks (bench/)",
    "just bench cost": "long: a benchmark",
    "python -m bench <name>": "long: a benchmark",
    "just images": "long: builds two images on a private Docker engine (tests/test_images.py)",
    "botburrow dev": "the stack itself: started verbatim by the `stack` fixture",
    "botburrow dev --agents DIR": "another stack: the dev tests run it on every published definition",
    "botburrow dev --model https://api.anthropic.com": "needs a real model key",
    "botburrow --debug ...": "a synopsis: tests/test_cli_inject.py runs `--debug`",
    "botburrow dlq ls | show <seq> | redrive <seq>": "a synopsis: `dlq ls` and `dlq show` run from the blocks",
    "python -m streams.permissions --write deploy/nats/values.yaml": "rewrites a tracked file: deploy/check.sh "
                                                                     "runs it and fails on any drift",
    "python -m services.runner.mcp.relay <socket> <server>": "started by the runner inside a sandbox",
    "nats context save botburrow --server nats://<host>:4222 --user <you> --password <password>":
        "a cluster's address and a user of your own",
    # "Running against a real Hub": tests/test_moltbook_end_to_end.py runs these verbatim (bash, a fresh HOME,
    # HUB_URL an emulator started as an outside Hub); `just bench hub` is long.
    ".venv/bin/botburrow dev --hub-profile moltbook": "another stack: run verbatim by test_moltbook_end_to_end",
    "mkdir -p ~/hub-keys && chmod 700 ~/hub-keys": "run verbatim by test_moltbook_end_to_end in a fresh HOME",
    "printf '%s\\n' \"$PIRATE_CAPTAIN_KEY\" > ~/hub-keys/pirate-captain": "run verbatim by test_moltbook_end_to_end",
    '.venv/bin/botburrow dev --hub "$HUB_URL" --agent-keys ~/hub-keys': "another stack against an outside Hub: "
                                                                        "run verbatim by test_moltbook_end_to_end",
    ".venv/bin/just bench hub": "long: a benchmark (two stacks, then 1,000 agents' feed rounds)",
    "just soak --cluster": "long: three nats-servers through four faults (tests/test_cluster.py runs a short form)",
    "python -m bench cluster": "long: a benchmark (R1 against R3)",
    "python -m bench scaling": "rewrites a tracked file (bench/results/scaling.json) from the other results",
}
COMMAND_TIMEOUT_S = 120
DEV_START_TIMEOUT_S = 240


def examples() -> list[str]:
    """Every command line of the README, in order: ```bash lines (comments dropped), then inline ones."""
    text = README.read_text(encoding="utf-8")
    lines = [line.strip() for block in BLOCK.findall(text) for line in block.splitlines()]
    found = [line.split("  #")[0].strip() for line in lines if line and not line.startswith("#")]
    inline = [" ".join(span.split()) for span in INLINE.findall(text)]  # a span may wrap across lines
    return found + [line for line in dict.fromkeys(inline) if line not in found]


def test_every_example_is_run_or_excepted_with_a_reason() -> None:
    found = examples()
    assert [line for line in EXCEPTED if line not in found] == [], "EXCEPTED names a line the README lost"
    runnable = [line for line in found if line not in EXCEPTED]
    assert any("inject notification --agent pirate-captain --type mention" in line for line in runnable)
    assert sum(line.startswith("nats ") for line in runnable) >= 4  # publish, view, replay, a consumer


@dataclass
class Stack:
    process: subprocess.Popen[str]
    env: dict[str, str]
    output: list[str] = field(default_factory=list)
    filled: dict[str, str] = field(default_factory=dict)


def _start_dev() -> Stack:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "AGENTS_SOURCE")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"  # `botburrow` as with the venv active
    process = subprocess.Popen(["bash", "-c", ".venv/bin/botburrow dev"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(process, env)
    assert process.stdout is not None
    for line in process.stdout:  # ends when dev exits: then the assert below says why
        stack.output.append(line)
        if "try:" in line and (url := re.search(r"NATS_URL=(nats://[^\s;]+)", line)):
            stack.env["NATS_URL"] = url.group(1)
            return stack
    raise AssertionError("botburrow dev ended before it was ready:\n" + "".join(stack.output[-30:]))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    holder: list[Stack] = []

    def start() -> None:
        holder.append(_start_dev())

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(DEV_START_TIMEOUT_S)
    assert holder, f"botburrow dev was not ready within {DEV_START_TIMEOUT_S} s"
    running = holder[0]
    try:
        yield running
    finally:
        os.killpg(running.process.pid, signal.SIGINT)
        try:
            running.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(running.process.pid, signal.SIGKILL)
            raise


@pytest.fixture
async def operator_bus(stack: Stack) -> AsyncIterator[Bus]:
    bus = await Bus.connect(stack.env["NATS_URL"], name="test-readme")
    try:
        yield bus
    finally:
        await bus.close()


def fill(line: str, stack: Stack) -> str:
    for placeholder, value in stack.filled.items():
        line = line.replace(placeholder, value)
    assert "<" not in line.replace("<<", ""), f"no value for a placeholder in {line!r}"
    return line


async def run(line: str, stack: Stack) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, ["bash", "-c", line], cwd=ROOT, env=stack.env, text=True,
                                   capture_output=True, timeout=COMMAND_TIMEOUT_S)


async def run_tail(line: str, stack: Stack) -> None:
    """`tail` follows until Ctrl-C: started, seen following, interrupted, and then it exits 0."""
    process = await asyncio.create_subprocess_exec("bash", "-c", f"exec {line}", cwd=ROOT, env=stack.env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    first = await asyncio.wait_for(process.stderr.readline(), COMMAND_TIMEOUT_S)
    assert first.decode().startswith("following agents.>"), first
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_S) == 0


async def dead_letter_seq(bus: Bus) -> str:
    letters = await until(lambda: read_all(bus, "DLQ", "agents.dlq.*"), 30, "the malformed notification's letter")
    return str(letters[-1].metadata.sequence.stream)


async def notifications(bus: Bus, stream: str) -> list[NotificationReceived]:
    """The stream's notifications that decode (the README's malformed example is there too)."""
    found = []
    for msg in await read_all(bus, stream, "agents.>"):
        with contextlib.suppress(DecodeError):
            if isinstance(event := decode_subject(msg.subject, msg.data), NotificationReceived):
                found.append(event)
    return found


async def _streams(bus: Bus) -> AsyncIterator[StreamInfo]:
    for info in await bus.js.streams_info():
        yield info


class NatsCli:
    """The nats CLI lines of the README, done with nats-py: same subject, payload and headers."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.published: list[str] = []

    async def run(self, line: str) -> None:
        args = shlex.split(line, comments=True)
        if args[:3] == ["nats", "context", "save"]:  # a name for the URL: it must take the operator there
            assert args[4:] == ["--server", "$NATS_URL"]
            assert (await self.bus.js.account_info()).streams >= 7
            return
        assert args[:3] == ["nats", "--server", "$NATS_URL"], "every nats example names the server as dev prints it"
        verb = args[3:]
        if verb[0] == "pub":
            await self.pub(verb[1], verb[verb.index("--header") + 1], verb[-1])
        elif verb[:2] == ["stream", "view"]:
            ids = {event.notification.id for event in await notifications(self.bus, verb[2])}
            assert set(self.published) <= ids  # what `nats pub` published is there to view
        elif verb[:2] == ["stream", "get"]:
            msg = await self.bus.js.get_msg(verb[2], int(verb[3]))
            assert isinstance(decode_subject(msg.subject or "", msg.data or b""), NotificationReceived)
            assert (msg.headers or {}).get("Nats-Msg-Id", "").startswith("ntf:")
        elif verb[:2] == ["stream", "ls"]:
            names = [info.config.name async for info in _streams(self.bus)]
            assert {"NOTIFICATIONS", "ACTIVATIONS", "RUNS", "DLQ"} <= set(names), names
        elif verb[:2] == ["consumer", "info"]:
            info = await self.bus.js.consumer_info(verb[2], verb[3])
            assert info.config.durable_name == verb[3] and info.num_pending is not None
        else:
            raise AssertionError(f"no nats-py equivalent for {line!r}: add one to NatsCli")

    async def pub(self, subject: str, header: str, body: str) -> None:
        name, _, value = header.partition(":")
        ack = await self.bus.js.publish(subject, body.encode(), headers={name: value})
        assert ack.stream == "NOTIFICATIONS" and not ack.duplicate
        again = await self.bus.js.publish(subject, body.encode(), headers={name: value})
        assert again.duplicate, "the Nats-Msg-Id the README shows deduplicates a second publish"
        event = decode_subject(subject, body.encode())
        assert isinstance(event, NotificationReceived) and value == f"ntf:{event.notification.id}"
        self.published.append(event.notification.id)

    async def activated(self) -> None:
        """Every notification published the nats CLI's way was taken by the scheduler."""
        async def all_requested() -> bool:
            msgs = await read_all(self.bus, "ACTIVATIONS", "agents.sched.activation.>")
            events = [decode_subject(m.subject, m.data) for m in msgs]
            ids = {n.id for e in events if isinstance(e, ActivationRequested) for n in e.notifications}
            return set(self.published) <= ids

        await until(all_requested, 60, f"activations of {self.published}")


@pytest.mark.slow
async def test_every_readme_example_works_verbatim(stack: Stack, operator_bus: Bus) -> None:
    first = await operator_bus.js.get_msg("NOTIFICATIONS", 1)  # the demo's mention
    demo = decode_subject(first.subject or "", first.data or b"")
    assert isinstance(demo, NotificationReceived) and demo.notification.post_id
    stack.filled["<post id>"] = demo.notification.post_id
    stack.filled["validate DIR"] = "validate botburrow/dev"  # the definitions dev runs (agents/, skills/)
    nats = NatsCli(operator_bus)
    for line in [line for line in examples() if line not in EXCEPTED]:
        if "<seq>" in line:
            stack.filled["<seq>"] = "1" if "NOTIFICATIONS" in line else await dead_letter_seq(operator_bus)
        command = fill(line, stack)
        if command.startswith("nats "):
            await nats.run(command)
        elif command.endswith("botburrow tail"):
            await run_tail(command, stack)
        else:
            done = await run(command, stack)
            refused_as_documented = " cancel " in command and "has already ended" in done.stderr
            assert done.returncode == 0 or refused_as_documented, (command, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr and "nats disconnected" not in done.stderr, (command, done.stderr)
            if ids := re.findall(r"^activation (\S+)", done.stdout, re.M):
                stack.filled["<activation id>"] = stack.filled["<id>"] = ids[-1]
            if "inject notification" in command:  # as the README says: the id, and with --wait the reply
                assert ids, done.stdout
                assert "--wait" not in command or re.search(r"^pirate-captain posted: dm ", done.stdout, re.M), \
                    done.stdout
    await nats.activated()

"""`botburrow dev` with an authenticated nats-server (issue 14), run as a user runs it.

It answers its demo mention; every stage is connected as its own NATS user; the README's commands work
with the `NATS_URL` it prints (the operator's); the server refused nothing a stage really does; and
a connection without the password is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from botburrow.settings import STAGES
from streams import permissions

pytestmark = pytest.mark.slow
START_S = 120.0


class Dev:
    """`python -m botburrow dev` as a child process, its output read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line_matching(self, pattern: str, timeout_s: float = START_S) -> re.Match[str]:
        async def read() -> re.Match[str]:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            assert self.process.stdout is not None
            while raw := await self.process.stdout.readline():
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                if match := re.search(pattern, self.lines[-1]):
                    return match
            raise AssertionError(f"botburrow dev ended before {pattern!r}:\n" + "\n".join(self.lines))

        try:
            return await asyncio.wait_for(read(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {timeout_s}s:\n" + "\n".join(self.lines)) from None


@pytest.fixture
async def dev(tmp_path: Path) -> AsyncIterator[Dev]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}  # never the machine's own server
    env["TMPDIR"] = str(tmp_path)  # the stack's work dir (tempfile.mkdtemp) lands here
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow", "dev", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        yield Dev(process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.communicate(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


async def botburrow(nats_url: str, *args: str) -> str:
    env = {**os.environ, "NATS_URL": nats_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, (args, out.decode())
    return out.decode()


async def _authorized_users(work_dir: Path) -> dict[str, str]:
    """Connection name -> the NATS user it authenticated as (nats-server's /connz?auth=true)."""
    ports = json.loads(next((work_dir / "nats" / "ports").glob("*.ports")).read_text())
    async with httpx.AsyncClient() as http:
        connz = (await http.get(f"{ports['monitoring'][0]}/connz", params={"auth": "true", "limit": 1000})).json()
    return {c.get("name", ""): c.get("authorized_user", "") for c in connz["connections"]}


def _logs_with_a_password(work_dir: Path) -> list[str]:
    config = json.loads((work_dir / "nats" / "auth.conf").read_text())
    passwords = [u["password"] for u in config["accounts"][permissions.ACCOUNT]["users"]]
    return [log.name for log in work_dir.glob("*.log")
            if any(p in log.read_text(errors="replace") for p in passwords)]


async def test_dev_answers_its_demo_with_every_stage_as_its_own_user(dev: Dev) -> None:
    work_dir = Path((await dev.line_matching(r"starting everything in (\S+)")).group(1))
    reply = await dev.line_matching(r"demo: pirate-captain replied on post")
    activation_id = (await dev.line_matching(r"botburrow show (\S+)")).group(1)
    nats_url = (await dev.line_matching(r"NATS_URL=(nats://\S+?);")).group(1)
    assert reply and nats_url.startswith(f"nats://{permissions.OPERATOR}:")

    users = await _authorized_users(work_dir)
    by_stage = {stage: {u for name, u in users.items() if name.startswith(f"botburrow-{stage}-")} for stage in STAGES}
    assert by_stage == {stage: {stage} for stage in STAGES}, users

    # The README's examples, with the printed URL.
    await botburrow(nats_url, "inject", "notification", "--agent", "pirate-captain", "--type", "mention",
                    "--content", "ahoy again?")
    # dev prints every run event: the injected notification's activation ends (a notification without
    # --post has nowhere to reply on the Hub, so `failed` counts as well: it went through every stage).
    await dev.line_matching(rf"agents\.run\.pirate-captain\.(?!{activation_id})\S+\.(completed|failed)$", 60)
    assert "started    pirate-captain" in await botburrow(nats_url, "show", activation_id)
    await botburrow(nats_url, "dlq", "ls")

    plain = nats_url.replace(nats_url.split("@")[0] + "@", "nats://")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(plain, allow_reconnect=False, connect_timeout=2)

    server_log = (work_dir / "nats" / "nats-server.log").read_text()
    assert "Permissions Violation" not in server_log, server_log
    assert (work_dir / "nats" / "auth.conf").stat().st_mode & 0o777 == 0o600
    assert _logs_with_a_password(work_dir) == []  # each stage holds one; none writes it down

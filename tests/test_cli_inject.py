"""`botburrow inject` and the CLI's errors against a real nats-server: the command run as a user runs it
(a subprocess of `python -m botburrow`), its stdout, stderr and exit code read as they are."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from botburrow.cli import inject
from botburrow.cli.errors import CliError
from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from schemas.codec import decode_subject
from schemas.events import NotificationReceived
from schemas.hub import NOTIFICATION_TYPES, Notification
from tests.test_scheduler import add_agents, definition, note, publish_notification

CLI_TIMEOUT_S = 60


def botburrow(nats_url: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": nats_url}
    return subprocess.run([sys.executable, "-m", "botburrow", *args], input=stdin.decode(), env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def inject_args(**given: object) -> argparse.Namespace:
    defaults: dict[str, object] = {"kind": "notification", "raw": None, "agent": "ann", "type": "mention",
                                   "post": None, "comment": None, "dm": None, "content": "hi", "sender": "operator",
                                   "id": None, "wait": False, "timeout": 0.1}
    return argparse.Namespace(**{**defaults, **given})


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


async def published(bus: Bus, agent: str) -> list[Notification]:
    msgs = await read_all(bus, "NOTIFICATIONS", f"agents.ingest.notification.{agent}")
    events = [decode_subject(m.subject, m.data) for m in msgs]
    return [e.notification for e in events if isinstance(e, NotificationReceived)]


async def test_a_mention_without_post_reuses_the_agents_last_thread_and_a_dm_starts_one(bus: Bus) -> None:
    await add_agents(bus, definition("ann"), definition("bob"))
    with pytest.raises(CliError, match=r"no thread to put a mention in.*--post"):
        await inject.notification(bus, inject_args())
    await publish_notification(bus, "bob", note("n-bob"))  # bob's thread: p1
    assert await inject.notification(bus, inject_args()) == 0  # no scheduler: no activation, said, exit 0
    assert await inject.notification(bus, inject_args(type="dm")) == 0
    assert await inject.notification(bus, inject_args(type="dm")) == 0
    assert await inject.notification(bus, inject_args()) == 0  # ann's last is a DM: the newest post again
    mention, dm, dm_again, mention_again = await published(bus, "ann")
    assert (mention.post_id, mention.dm_id, mention_again.post_id) == ("p1", None, "p1")
    assert dm.dm_id and dm.dm_id.startswith("dm-") and dm.post_id is None and dm_again.dm_id == dm.dm_id


async def test_types_outside_the_schema_and_unknown_agents_are_refused(bus: Bus) -> None:
    await add_agents(bus, definition("ann"))
    with pytest.raises(CliError) as refused:
        await inject.notification(bus, inject_args(type="banana"))
    assert str(refused.value) == f"unknown notification type 'banana': use one of {', '.join(NOTIFICATION_TYPES)}"
    with pytest.raises(CliError, match="no agent 'zed' in the configs bucket"):
        await inject.notification(bus, inject_args(agent="zed"))
    assert await published(bus, "ann") == [] and await published(bus, "zed") == []


@pytest.mark.slow
async def test_errors_are_one_line_and_nothing_else_is_said_at_exit(bus: Bus, nats_url: str) -> None:
    line = one_line_error(botburrow(nats_url, "inject", "--raw", "not.covered", stdin=b"{}"))
    assert line.startswith("botburrow inject: no stream takes 'not.covered'") and "agents.ingest.notification.*" in line
    line = one_line_error(botburrow(nats_url, "inject", "notification", "--agent", "ann", "--type", "banana"))
    assert "use one of mention, dm" in line
    line = one_line_error(botburrow("nats://127.0.0.1:1", "dlq", "ls"))
    assert line.startswith("botburrow dlq: NATS_URL: no server answered within 5 s (tried nats://127.0.0.1:1")
    assert "set NATS_URL" in line
    line = one_line_error(botburrow("garbage", "dlq", "ls"))
    assert "NATS_URL: 'garbage' is not a NATS server URL" in line

    debug = botburrow(nats_url, "--debug", "inject", "--raw", "not.covered", stdin=b"{}")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CliError" in debug.stderr

    ok = botburrow(nats_url, "inject", "--raw", "agents.ingest.notification.ann", stdin=b'{"v": 1}')
    assert ok.returncode == 0 and "published 8 bytes" in ok.stdout
    assert ok.stderr == ""  # no `nats disconnected` (or anything else) when the command closes its connection

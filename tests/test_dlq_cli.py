"""`botburrow dlq ls | show | redrive` against a real nats-server: dead letters written as the stages
write them, read back by sequence, and sent back to their subject with a new msg id and `Redrive-Of`,
but only to an input subject of the stage that wrote them: a forged letter for
`$JS.API.STREAM.PURGE.RUNS` purges nothing."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Literal

import pytest

from botburrow.cli import ops
from botburrow.cli.read import read_all
from botburrow.definitions import AgentDirectory
from botburrow.definitions import bucket as configs
from botburrow.runtime.bus import Bus
from schemas.events import DeadLetter
from streams import subjects

ORIGINAL = b'{"v": 1, "agent": "bob", "notification": {"id": "n1"}}'


def dlq_args(action: str, seq: int | None = None) -> argparse.Namespace:
    return argparse.Namespace(command="dlq", action=action, seq=seq)


async def letter(bus: Bus, stage: str, reason: str, subject: str, payload: bytes) -> int:
    encoding: Literal["utf-8", "base64"] = "utf-8" if payload.isascii() else "base64"
    text = payload.decode() if encoding == "utf-8" else base64.b64encode(payload).decode()
    dead = DeadLetter(stage=stage, reason=reason, subject=subject, stream="NOTIFICATIONS", seq=7, deliveries=1,
                      payload=text, payload_encoding=encoding, headers={"Nats-Msg-Id": "ntf:n1"})
    ack = await bus.publish(subjects.dlq(stage), dead, msg_id=f"dlq:NOTIFICATIONS:{reason}")
    return ack.seq


async def test_ls_lists_every_letter_with_its_reason(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    first = await letter(bus, "scheduler", "invalid payload at $.notification.type", "agents.ingest.notification.bob",
                         ORIGINAL)
    second = await letter(bus, "runner", "deliveries exhausted (5)", "agents.sched.activation.high.bob", b"{}")
    await bus.js.publish(subjects.dlq("ingest"), b"not a dead letter")

    assert await ops.dlq(bus, dlq_args("ls")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:2] == [str(first), "scheduler"] and "invalid payload at $.notification.type" in lines[0]
    assert lines[1].split()[:2] == [str(second), "runner"] and "deliveries exhausted (5)" in lines[1]
    assert "not a dead letter" in lines[2]


async def test_show_prints_the_letter_and_unknown_seq_is_a_message(bus: Bus,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    seq = await letter(bus, "scheduler", "bad", "agents.ingest.notification.bob", ORIGINAL)
    assert await ops.dlq(bus, dlq_args("show", seq)) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["stage"], shown["reason"], shown["payload"]) == ("scheduler", "bad", ORIGINAL.decode())

    assert await ops.dlq(bus, dlq_args("show", 999)) == 1
    assert "no dead letter with seq 999" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="usage"):
        await ops.dlq(bus, dlq_args("redrive"))


async def test_redrive_republishes_with_a_new_msg_id_each_time(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    binary = b"\xff\xfe raw bytes"
    text_seq = await letter(bus, "scheduler", "bad", "agents.ingest.notification.bob", ORIGINAL)
    binary_seq = await letter(bus, "scheduler", "undecodable", "agents.ingest.notification.eve", binary)

    for seq in (text_seq, text_seq, binary_seq):
        assert await ops.dlq(bus, dlq_args("redrive", seq)) == 0
    assert capsys.readouterr().out.count("redriven to agents.ingest.notification.") == 3

    msgs = await read_all(bus, "NOTIFICATIONS", "agents.ingest.notification.*")
    assert [(m.subject, m.data, (m.headers or {})["Redrive-Of"]) for m in msgs] == [
        ("agents.ingest.notification.bob", ORIGINAL, str(text_seq)),
        ("agents.ingest.notification.bob", ORIGINAL, str(text_seq)),
        ("agents.ingest.notification.eve", binary, str(binary_seq)),
    ]
    ids = [(m.headers or {})["Nats-Msg-Id"] for m in msgs]
    assert len(set(ids)) == 3 and all(i.startswith(f"redrive:{s}:") for i, s in zip(ids, (text_seq, text_seq,
                                                                                          binary_seq), strict=True))
    assert "ntf:n1" not in ids  # never the original id: dedup would swallow it


async def forged(bus: Bus, filed_under: str, stage: str, subject: str, payload: bytes = b"") -> int:
    dead = DeadLetter(stage=stage, reason="forged", subject=subject, payload=payload.decode())
    return (await bus.publish(subjects.dlq(filed_under), dead)).seq


def one_line_refusal(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


REFUSED = [
    ("scheduler", "$JS.API.STREAM.PURGE.RUNS"),
    ("scheduler", "$JS.API.STREAM.DELETE.RUNS"),
    ("runner", "$SYS.REQ.SERVER.PING"),
    ("runner", "$KV.agent-state.bob"),
    ("scheduler", "agents.config.agent.bob"),  # nobody's input
    ("scheduler", "agents.sched.activation.high.bob"),  # the runner's input, not the scheduler's
    ("scheduler", "agents.ingest.notification.*"),  # a wildcard is no subject to publish to
    ("scheduler", "agents.ingest.notification.bob\r\nPUB x"),
    ("ingest", "agents.ingest.notification.bob"),  # ingest reads the Hub, no subject
    ("metrics", "agents.run.bob.a1.started"),
    ("runner", "nowhere.at.all"),
]


@pytest.mark.parametrize(("stage", "subject"), REFUSED)
async def test_redrive_refuses_anything_but_the_stages_inputs(bus: Bus, capsys: pytest.CaptureFixture[str],
                                                              stage: str, subject: str) -> None:
    seq = await forged(bus, stage, stage, subject, b"{}")
    assert await ops.dlq(bus, dlq_args("redrive", seq)) == 1
    line = one_line_refusal(capsys.readouterr().err)
    assert line.startswith(f"cannot redrive DLQ seq {seq}: ") and line.endswith("refused")


async def test_a_letter_filed_under_another_stage_is_refused(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    seq = await forged(bus, "runner", "scheduler", "agents.ingest.notification.bob", ORIGINAL)
    assert await ops.dlq(bus, dlq_args("redrive", seq)) == 1
    assert "filed under 'agents.dlq.runner' but written as stage 'scheduler'" in one_line_refusal(
        capsys.readouterr().err)


async def test_a_forged_purge_letter_does_not_purge_runs(bus: Bus, nats_url: str) -> None:
    for event in ("started", "completed"):
        await bus.publish(subjects.run_event("bob", "a1", event), b'{"v": 1}')
    before = (await bus.js.stream_info("RUNS")).state.messages
    seq = await forged(bus, "scheduler", "scheduler", "$JS.API.STREAM.PURGE.RUNS")

    env = {**os.environ, "NATS_URL": nats_url}
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "botburrow", "dlq", "redrive", str(seq), env=env,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 60)

    assert cli.returncode == 1 and out == b""
    assert "'$JS.API.STREAM.PURGE.RUNS' is not an input subject of stage 'scheduler'" in one_line_refusal(err.decode())
    assert before == 2 and (await bus.js.stream_info("RUNS")).state.messages == before


async def test_a_scheduler_letter_goes_back_to_the_subject_it_was_sourced_from(
        bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    seq = await forged(bus, "scheduler", "scheduler", "agents.sched.part.7.ingest.notification.bob", ORIGINAL)
    assert await ops.dlq(bus, dlq_args("redrive", seq)) == 0
    assert "redriven to agents.ingest.notification.bob" in capsys.readouterr().out
    msgs = await read_all(bus, "NOTIFICATIONS", "agents.ingest.notification.*")
    assert [(m.subject, m.data) for m in msgs] == [("agents.ingest.notification.bob", ORIGINAL)]


async def test_a_dead_lettered_configs_value_is_shown_and_never_redriven(
        bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    kv = await bus.kv(configs.BUCKET)
    revision = await kv.put("agent.broken-agent", b'{"name": "broken-agent", "config": [1, 2]}')
    directory = await AgentDirectory.open(bus, stage="runner")  # reads it, dead-letters it
    await directory.close()
    [msg] = await read_all(bus, "DLQ", "agents.dlq.*")
    seq = msg.metadata.sequence.stream

    assert await ops.dlq(bus, dlq_args("show", seq)) == 0
    shown = capsys.readouterr().out
    assert f"DLQ seq {seq}: a value of the configs bucket that runner could not read" in shown
    assert "key:      'agent.broken-agent'" in shown and f"revision: {revision} (stream KV_configs)" in shown
    assert '"config": [\n    1,' in shown  # the value, as indented JSON

    assert await ops.dlq(bus, dlq_args("redrive", seq)) == 1
    line = one_line_refusal(capsys.readouterr().err)
    assert "fixed at its source" in line and "configsync" in line and "'agent.broken-agent'" in line
    assert await ops.dlq(bus, dlq_args("ls")) == 0
    assert "'$KV.configs.agent.broken-agent'" in capsys.readouterr().out


async def test_show_never_prints_a_terminal_escape_from_a_letter(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    seq = await forged(bus, "runner", "runner", "$KV.configs.agent.x", b"\x1b]0;pwned\x07 \x1b[2J value")
    assert await ops.dlq(bus, dlq_args("show", seq)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;pwned\\x07 \\x1b[2J value" in out

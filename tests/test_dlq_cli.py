"""`botburrow dlq ls | show | redrive` against a real nats-server: dead letters written as the stages
write them, read back by sequence, and sent back to their subject with a new msg id and `Redrive-Of`."""

from __future__ import annotations

import argparse
import base64
import json

import pytest

from botburrow.cli import ops
from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from botburrow.schemas.events import DeadLetter
from botburrow.streams import subjects

ORIGINAL = b'{"v": 1, "agent": "bob", "notification": {"id": "n1"}}'


def dlq_args(action: str, seq: int | None = None) -> argparse.Namespace:
    return argparse.Namespace(command="dlq", action=action, seq=seq)


async def letter(bus: Bus, stage: str, reason: str, subject: str, payload: bytes) -> int:
    text, encoding = (payload.decode(), "utf-8") if payload.isascii() else (base64.b64encode(payload).decode(),
                                                                           "base64")
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
    assert [(m.subject, m.data, m.headers["Redrive-Of"]) for m in msgs] == [
        ("agents.ingest.notification.bob", ORIGINAL, str(text_seq)),
        ("agents.ingest.notification.bob", ORIGINAL, str(text_seq)),
        ("agents.ingest.notification.eve", binary, str(binary_seq)),
    ]
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert len(set(ids)) == 3 and all(i.startswith(f"redrive:{s}:") for i, s in zip(ids, (text_seq, text_seq,
                                                                                          binary_seq), strict=True))
    assert "ntf:n1" not in ids  # never the original id: dedup would swallow it


async def test_redrive_to_a_subject_no_stream_takes_is_a_message(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    seq = await letter(bus, "runner", "bad", "nowhere.at.all", b"{}")
    assert await ops.dlq(bus, dlq_args("redrive", seq)) == 1
    assert "no stream takes 'nowhere.at.all'" in capsys.readouterr().err

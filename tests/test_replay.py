"""`botburrow show` and `botburrow replay`: real recordings made by the runner in-process (Rig), then
replayed live (--rerun), offline, and offline with another definition; bad input gives a message."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from botburrow.cli import ops, replay
from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from schemas.events import (
    ActivationRequested,
    LlmTurn,
    Posted,
    RunStarted,
    ToolCalled,
    ToolCallRecord,
)
from schemas.hub import Author, Notification
from streams import subjects
from tests.fixtures.runner import Rig, agent_yaml

# Imported here, at collection: the runner imports the provider SDKs on its first activation, which on a
# loaded machine can eat most of Rig's end-of-run timeout.
importlib.import_module("services.runner.providers")




def args(activation_id: str, **options: Any) -> argparse.Namespace:
    base = {"rerun": False, "offline": False, "with_definitions": None, "json": False, "quiet": True}
    return argparse.Namespace(command="replay", activation_id=activation_id, **{**base, **options})


async def recorded(rig: Rig, agent: str = "replayer") -> tuple[str, Any]:
    """A real recording: read the thread, comment through a tool on another post, answer."""
    await rig.add_agent(agent)
    other = rig.hub.add_post("Elsewhere", "another post")
    note = rig.hub.mention(agent, "what is this thread about?")
    rig.llm.set_script([
        {"text": "Let me look.", "tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": note.post_id}}],
         "usage": {"input_tokens": 100, "output_tokens": 10}},
        {"tool_calls": [{"name": "hub__create_comment", "arguments": {"post_id": other.id, "content": "Hi there"}}],
         "usage": {"input_tokens": 150, "output_tokens": 15}},
        {"text": "It is about a question for me.", "usage": {"input_tokens": 200, "output_tokens": 20}},
    ])
    await rig.start()
    activation_id, end, events = await rig.activate(agent, [note])
    assert end == "completed", events[-1].metrics.error
    return activation_id, note


def definitions_dir(root: Path, agent: str, *, grants: str, max_iterations: int, prompt: str) -> Path:
    folder = root / "agents" / agent
    folder.mkdir(parents=True)
    config = agent_yaml(agent, max_iterations=max_iterations).replace(b"[hub:read, hub:write]", grants.encode())
    (folder / "config.yaml").write_bytes(config)
    (folder / "system-prompt.md").write_text(prompt)
    return root


async def test_show_renders_turns_tools_posts_and_totals(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    activation_id, _ = await recorded(rig)
    assert await ops.show(rig.bus, argparse.Namespace(activation_id=activation_id, json=False)) == 0
    out = capsys.readouterr().out
    assert "turn 1: 100 in / 10 out" in out and "hub__get_thread ok" in out and "hub__create_comment ok" in out
    assert "posted     comment" in out and "outcome=posted" in out
    assert "total: 3 model turn(s)" in out and "tokens 450 in / 45 out" in out

    assert await ops.show(rig.bus, argparse.Namespace(activation_id=activation_id, json=True)) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["event"] for e in events] == ["started", "llm", "tool", "llm", "tool", "llm", "posted", "completed"]


async def test_offline_follows_the_recording_and_sends_nothing(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    activation_id, note = await recorded(rig)
    comments_before = len(rig.hub.comments_on(note.post_id))
    requests_before = len(rig.llm.requests)

    assert await replay.run(rig.bus, args(activation_id, offline=True)) == 0
    out = capsys.readouterr().out
    assert "RESULT: the re-run followed the recording" in out
    assert "hub__create_comment: comment on post" in out and "'Hi there'" in out
    assert f"final answer: comment on post {note.post_id}" in out and "It is about a question for me." in out
    assert len(rig.hub.comments_on(note.post_id)) == comments_before and len(rig.llm.requests) == requests_before

    assert await replay.run(rig.bus, args(activation_id, offline=True, json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["followed"] and report["rerun_outcome"] == "posted" and report["divergences"] == []
    assert [s["label"] for s in report["steps"][:2]] == ["turn 1", "turn 1, call 1"]


async def test_shadow_definition_shows_what_changes_and_where_it_diverges(
        rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    activation_id, _ = await recorded(rig)
    shadow = definitions_dir(tmp_path, "replayer", grants="[hub:read]", max_iterations=5,
                             prompt="You are {{name}}. Never write anything.")

    code = await replay.run(rig.bus, args(activation_id, offline=True, with_definitions=str(shadow), json=True))
    report = json.loads(capsys.readouterr().out)
    assert code == replay.EXIT_DIVERGED and not report["followed"]
    changes = "\n".join(report["definition_changes"])
    assert "tools removed: hub__create_comment, hub__create_post" in changes
    assert "system prompt: +1 / -1 lines" in changes and "Never write anything." in changes
    first = report["divergences"][0]
    assert (first["step"], first["kind"]) == ("turn 2, call 1", "result") and "unknown tool" in first["now"]
    assert any("shadow run" in n for n in report["notes"])
    assert any(n.startswith("from turn 3 on, the model would have been fed other") for n in report["notes"])

    with pytest.raises(SystemExit, match="does not exist"):
        await replay.run(rig.bus, args(activation_id, offline=True, with_definitions=str(tmp_path / "missing")))
    with pytest.raises(SystemExit, match=r"has no valid agent 'replayer'.*agents found: none"):
        await replay.run(rig.bus, args(activation_id, offline=True, with_definitions=str(tmp_path / "agents")))
    assert await replay.run(rig.bus, args(activation_id, rerun=True, with_definitions=str(shadow))) == 1


async def test_shadow_with_fewer_iterations_stops_where_the_recording_went_on(
        rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    activation_id, _ = await recorded(rig)
    shadow = definitions_dir(tmp_path, "replayer", grants="[hub:read, hub:write]", max_iterations=2,
                             prompt="You are {{name}}. Be brief.")
    assert await replay.run(rig.bus, args(activation_id, offline=True, with_definitions=str(shadow))) == 3
    out = capsys.readouterr().out
    assert "max_iterations: 5 -> 2" in out and "re-run outcome: failed (max_iterations)" in out
    assert "≠ turn 3" in out and "(not reached)" in out


async def test_rerun_publishes_the_request_again_with_replay_of(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    activation_id, note = await recorded(rig)
    rig.llm.set_script([{"text": "Second time around."}])
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_end(msg: Any) -> None:
        if not ended.done():
            ended.set_result(msg.subject)

    sub = await rig.bus.nc.subscribe("agents.run.replayer.*.completed", cb=on_end)
    assert await replay.run(rig.bus, args(activation_id, rerun=True, json=True)) == 0
    published = json.loads(capsys.readouterr().out)
    new_id = published["activation_id"]
    assert new_id != activation_id and published["replay_of"] == activation_id
    assert await asyncio.wait_for(ended, 15) == subjects.run_event("replayer", new_id, "completed")
    await sub.unsubscribe()

    (msg,) = [m for m in await read_all(rig.bus, "ACTIVATIONS", "agents.sched.activation.>")
              if m.headers and m.headers.get("Replay-Of")]
    assert msg.headers is not None
    assert msg.headers["Replay-Of"] == activation_id and msg.headers["Nats-Msg-Id"] == f"act:{new_id}"
    assert "Second time around." in [c.content for c in rig.hub.comments_on(note.post_id)]


async def test_a_failed_recording_is_followed_to_the_same_failure(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    await rig.add_agent("loopy", max_iterations=2)
    note = rig.hub.mention("loopy", "go")
    call = {"tool_calls": [{"name": "hub__get_thread", "arguments": {"post_id": note.post_id}}]}
    rig.llm.set_script([call, call])
    await rig.start()
    activation_id, end, _ = await rig.activate("loopy", [note])
    assert end == "failed"

    assert await replay.run(rig.bus, args(activation_id, offline=True, json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recorded_outcome"] == "failed (max_iterations)"
    assert report["rerun_outcome"] == "failed (max_iterations)" and report["captured"] == []


async def test_unknown_id_is_a_message(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await replay.run(bus, args("act-nope", offline=True)) == replay.EXIT_BAD_INPUT
    assert "no events for activation 'act-nope'" in capsys.readouterr().err
    assert await ops.show(bus, argparse.Namespace(activation_id="act-nope", json=False)) == 1


async def test_truncated_log_and_older_schema_are_messages(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    turn = LlmTurn(activation_id="act-aged", agent="a", at="2026-01-01T00:00:00.000Z", turn=3, model="m",
                   text="late", tool_calls=[ToolCallRecord(id="c", name="hub__search", arguments={"query": "x"})])
    await bus.publish(subjects.run_event("a", "act-aged", "llm"), turn)
    assert await replay.run(bus, args("act-aged", offline=True)) == replay.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "truncated" in err and "no `started` event" in err and "Traceback" not in err
    assert await ops.show(bus, argparse.Namespace(activation_id="act-aged", json=False)) == 0
    assert "(truncated: no `started` event" in capsys.readouterr().out

    started = RunStarted(activation_id="act-old", agent="a", at="2026-01-01T00:00:00.000Z", kind="notification",
                         priority="high", tool_type="native", model="m")
    await bus.publish(subjects.run_event("a", "act-old", "started"), started)
    assert await replay.run(bus, args("act-old", rerun=True)) == replay.EXIT_BAD_INPUT
    assert "older version that did not keep the request" in capsys.readouterr().err

    await bus.publish(subjects.run_event("a", "act-v0", "llm"), b'{"v": 0, "event": "llm", "activation_id": "act-v0"}')
    await bus.publish(subjects.run_event("a", "act-v0", "tool"), b'{"event": "tool", "activation_id": "act-v0"}')
    assert await replay.run(bus, args("act-v0", offline=True)) == replay.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "schema version 0; this botburrow reads version 1" in err and "does not fit the current schema" in err
    assert await ops.show(bus, argparse.Namespace(activation_id="act-v0", json=False)) == 1
    assert "warning: event llm" in capsys.readouterr().err


async def test_offline_reports_other_arguments_in_a_recording(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    """A recording whose tool event ran other arguments than the model asked for (e.g. a CLI executor's)."""
    common: dict[str, Any] = {"activation_id": "act-args", "agent": "nobody", "at": "2026-01-01T00:00:00.000Z"}
    # The mention the recorded run answered (offline runs the activation, which asks the model only for one).
    mention = Notification(id="n1", type="mention", post_id="p1", from_=Author(name="someone"))
    request: dict[str, Any] = {"activation_id": "act-args", "agent": "nobody", "kind": "notification",
                               "priority": "high", "notifications": [mention]}
    started = RunStarted(**common, kind="notification", priority="high", tool_type="native", model="m",
                         request=ActivationRequested(**request))
    call = ToolCallRecord(id="c1", name="hub__search", arguments={"query": "cats"})
    events = [("started", started), ("llm", LlmTurn(**common, turn=1, model="m", tool_calls=[call])),
              ("tool", ToolCalled(**common, turn=1, call_id="c1", name="hub__search", arguments={"query": "dogs"},
                                  result="[]")),
              ("llm", LlmTurn(**common, turn=2, model="m", text="SKIP"))]
    for name, event in events:
        await bus.publish(subjects.run_event("nobody", "act-args", name), event)
    assert await replay.run(bus, args("act-args", offline=True, json=True)) == replay.EXIT_DIVERGED
    report = json.loads(capsys.readouterr().out)
    kinds = [(d["step"], d["kind"]) for d in report["divergences"]]
    assert kinds[0] == ("turn 1, call 1", "arguments")
    assert any("not in the configs bucket" in n for n in report["notes"])


@pytest.mark.slow
async def test_the_botburrow_command_against_nats_url(rig: Rig, nats_url: str) -> None:
    activation_id, _ = await recorded(rig)
    env = {**os.environ, "NATS_URL": nats_url}
    for argv, code, expected in ((["show", activation_id], 0, b"total: 3 model turn(s)"),
                                 (["replay", activation_id, "--offline", "--json"], 0, b'"followed": true'),
                                 (["replay", "act-missing", "--offline"], 1, b"")):
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "botburrow", *argv, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == code, err.decode()
        assert expected in out and b"Traceback" not in err
        if argv[0] == "replay" and code == 0:  # progress goes to stderr, so --json output stays clean
            assert b"re-running 3 model turn(s) offline" in err and b"read 8 events" in err
            assert json.loads(out)["activation_id"] == activation_id
    assert b"no events for activation 'act-missing'" in err


async def test_offline_uses_the_latest_attempt_and_captures_an_exploration_comment(
        bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    request = ActivationRequested(activation_id="act-explore", agent="nobody", kind="exploration", priority="low")

    def common(attempt: int) -> dict[str, Any]:
        return {"activation_id": "act-explore", "agent": "nobody", "at": "2026-01-01T00:00:00.000Z",
                "attempt": attempt}

    events = [("started", RunStarted(**common(1), kind="exploration", priority="low", tool_type="native", model="m",
                                     request=request)),
              ("llm", LlmTurn(**common(1), turn=1, model="m", text="SKIP")),  # attempt 1 crashed after this
              ("started", RunStarted(**common(2), kind="exploration", priority="low", tool_type="native", model="m",
                                     request=request)),
              ("llm", LlmTurn(**common(2), turn=1, model="m", text="POST p-42\nWell said.")),
              ("posted", Posted(**common(2), post_id="p-42", hub_id="c-1"))]
    for name, event in events:
        await bus.publish(subjects.run_event("nobody", "act-explore", name), event)

    assert await replay.run(bus, args("act-explore", offline=True, json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attempt"] == 2 and report["followed"]
    assert report["captured"] == [{"via": "final answer", "target": "comment on post p-42", "content": "Well said."}]
    assert any("no `completed`/`failed` event" in n for n in report["notes"])


async def test_a_redriven_request_is_told_apart_by_its_delivery(bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    """A redrive re-publishes the same activation id, so its events start at attempt 1 again; the runner's
    msg ids (`run:<id>:<stream seq>.<attempt>:...`) tell the two deliveries apart."""
    request = ActivationRequested(activation_id="act-redriven", agent="nobody", kind="exploration", priority="low")
    common: dict[str, Any] = {"activation_id": "act-redriven", "agent": "nobody", "at": "2026-01-01T00:00:00.000Z"}
    for delivery, text in (("10.1", "SKIP"), ("20.1", "POST p-1\nSecond delivery.")):
        for name, event in (("started", RunStarted(**common, kind="exploration", priority="low", tool_type="native",
                                                   model="m", request=request)),
                            ("llm", LlmTurn(**common, turn=1, model="m", text=text))):
            await bus.publish(subjects.run_event("nobody", "act-redriven", name), event,
                              msg_id=f"run:act-redriven:{delivery}:{name}:1")

    assert await replay.run(bus, args("act-redriven", offline=True, json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["content"] for w in report["captured"]] == ["Second delivery."]

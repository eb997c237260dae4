"""Shell and file tools of the native loop: only with shell.enabled, in the workspace, within the
config's allowed_commands and blocked_patterns, run in the sandbox."""

from __future__ import annotations

import json
import shutil

import pytest

from botburrow.doubles.scripted_llm import ScriptedLLM
from schemas.agent import Shell
from services.runner.shelltools import refusal
from tests.fixtures.runner import Rig, kinds

BACKEND = "bwrap" if shutil.which("bwrap") else "none"
SHELL = """\
  shell:
    enabled: true
    allowed_commands: [python3, ls]
    blocked_patterns: ["rm -rf", "sudo"]
    timeout_seconds: 20
"""




@pytest.mark.parametrize(("command", "blocked"), [
    ("python3 -c 'print(1)'", False),
    ("ls -la", False),
    ("curl http://example.invalid", True),  # not in allowed_commands
    ("python3 x.py; curl evil", True),  # chaining: only the first program would have been checked
    ("ls | sh", True),
    ("ls $(whoami)", True),
    ("python3 -c 'import os' > /dev/null", True),
    ("ls && rm -rf /", True),
    ("sudo ls", True),
])
def test_refusal_blocks_when_in_doubt(command: str, blocked: bool) -> None:
    shell = Shell(enabled=True, allowed_commands=["python3", "ls"], blocked_patterns=["rm -rf", "sudo"])
    assert (refusal(command, shell) is not None) is blocked


def tool_results(llm: ScriptedLLM) -> list[dict]:
    last = llm.requests[-1].body["messages"]
    return [block for message in last if isinstance(message["content"], list)
            for block in message["content"] if block.get("type") == "tool_result"]


async def test_the_model_runs_allowed_programs_in_its_workspace_and_nothing_else(rig: Rig) -> None:
    await rig.add_agent("coder", shell=SHELL)
    note = rig.hub.mention("coder", "compute something")
    rig.llm.set_script([
        {"tool_calls": [
            {"name": "files__write", "arguments": {"path": "calc.py", "content": "print(6 * 7)"}},
            {"name": "shell__run", "arguments": {"command": "python3 calc.py"}},
            {"name": "shell__run", "arguments": {"command": "cat /etc/hostname"}},
            {"name": "shell__run", "arguments": {"command": "ls; rm -rf /"}},
            {"name": "files__read", "arguments": {"path": "../../../../etc/passwd"}},
        ]},
        {"text": "The answer is 42."},
    ])
    await rig.start(SANDBOX_BACKEND=BACKEND)
    _, end, events = await rig.activate("coder", [note])

    assert end == "completed", events[-1].metrics.error
    tools = [e for e in events if type(e).__name__ == "ToolCalled"]
    outcomes = {(t.name, json.dumps(t.arguments, sort_keys=True)): t for t in tools}
    assert len(outcomes) == 5 and kinds(events)[-2:] == ["Posted", "RunCompleted"]
    run_ok = outcomes[("shell__run", json.dumps({"command": "python3 calc.py"}))]
    assert run_ok.error is None and run_ok.result.startswith("exit 0") and "42" in run_ok.result
    assert "not in allowed_commands" in outcomes[("shell__run", json.dumps({"command": "cat /etc/hostname"}))].error
    assert "blocked" in outcomes[("shell__run", json.dumps({"command": "ls; rm -rf /"}))].error
    assert "outside the workspace" in outcomes[("files__read", json.dumps({"path": "../../../../etc/passwd"}))].error
    errors = [r for r in tool_results(rig.llm) if r.get("is_error")]
    assert len(errors) == 3  # the model was told each refusal, and the loop went on


async def test_without_shell_enabled_no_shell_tool_is_offered(rig: Rig) -> None:
    await rig.add_agent("talker")
    note = rig.hub.mention("talker", "hello")
    rig.llm.set_script([{"tool_calls": [{"name": "shell__run", "arguments": {"command": "ls"}}]},
                        {"text": "hi"}])
    await rig.start(SANDBOX_BACKEND=BACKEND)
    _, end, events = await rig.activate("talker", [note])
    offered = {tool["name"] for tool in rig.llm.requests[0].body.get("tools", [])}
    assert not any(name.startswith(("shell__", "files__")) for name in offered)
    (call,) = [e for e in events if type(e).__name__ == "ToolCalled"]
    assert call.error and "unknown tool" in call.error and end == "completed"

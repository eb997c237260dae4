"""The CLI executors take any text: non-ASCII (emoji, CJK, RTL) round-trips through each real CLI, its
config files and the scripted LLM behind the gateway; a crashed CLI is reported with its own last lines
(bounded, secrets redacted); an answer never carries a CLI's internal markup.

The end-to-end tests reuse tests/test_executors.py's rig: the runner's `Activation` with `cli_thinkers`,
the Hub emulator, the strict scripted LLM.
"""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from botburrow.definitions.parse import parse_agent
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.doubles.scripted_llm.script import iter_strings
from botburrow.runtime.bus import Bus
from botburrow.secrets import remember
from services.runner.executors import CliThinker
from services.runner.executors.aider import Aider, error_message
from services.runner.executors.base import ERROR_TAIL_CHARS, Flavor, error_tail
from services.runner.executors.claude import ClaudeCode
from services.runner.executors.goose import Goose
from services.runner.executors.opencode import OpenCode
from services.runner.executors.process import Completed
from services.runner.executors.text import safe_text, strip_markup, to_json
from tests.test_executors import CliRig, agent_yaml, assert_clean, assert_posted, cli_rig, needs

__all__ = ["cli_rig"]  # the fixture, imported for pytest

PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions" / "agents"
# Emoji (a ZWJ sequence), CJK, Hebrew and Arabic (RTL) with a right-to-left mark, Latin accents.
PERSONA = ("Ahoy, matey! 🏴‍☠️ You are {{name}}, 海賊の船長, קפטן הספינה \u200f, قبطان. "
           "Answer in one sentence.")
PERSONA_MARK = "海賊の船長"
ASK = "¿Dónde está el tesoro? 宝はどこ? איפה האוצר? أين الكنز؟ 🦜"
ANSWER = "Arr! 宝は島に 🏝️ — האוצר באי, الكنز في الجزيرة. ⚓"


def add_agent(rig: CliRig, name: str, type_: str, model: str, prompt: str, provider: str = "anthropic") -> None:
    rig.keys[name] = rig.hub.add_agent(name)
    rig.definitions.agents[name] = parse_agent(name, agent_yaml(name, type_, model, provider=provider),
                                               prompt.encode())


def request_strings(rig: CliRig) -> list[str]:
    return [s for r in rig.llm.requests for s in iter_strings(r.body)]


async def round_trip(rig: CliRig, type_: str, provider: str = "anthropic", prompt: str = PERSONA,
                     mark: str = PERSONA_MARK) -> None:
    model = f"text-{type_}-{provider}"
    add_agent(rig, "polyglot", type_, model, prompt, provider)
    note = rig.hub.mention("polyglot", ASK)
    rig.llm.set_script([{"text": ANSWER, "expect": {"contains": mark}}], key=model)
    metrics, events = await rig.activate("polyglot", note)

    assert_posted(rig, "polyglot", note, metrics, events, ANSWER)
    assert any(ASK in s for s in request_strings(rig)), "the mention's text reached the model intact"
    seen = json.loads(rig.runner.seen[0])
    # The persona went through argv (goose) or a config file written as UTF-8, not escaped.
    assert any(mark in text for text in [*seen["argv"], *seen["files"].values()])
    assert_clean(rig, events)


@pytest.mark.slow
async def test_claude_code_round_trips_any_text(cli_rig: CliRig) -> None:
    needs("claude")
    await round_trip(cli_rig, "claude-code")


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_goose_round_trips_any_text(cli_rig: CliRig, provider: str) -> None:
    needs("goose")
    await round_trip(cli_rig, "goose", provider)


@pytest.mark.slow
async def test_opencode_round_trips_any_text(cli_rig: CliRig) -> None:
    needs("opencode")
    await round_trip(cli_rig, "opencode", "openai")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["ours", "pirate-captain-agent", "test-persona-agent"])
async def test_aider_round_trips_any_text(cli_rig: CliRig, prompt: str) -> None:
    """Aider reads its settings as YAML: an escaped emoji (a surrogate pair) used to crash it. Two of the
    published prompts carry emoji."""
    needs("aider")
    if prompt == "ours":
        await round_trip(cli_rig, "aider", "openai")
        return
    published = (PUBLISHED / prompt / "system-prompt.md").read_text(encoding="utf-8")
    emoji = next(word for word in published.split() if any(ord(c) > 0xFFFF for c in word))
    await round_trip(cli_rig, "aider", "openai", prompt=published, mark=emoji)
    settings = next(t for p, t in json.loads(cli_rig.runner.seen[0])["files"].items() if p.endswith("settings.yml"))
    assert emoji in yaml.safe_load(settings)[0]["system_prompt_prefix"]


# --- a crashed CLI names its own last words ----------------------------------------------------------------

SECRET = "crash-secret-" + uuid.uuid4().hex
# Stands in for a CLI that crashes at start: noise, then a traceback naming a secret and the token it was given.
CRASHING_CLI = textwrap.dedent(f"""\
    #!{sys.executable}
    import os, sys
    token = os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("OPENAI_API_KEY") or os.environ["LLM_TOKEN"]
    print('{{"type": "system", "subtype": "init"}}')
    for n in range(40):
        print(f"noise line {{n}}", file=sys.stderr)
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f"  calling with {{token}} and {SECRET}", file=sys.stderr)
    print("\\x1b[31mRuntimeError: the model client blew up 💥\\x1b[0m", file=sys.stderr)
    sys.exit(3)
""")


@pytest.mark.parametrize("flavor", [ClaudeCode(), Goose(), Aider(), OpenCode()], ids=lambda f: f.name)
async def test_a_crashed_cli_is_reported_with_its_last_lines_redacted(cli_rig: CliRig, flavor: Flavor) -> None:
    remember("crash-test-secret", SECRET)
    binary = cli_rig.root / "bin" / "crashing-cli"
    binary.write_text(CRASHING_CLI)
    binary.chmod(0o755)
    add_agent(cli_rig, "crasher", flavor.name, "crash-model", PERSONA, "openai")
    thinkers = {flavor.name: CliThinker(flavor, cli_rig.gateway, runner=cli_rig.runner, binary=str(binary))}
    metrics, events = await cli_rig.activate("crasher", cli_rig.hub.mention("crasher", ASK), thinkers=thinkers)

    error = metrics.error
    assert metrics.outcome == "failed" and error is not None
    assert error.startswith(f"{flavor.name}: ") and "exited with 3" in error, error
    assert error.endswith("RuntimeError: the model client blew up 💥)"), error
    assert "noise line 39" in error and "noise line 0 " not in error  # its last lines, bounded
    assert len(error) < ERROR_TAIL_CHARS + 120
    assert SECRET not in error and "[REDACTED:crash-test-secret]" in error
    assert "bbgw-" not in error and "[activation-token]" in error
    assert "\x1b" not in error
    assert events[-1].metrics.error == error  # the failure event carries it


async def test_a_parsed_failure_is_redacted_before_it_is_cut(cli_rig: CliRig) -> None:
    """Claude Code's `result` line quoting a secret across the reason's 300-character bound."""
    remember("crash-test-secret", SECRET)
    result = {"type": "result", "is_error": True, "subtype": "success", "result": "x" * 280 + SECRET + " end"}
    binary = cli_rig.root / "bin" / "failing-cli"
    binary.write_text(f"#!{sys.executable}\nimport sys\nprint({json.dumps(json.dumps(result))})\nsys.exit(1)\n")
    binary.chmod(0o755)
    add_agent(cli_rig, "unlucky", "claude-code", "unlucky-model", PERSONA)
    thinkers = {"claude-code": CliThinker(ClaudeCode(), cli_rig.gateway, runner=cli_rig.runner, binary=str(binary))}
    metrics, _ = await cli_rig.activate("unlucky", cli_rig.hub.mention("unlucky", ASK), thinkers=thinkers)
    assert metrics.error is not None and metrics.error.startswith("claude-code: success: xxx"), metrics.error
    assert SECRET[:16] not in metrics.error and SECRET[-8:] not in metrics.error and "[REDACT" in metrics.error


def test_error_tail_takes_the_last_lines_of_stderr_else_stdout_without_events() -> None:
    lines = b"\n".join(f"line {n}".encode() for n in range(10))
    assert error_tail(Completed(1, b"", lines)) == "line 4 | line 5 | line 6 | line 7 | line 8 | line 9"
    stdout = b'{"type": "step_start"}\nfatal: \xff bad byte\n{"type": "error"}\n'
    assert error_tail(Completed(1, stdout, b"\n  \n")) == "fatal: \ufffd bad byte"
    long_line = ("x" * 1000).encode()
    assert error_tail(Completed(1, b"", long_line)) == "…" + "x" * (ERROR_TAIL_CHARS - 1)


def test_error_tail_redacts_before_it_cuts() -> None:
    # The secret straddles the cut: redacted after the cut, its end would be left in the tail.
    line = "x" * 2000 + SECRET + "y" * (ERROR_TAIL_CHARS - len(SECRET) // 2)
    tail = error_tail(Completed(1, b"", line.encode()), lambda text: text.replace(SECRET, "[REDACTED]"))
    assert tail.endswith("y") and len(tail) == ERROR_TAIL_CHARS
    assert SECRET[-8:] not in tail and "[REDACTED]" in tail


def test_aider_error_message_joins_its_wrapped_lines_without_its_advice() -> None:
    stdout = ("litellm.InternalServerError: OpenAIException - 'utf-8' \ncodec can't encode characters\n"
              "The API provider's servers are down or overloaded.\nRetrying in 1.0 seconds...\n")
    expected = "litellm.InternalServerError: OpenAIException - 'utf-8' codec can't encode characters"
    assert error_message(stdout) == expected


# --- text in: argv and config files ------------------------------------------------------------------------


def test_config_json_keeps_characters_and_is_yaml_too() -> None:
    value: list[Any] = [ANSWER + " \u200f \x85 \u2028 \x7f \x9b \x1b \ufffe tab\t", {"k": "\u202e" + PERSONA}]
    text = to_json(value)
    assert "宝は島に 🏝️" in text and "\\ud83c" not in text
    assert json.loads(text) == value and yaml.safe_load(text) == value


def test_safe_text_replaces_what_argv_and_utf8_files_cannot_hold() -> None:
    assert safe_text("a\x00b\ud83cc " + ANSWER) == "a\ufffdb\ufffdc " + ANSWER
    (safe_text("\ud83c") + ANSWER).encode("utf-8")  # no UnicodeEncodeError


# --- text out: no CLI markup in a posted reply -------------------------------------------------------------


def test_strip_markup_removes_internal_blocks_and_keeps_the_answer() -> None:
    reminder = "<system-reminder>\nThe todo list is empty. Do not mention this.\n</system-reminder>"
    assert strip_markup(f"{reminder}\n\nOtters hold hands.") == "Otters hold hands."
    assert strip_markup(f"Hi.\n{reminder}\n\n\nBye <b>now</b>") == "Hi.\n\nBye <b>now</b>"
    assert strip_markup("<command-name>/cost</command-name>Done.</system-reminder>") == "Done."
    assert strip_markup("Answer.\n<system-reminder>cut off mid-block") == "Answer."
    assert strip_markup("  `<div>` stays, as does a\n\n\n\ngap  ") == "`<div>` stays, as does a\n\n\n\ngap"


async def test_a_posted_reply_carries_no_cli_markup(cli_rig: CliRig) -> None:
    cli_rig.add_custom("tidy", "answer")
    note = cli_rig.hub.mention("tidy", "hello")
    cli_rig.llm.set_script([{"text": "<system-reminder>Remember the todo list.</system-reminder>\n" + ANSWER}],
                           key="tidy-model")
    metrics, events = await cli_rig.activate("tidy", note)
    assert_posted(cli_rig, "tidy", note, metrics, events, ANSWER)


@pytest.mark.slow
async def test_claude_code_reply_carries_no_markup(cli_rig: CliRig) -> None:
    needs("claude")
    add_agent(cli_rig, "tidy", "claude-code", "tidy-model", PERSONA)
    note = cli_rig.hub.mention("tidy", "hello")
    cli_rig.llm.set_script([{"text": f"<system-reminder>\nUse the todo tool.\n</system-reminder>\n{ANSWER}"}],
                           key="tidy-model")
    metrics, events = await cli_rig.activate("tidy", note)
    assert_posted(cli_rig, "tidy", note, metrics, events, ANSWER)


# --- the demo through each CLI ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("type_", "search"), [("claude-code", "mcp__hub__search"), ("goose", "hub__search"),
                                               ("opencode", "hub_search"), ("aider", None)])
async def test_the_demo_model_through_each_cli_searches_and_answers_in_the_agent_s_voice(
        bus: Bus, hub_emulator: HubEmulator, tmp_path: Path, type_: str, search: str | None) -> None:
    """`botburrow dev --agents` on the published definitions (all CLI agents): the demo model calls the Hub
    search the CLI offers (aider has no tools) and the reply is the pirate's, its emoji intact, no markup."""
    needs({"claude-code": "claude"}.get(type_, type_))
    prompt = (PUBLISHED / "pirate-captain-agent" / "system-prompt.md").read_bytes()
    provider = "openai" if type_ == "aider" else "anthropic"
    async with ScriptedLLM(strict=False) as llm:
        rig = CliRig(bus, hub_emulator, llm, tmp_path)
        try:
            rig.keys["pirate"] = hub_emulator.add_agent("pirate")
            rig.definitions.agents["pirate"] = parse_agent(
                "pirate", agent_yaml("pirate", type_, "demo-model", provider=provider, mcp='["hub"]'), prompt)
            note = hub_emulator.mention("pirate", "ahoy? where be the treasure")
            metrics, events = await rig.activate("pirate", note)
        finally:
            await rig.close()
    assert metrics.outcome == "posted", metrics.error
    assert [e.name for e in events if type(e).__name__ == "ToolCalled"] == ([search] if search else [])
    (reply,) = [c.content for c in hub_emulator.comments_on(note.post_id) if c.author_name == "pirate"]
    assert reply.startswith("Ahoy there, matey! 🏴‍☠️ pirate-captain-agent here, the most notorious pirate captain")
    assert "You said: “ahoy? where be the treasure”" in reply and "<" not in reply
    assert (f"I checked {search} for “ahoy where treasure” first: nothing yet." in reply) == bool(search)

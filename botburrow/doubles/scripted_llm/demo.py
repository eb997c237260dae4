"""Demo mode's answers (`ScriptedLLM(strict=False)` once out of steps): what a newcomer sees from `botburrow dev`.

The agent speaks in its own voice, derived deterministically from its system prompt's first lines: the
speech its persona opens with ("Ahoy there, matey!"), else the words it is told to use ("ahoy", "matey",
"arr"), its name and role from "You are **name**: role", and its sign-off ("sign off with ⚓"). Before
answering it uses one tool, once per conversation: a search among the tools offered (the native loop's
`hub__search`, a CLI's `mcp__hub__search`), never a tool that writes, so `botburrow show` has a tool call.

Works on both wire shapes (Anthropic's messages and OpenAI's chat), read from the request body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

ASKED_MAX_CHARS = 120
ROLE_MAX_CHARS = 110
QUERY_MAX_WORDS = 4
PERSONA_LINES = 8  # how far into the persona its voice is looked for
CLI_SELVES = ("Claude Code", "goose", "opencode", "OpenCode", "aider")  # a CLI's own "You are ..." is not the agent

_MARKUP = re.compile(r"<([a-z][\w-]*)(?:\s[^>]*)?>.*?</\1\s*>", re.DOTALL)  # a CLI's <system-reminder> and the like
_YOU_ARE = re.compile(r"You are \**([^*,:.\n]{1,60}?)\**\s*(?:[,:]\s*|\s[-—]\s*)([^\n]*)")
_QUOTED = re.compile(r"[\"“]([^\"”\n]{1,20})[\"”]")
_SIGN_OFF = re.compile(r"sign(?:s|ing)? off with [\"“]([^\"”\n]{1,20})[\"”]", re.IGNORECASE)
_WORD = re.compile(r"[^\W_][\w'-]*")
_MENTIONS = re.compile(r"^(?:@\S+\s*)+")  # the leading "@agent" of a mention is not what was said


def reply(last_user_text: str, body: Mapping[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(text, tool calls): a search call first when one is offered, else the in-character answer."""
    asked = _asked(last_user_text)
    results = _tool_results(body)
    if not results and (tool := _search_tool(body)) is not None:
        name, required = tool
        query = _query(asked)
        return "", [(name, dict.fromkeys(required, query))]
    return _in_character(_system_text(body), asked, _last_call(body), results[-1] if results else None), []


def _in_character(system: str, asked: str, call: tuple[str, str] | None, result: str | None) -> str:
    persona = _persona(system)
    you_are = _YOU_ARE.search(persona)
    opening = persona[:you_are.start()] if you_are else ""
    spoken = opening.splitlines()[-1].strip() if opening.strip() else ""
    sign_off = _SIGN_OFF.search(persona)
    words = [w for w in _QUOTED.findall(persona) if not sign_off or w != sign_off.group(1)]
    if spoken and not spoken.startswith("#"):
        greeting = spoken
    elif words:
        greeting = f"{words[0].capitalize()}, {words[1]}!" if len(words) > 1 else f"{words[0].capitalize()}!"
    else:
        greeting = "Hello!"
    parts = [greeting]
    if you_are:
        name, role = you_are.group(1).strip(), _first_sentence(you_are.group(2))
        parts.append(f"{name} here, {_lower_first(role)}." if role else f"{name} here.")
    # No full stop after a quote that ends a sentence of its own ("ahoy?").
    parts.append(f"You said: “{asked}”{'' if asked[-1] in '.!?…' else '.'}" if asked else "Thanks for the mention!")
    if call is not None:
        parts.append(f"I checked {call[0]} for “{call[1]}” first: {_summary(result)}.")
    if len(words) > 2:
        parts.append(f"{words[2].capitalize()}!")
    if sign_off:
        parts.append(sign_off.group(1))
    return " ".join(parts)


def _persona(system: str) -> str:
    """The agent's own prompt within the system text (a CLI puts its own first): from the first `# ` heading
    soon followed by "You are", else from the last "You are" that is not a CLI's own; its first lines."""
    lines = system.splitlines()
    start = 0
    headings = [i for i, line in enumerate(lines) if line.startswith("# ")]
    opened = [i for i in headings if "You are" in "\n".join(lines[i:i + 5])]
    if opened:
        start = opened[0]
    else:
        own = [i for i, line in enumerate(lines) if "You are" in line and not any(c in line for c in CLI_SELVES)]
        start = own[-1] if own else 0
    kept = [line for line in lines[start:] if line.strip()]
    return "\n".join(kept[:PERSONA_LINES])


def _asked(last_user_text: str) -> str:
    """What the user asked: the quoted line of the task (`> ...`, how a notification's text is given), else
    the whole text; without CLI markup or a leading @mention, on one line, bounded."""
    text = _MARKUP.sub("", last_user_text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    quoted = [line[1:].strip() for line in lines if line.startswith(">")]
    said = " ".join(_MENTIONS.sub("", quoted[0] if quoted else " ".join(lines)).split())
    return said if len(said) <= ASKED_MAX_CHARS else said[:ASKED_MAX_CHARS - 1] + "…"


def _query(asked: str) -> str:
    """A few of the asked words, the longer ones first kept (short ones are mostly "the", "be", "is")."""
    words = _WORD.findall(re.sub(r"@\S+", " ", asked))
    return " ".join(([w for w in words if len(w) > 3] or words)[:QUERY_MAX_WORDS]) or "hello"


def _first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".!? ")
    return sentence if len(sentence) <= ROLE_MAX_CHARS else sentence[:ROLE_MAX_CHARS - 1] + "…"


def _lower_first(text: str) -> str:
    """"A cheerful pirate" -> "a cheerful pirate"; a name or acronym ("OpenAI", "DevOps") is left alone."""
    first = text.split(" ", 1)[0]
    return text[0].lower() + text[1:] if first[1:].islower() or len(first) == 1 else text


def _summary(result: str | None) -> str:
    if result is None:
        return "no answer"
    try:
        value = json.loads(result)
    except ValueError:
        value = None
    if isinstance(value, dict):
        counts = [f"{len(v)} {k}" for k, v in value.items() if isinstance(v, list) and v]
        return ", ".join(counts) if counts else "nothing yet"
    if isinstance(value, list):
        return f"{len(value)} found" if value else "nothing yet"
    return " ".join(result.split())[:60] or "nothing yet"


# --- the request body, either wire shape --------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages") or [] if isinstance(m, dict)]


def _system_text(body: Mapping[str, Any]) -> str:
    parts = [_text_of(body.get("system"))]
    parts += [_text_of(m.get("content")) for m in _messages(body) if m.get("role") in ("system", "developer")]
    return "\n".join(p for p in parts if p)


def _search_tool(body: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """The first search tool offered whose required arguments are all strings: (name, required)."""
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        spec: dict[str, Any] = function if isinstance(function, dict) else tool
        name, schema = str(spec.get("name", "")), spec.get("input_schema") or spec.get("parameters") or {}
        properties, required = schema.get("properties") or {}, list(schema.get("required") or [])
        if name.lower().endswith("search") and required and all(
                (properties.get(r) or {}).get("type") == "string" for r in required):
            return name, required
    return None


def _tool_results(body: Mapping[str, Any]) -> list[str]:
    results = []
    for message in _messages(body):
        if message.get("role") == "tool":
            results.append(_text_of(message.get("content")))
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                results.append(_text_of(block.get("content")))
    return results


def _last_call(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(tool name, the first argument's value) of the conversation's last tool call."""
    found = None
    for message in _messages(body):
        if message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            found = (str(function.get("name", "")), _first_value(function.get("arguments")))
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                found = (str(block.get("name", "")), _first_value(block.get("input")))
    return found


def _first_value(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return ""
    values = list(arguments.values()) if isinstance(arguments, dict) else []
    return str(values[0]) if values else ""

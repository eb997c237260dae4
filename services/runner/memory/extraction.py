"""The one small model call after posting that picks out projects, decisions and feedback to remember.

It runs on the agent's own brain (model, endpoint and key by the same resolution as its thinking), with
no tools, a short prompt and a small answer; its tokens are charged to the activation's budget, so they
are in the activation's metrics and cost. The answer is JSON lines; anything else in it is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.runner.executors.streams import json_lines
from services.runner.memory.items import ITEM_MAX_CHARS, Kind

MAX_ITEMS = 5
EXCHANGE_MAX_CHARS = 6_000
FLAGS: dict[str, Kind] = {"projects_worked_on": "project", "decisions_made": "decision",
                          "feedback_received": "feedback"}
SYSTEM = (
    "You keep an AI agent's long-term notes. From the exchange you are shown, pick out at most "
    f"{MAX_ITEMS} facts worth remembering in later conversations, of these kinds only: KINDS. "
    "A project is something the agent works on (name, repository, goal); a decision is a choice made and "
    "why; feedback is what someone said about the agent's work. Write each as one short sentence that "
    "makes sense on its own, naming who and what. Never copy credentials, keys, tokens or passwords. "
    'Answer with one JSON object per line, {"kind": "...", "text": "..."}, and nothing else; '
    "answer NONE if there is nothing worth keeping."
)


def kinds_wanted(remember: object) -> list[Kind]:
    return [kind for flag, kind in FLAGS.items() if bool(getattr(remember, flag, False))]


def prompt(exchange: str, kinds: Sequence[Kind]) -> tuple[str, str]:
    """(system, user) for the extraction call."""
    return SYSTEM.replace("KINDS", ", ".join(kinds)), f"The exchange:\n\n{exchange[:EXCHANGE_MAX_CHARS]}"


def parse_answer(text: str, kinds: Sequence[Kind]) -> list[tuple[Kind, str]]:
    found: list[tuple[Kind, str]] = []
    for value in json_lines(text.encode()):
        kind = next((k for k in kinds if k == value.get("kind")), None)
        note = value.get("text")
        if kind is not None and isinstance(note, str) and note.strip():
            found.append((kind, note.strip()[:ITEM_MAX_CHARS]))
        if len(found) >= MAX_ITEMS:
            break
    return found

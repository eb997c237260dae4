"""One memory: a small Markdown document with YAML front matter, and where it lives in the store.

Layout under `memory/<agent>/` (the Botburrow design): `conversations/<date>-<slug>-<id>.md` for an
exchange with someone the definition names in `remember.conversations_with`, `learnings/<date>-<slug>-<id>.md`
for a project, decision or feedback the extraction call found, and `index.json` (a cache: index.py).
Each item's key ends in a random id, so two runners writing at once never write the same object.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Literal

import msgspec
import yaml

Kind = Literal["conversation", "project", "decision", "feedback"]
KINDS: tuple[Kind, ...] = ("conversation", "project", "decision", "feedback")
ITEM_MAX_CHARS = 2_000  # one memory's text: a memory is a note, not a transcript
ITEM_MAX_BYTES = 16 << 10  # an object larger than this is not a memory we wrote: unreadable
PREFIX = "memory/"
INDEX = "index.json"
# How much a kind counts when room must be made (eviction takes the lowest first, oldest first within).
IMPORTANCE: dict[str, float] = {"conversation": 0.5, "project": 0.7, "feedback": 0.8, "decision": 0.9}
LOW_IMPORTANCE = 0.6  # below: evicted before any item at or above it, whatever their ages


class MemoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """A memory as stored (front matter fields, then `text`). `key` is its object key under the agent."""

    id: str
    agent: str
    kind: Kind
    who: str = ""  # the other party (a human's or agent's name), "" when none
    when: str  # RFC 3339, UTC
    source: str = ""  # "post <id>", "comment <id> on post <id>", "dm <id>"
    activation_id: str = ""
    importance: float = 0.5
    text: str

    @property
    def folder(self) -> str:
        return "conversations" if self.kind == "conversation" else "learnings"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def slug(text: str, max_chars: int = 40) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:max_chars].rstrip("-") or "memory"


def agent_prefix(agent: str) -> str:
    return f"{PREFIX}{agent}/"


def item_key(item: MemoryItem) -> str:
    """The object key relative to the agent's prefix: `<folder>/<date>-<slug>-<id>.md`."""
    return f"{item.folder}/{item.when[:10]}-{slug(item.text)}-{item.id}.md"


def render(item: MemoryItem) -> bytes:
    front = {"id": item.id, "agent": item.agent, "kind": item.kind, "who": item.who, "when": item.when,
             "source": item.source, "activation_id": item.activation_id, "importance": item.importance}
    return ("---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n"
            + item.text.strip() + "\n").encode()


class Unreadable(ValueError):
    """An object under the prefix that is not a memory this code can read (why in the message)."""


def parse(data: bytes) -> MemoryItem:
    if len(data) > ITEM_MAX_BYTES:
        raise Unreadable(f"{len(data)} bytes, over {ITEM_MAX_BYTES}")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise Unreadable("not UTF-8") from None
    if not text.startswith("---\n"):
        raise Unreadable("no front matter")
    head, sep, body = text[4:].partition("\n---\n")
    if not sep:
        raise Unreadable("front matter not closed")
    try:
        front = yaml.safe_load(head)
        return msgspec.convert({**(front if isinstance(front, dict) else {}), "text": body.strip()}, MemoryItem,
                               str_keys=True)
    except (yaml.YAMLError, msgspec.ValidationError, RecursionError) as exc:
        raise Unreadable(f"front matter: {str(exc)[:200]}") from None

"""How `botburrow dlq` shows and refuses dead letters of `configs` bucket values.

Stages dead-letter a bucket value they cannot read under its KV subject (`$KV.configs.<key>`, stream
`KV_configs`, seq = the value's revision: see `botburrow.definitions.letters`). Such a letter is shown
readably (key, revision, reason, the value itself) and never redriven: the value is fixed at its
source, the agent definitions, and configsync then rewrites the bucket.
"""

from __future__ import annotations

import base64
import binascii
import json

from botburrow.definitions import bucket
from schemas.events import DeadLetter

KV_PREFIX = bucket.subject("")
VALUE_SHOWN_CHARS = 4000


def _printable(text: str) -> str:
    """`text` safe for a terminal: control characters (escape sequences) shown as `\\xNN`, lines kept."""
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)


def is_kv(letter: DeadLetter) -> bool:
    return letter.subject.startswith("$KV.")


def kv_refusal(letter: DeadLetter) -> str:
    if letter.subject.startswith(KV_PREFIX):
        key = letter.subject[len(KV_PREFIX):]
        return (f"it is the configs value {key[:200]!r}, which is fixed at its source: correct the agent "
                f"definitions, then configsync rewrites or deletes it (`botburrow validate DIR` checks them)")
    return f"{letter.subject[:200]!r} is a key-value bucket's subject, never an input: refused"


def _value_text(letter: DeadLetter) -> str:
    """The value as text: indented JSON when it is JSON, else its text, else a hex dump of its start."""
    if letter.payload_encoding == "base64":
        try:
            data = base64.b64decode(letter.payload)
        except (ValueError, binascii.Error):
            return f"(undecodable base64) {letter.payload[:200]!r}"
        return f"({len(data)} bytes, not UTF-8; hex of the first 256)\n{data[:256].hex(' ', 16)}"
    try:
        text = json.dumps(json.loads(letter.payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        text = letter.payload
    if len(text) > VALUE_SHOWN_CHARS:
        text = text[:VALUE_SHOWN_CHARS] + f"\n... ({len(text) - VALUE_SHOWN_CHARS} more characters)"
    return text


def show_kv(seq: int, letter: DeadLetter) -> str:
    key = letter.subject[len(KV_PREFIX):] if letter.subject.startswith(KV_PREFIX) else letter.subject
    size = getattr(letter, "payload_bytes", 0)
    lines = [
        f"DLQ seq {seq}: a value of the configs bucket that {letter.stage} could not read",
        f"key:      {key!r}",
        f"revision: {letter.seq} (stream {letter.stream})" + (f", {size} bytes" if size else ""),
        f"reason:   {_printable(letter.reason)}",
        "fix:      at its source (the agent definitions); configsync then rewrites or deletes the value;"
        " it cannot be redriven",
    ]
    if getattr(letter, "payload_truncated", False):
        lines.append("note:     the letter holds only the start of the value")
    return "\n".join([*lines, "value:", _printable(_value_text(letter))])

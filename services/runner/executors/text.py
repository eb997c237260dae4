"""Text in and out of a CLI: any text goes in, only the answer comes out.

In: a prompt or system prompt is passed in argv or a config file. argv cannot hold a NUL, and neither
argv nor a UTF-8 file can hold a lone surrogate (Hub JSON may carry `\\ud83c` alone): both would stop
the CLI from starting, so they become U+FFFD. Everything else (emoji, CJK, RTL marks) goes through as
is; config files are written as UTF-8 and JSON without `\\u` escapes (`to_json`), since PyYAML, which
reads Aider's settings, turns an escaped surrogate pair into two lone surrogates.

Out: a CLI's answer may carry its internal markup (Claude Code's `<system-reminder>` blocks and its
slash-command tags): `strip_markup` is the one place it is removed before an answer is posted.
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "\ufffd"
_UNSAFE = re.compile(r"[\x00\ud800-\udfff]")
# What YAML (1.1, PyYAML) does not keep raw in a string: DEL and C1 controls, U+FFFE/U+FFFF (refused), and
# its line breaks NEL, U+2028 and U+2029 (folded into spaces). Kept \u-escaped.
_NOT_YAML = re.compile(r"[\x7f-\x9f\u2028\u2029\ufffe\uffff]")

#: Claude Code's own tags, which it puts around text meant for the model, never for a reader.
INTERNAL_TAGS = ("system-reminder", "command-name", "command-message", "command-args", "local-command-stdout",
                 "local-command-stderr", "local-command-caveat", "user-prompt-submit-hook", "bash-input",
                 "bash-stdout", "bash-stderr")
_TAGS = "|".join(INTERNAL_TAGS)
# A whole block (shortest match), or an opening tag never closed (a cut answer): to the end.
_BLOCK = re.compile(rf"<({_TAGS})(?:\s[^>]*)?>.*?(?:</\1\s*>|\Z)", re.DOTALL)
_STRAY_CLOSE = re.compile(rf"</(?:{_TAGS})\s*>")
_BLANK_RUNS = re.compile(r"\n{3,}")


def safe_text(text: str) -> str:
    """`text` as argv and a UTF-8 file can carry it: NULs and lone surrogates become U+FFFD."""
    return _UNSAFE.sub(REPLACEMENT, text)


def to_json(value: Any) -> str:
    """A config file's JSON, which is YAML too: non-ASCII characters as themselves (see the module's
    docstring), but for the few YAML refuses raw, which stay escaped (they can only be inside strings)."""
    return _NOT_YAML.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


def strip_markup(text: str) -> str:
    """The answer without CLI-internal blocks (and their content), then trimmed."""
    cleaned = _STRAY_CLOSE.sub("", _BLOCK.sub("", text))
    if cleaned == text:
        return text.strip()
    return _BLANK_RUNS.sub("\n\n", cleaned).strip()  # the gaps the blocks left

"""JSON without recursion, for Hub answers nested deeper than msgspec's decoder goes.

msgspec (and the standard `json`) decode one nesting level per C call, so an answer holding a reply
chain about 500 deep raises RecursionError. That is a legitimate thread (two agents answering each
other before a limit stopped them), so the client decodes such an answer again here, with an explicit
stack, up to MAX_NESTING levels; `decode` then cuts the comment tree to the depth it keeps. Slower than
msgspec, so only the fallback. Strings go through the standard library's C `scanstring`.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_NESTING = 10_000  # arrays and objects inside each other (a comment level is two)
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}


class DeepJsonError(ValueError):
    """Not JSON, or nested deeper than MAX_NESTING."""


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]  # the pattern matches the empty string


def _string(text: str, i: int) -> tuple[str, int]:
    """The string whose opening quote is at `i`, and the index after its closing quote."""
    try:
        # CPython's own string scanner (json.decoder re-exports _json's); typeshed leaves it out.
        return json.decoder.scanstring(text, i + 1, True)  # type: ignore[attr-defined, no-any-return]
    except ValueError as exc:
        raise DeepJsonError(f"bad string at {i}: {exc.args[0][:80]}") from None


def _scalar(text: str, i: int) -> tuple[Any, int]:
    if text.startswith('"', i):
        return _string(text, i)
    for word, value in _LITERALS.items():
        if text.startswith(word, i):
            return value, i + len(word)
    number = _NUMBER.match(text, i)
    if number is None or number.end() == i:
        raise DeepJsonError(f"unexpected {text[i:i + 1]!r} at {i}")
    is_float = number.group(1) or number.group(2)
    return (float(number.group()) if is_float else int(number.group())), number.end()


def _key(text: str, i: int) -> tuple[str, int]:
    """An object's key and its colon, from `i`; the index of the value."""
    i = _ws(text, i)
    if not text.startswith('"', i):
        raise DeepJsonError(f"expected a key at {i}")
    key, i = _string(text, i)
    i = _ws(text, i)
    if not text.startswith(":", i):
        raise DeepJsonError(f"expected ':' at {i}")
    return key, i + 1


def _open(text: str, i: int, stack: list[list[Any]]) -> tuple[Any, int, bool]:
    """A `{` or `[` at `i`: (the empty container, the index after it, True) when it closes at once, else it
    is pushed on `stack` and the index of its first value is returned with False."""
    if len(stack) >= MAX_NESTING:
        raise DeepJsonError(f"nested deeper than {MAX_NESTING} levels")
    is_object = text[i] == "{"
    container: Any = {} if is_object else []
    i = _ws(text, i + 1)
    if text.startswith("}" if is_object else "]", i):
        return container, i + 1, True
    stack.append([container, None])
    if is_object:
        stack[-1][1], i = _key(text, i)
    return None, i, False


def loads(data: bytes | str) -> Any:
    """Decode JSON with an explicit stack: any depth up to MAX_NESTING, in memory only."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise DeepJsonError("not UTF-8") from None
    stack: list[list[Any]] = []  # [open container, its pending key]
    i = 0
    while True:
        i = _ws(text, i)
        if text.startswith(("{", "["), i):
            value, i, closed = _open(text, i, stack)
            if not closed:
                continue
        else:
            value, i = _scalar(text, i)
        while True:  # attach the value; close every container that ends here
            if not stack:
                if _ws(text, i) != len(text):
                    raise DeepJsonError(f"extra data at {i}")
                return value
            container, key = stack[-1]
            if isinstance(container, list):
                container.append(value)
            else:
                container[key] = value
            i = _ws(text, i)
            if text.startswith(",", i):
                i += 1
                if isinstance(container, dict):
                    stack[-1][1], i = _key(text, i)
                break
            if not text.startswith("]" if isinstance(container, list) else "}", i):
                raise DeepJsonError(f"expected ',' or a closing bracket at {i}")
            stack.pop()
            value, i = container, i + 1

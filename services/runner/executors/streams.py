"""Reading the CLIs' JSON-lines output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def json_lines(raw: bytes) -> Iterator[dict[str, Any]]:
    """Every line that is a JSON object; banners, warnings and partial lines are skipped. A comma around
    one is dropped: a model asked for one object per line may still write them as an array's items."""
    for line in raw.decode("utf-8", "replace").splitlines():
        line = line.strip().strip(",")
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def result_text(content: Any) -> str:
    """A tool result's content as text: a string, or MCP-style blocks (`[{"type": "text", "text": ...}]`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    if isinstance(content, dict):
        return result_text(content.get("content", json.dumps(content)))
    return "" if content is None else json.dumps(content)

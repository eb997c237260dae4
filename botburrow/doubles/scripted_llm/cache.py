"""Prompt caching as the providers document and bill it, so savings can be measured without a real key.

Anthropic (explicit): a request marks up to 4 blocks with `cache_control` (more is a 400). The prompt
is read in the order tools, system, messages, as blocks. At each breakpoint the longest prefix cached
earlier wins: its tokens are `cache_read_input_tokens`, and the entry's TTL is refreshed. The lookup
checks the block boundaries at and before each breakpoint, at most 20 blocks back (as Anthropic's
lookback does), but only entries written before count; entries are written at breakpoints only. Every
breakpoint past the hit whose prefix is at least the model's minimum (1024 tokens; 2048 for Haiku-class
models) is written: the tokens from the hit to the last one written are `cache_creation_input_tokens`.
A shorter prefix is silently not cached. TTL: 5 minutes, or 1 hour for `"ttl": "1h"`; a hit refreshes it.

OpenAI (automatic): the request's tools then messages, as one text. Its prefixes are cached at 1024
tokens and every 128 tokens after; a request reads the longest one cached, reported in
`prompt_tokens_details.cached_tokens` (part of `prompt_tokens`), and caches its own. Entries live 5
minutes, refreshed on hit.

Tokens are the scripted LLM's estimate (`script.estimate_tokens`: about four characters per token), of
each block's canonical JSON (keys sorted, `cache_control` left out). Caches are per provider and model.
Time is `clock()` (injectable: tests move it instead of sleeping).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from botburrow.doubles.scripted_llm.script import estimate_tokens

Clock = Callable[[], float]

TTL_S = 300.0
LONG_TTL_S = 3600.0  # `"ttl": "1h"`
MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
MIN_TOKENS = 1024
MIN_TOKENS_HAIKU = 2048
OPENAI_MIN_TOKENS = 1024
OPENAI_STEP_TOKENS = 128
CHARS_PER_TOKEN = 4  # as `estimate_tokens`
SWEEP_EVERY_PUTS = 10_000


def min_cacheable_tokens(model: str) -> int:
    """Anthropic's minimum cacheable prompt length: 2048 tokens for Haiku-class models, 1024 for the others."""
    return MIN_TOKENS_HAIKU if "haiku" in model.lower() else MIN_TOKENS


@dataclass(frozen=True)
class CacheUsage:
    write_tokens: int = 0
    read_tokens: int = 0


@dataclass(frozen=True)
class Block:
    text: str  # canonical JSON, without cache_control
    tokens: int
    ttl_s: float | None  # a breakpoint's TTL, None: not a breakpoint


def _breakpoint_ttl(item: Any) -> float | None:
    control = item.get("cache_control") if isinstance(item, dict) else None
    if not isinstance(control, dict):
        return None
    return LONG_TTL_S if control.get("ttl") == "1h" else TTL_S


def _block(item: Any, role: str | None = None) -> Block:
    bare = {k: v for k, v in item.items() if k != "cache_control"} if isinstance(item, dict) else item
    text = json.dumps({"role": role, "block": bare} if role else bare, sort_keys=True, ensure_ascii=False)
    return Block(text, estimate_tokens(text), _breakpoint_ttl(item))


def anthropic_blocks(body: dict[str, Any]) -> Iterator[Block]:
    """The request's prompt as Anthropic caches it: tools, then system, then each message's blocks."""
    tools, system, messages = body.get("tools"), body.get("system"), body.get("messages")
    yield from (_block(tool) for tool in (tools if isinstance(tools, list) else []))
    if isinstance(system, str) and system:
        yield _block({"type": "text", "text": system})
    elif isinstance(system, list):
        yield from (_block(part) for part in system)
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            yield from (_block(part, str(role)) for part in content)
        else:
            yield _block({"type": "text", "text": content}, str(role))


def breakpoint_problem(body: dict[str, Any]) -> str | None:
    """Anthropic's 400 for more than 4 `cache_control` blocks, else None."""
    found = sum(1 for block in anthropic_blocks(body) if block.ttl_s is not None)
    if found > MAX_BREAKPOINTS:
        return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
    return None


class PromptCache:
    """Cached prefixes (by hash) with their expiry and TTL; see the module's docstring for the rules."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (expires at, TTL)
        self._puts = 0

    def clear(self) -> None:
        self._entries.clear()

    def _alive(self, key: str) -> bool:
        entry = self._entries.get(key)
        if entry is not None and entry[0] <= self.clock():
            del self._entries[key]
            return False
        return entry is not None

    def _put(self, key: str, ttl_s: float) -> None:
        now_s = self.clock()
        self._entries[key] = (now_s + ttl_s, ttl_s)
        self._puts += 1
        if self._puts % SWEEP_EVERY_PUTS == 0:  # a long soak must not keep every prefix it ever saw
            self._entries = {k: entry for k, entry in self._entries.items() if entry[0] > now_s}

    def _refresh(self, key: str) -> None:
        self._put(key, self._entries[key][1])

    def anthropic(self, model: str, body: dict[str, Any]) -> CacheUsage:
        blocks = list(anthropic_blocks(body))
        keys, ends, hasher, total = [], [], hashlib.sha256(f"anthropic\0{model}".encode()), 0
        for block in blocks:
            hasher.update(block.text.encode() + b"\0")
            keys.append(hasher.hexdigest())
            total += block.tokens
            ends.append(total)
        breakpoints = [i for i, block in enumerate(blocks) if block.ttl_s is not None]
        hit = -1
        for point in breakpoints:
            for index in range(point, max(-1, point - LOOKBACK_BLOCKS), -1):
                if index > hit and self._alive(keys[index]):
                    hit = index
                    break
        read = ends[hit] if hit >= 0 else 0
        if hit >= 0:
            self._refresh(keys[hit])
        written = hit
        for point in breakpoints:
            ttl_s = blocks[point].ttl_s
            if point > hit and ttl_s is not None and ends[point] >= min_cacheable_tokens(model):
                self._put(keys[point], ttl_s)
                written = point
        return CacheUsage(write_tokens=ends[written] - read if written > hit else 0, read_tokens=read)

    def openai(self, model: str, body: dict[str, Any]) -> CacheUsage:
        tools, messages = body.get("tools"), body.get("messages")
        text = "".join(json.dumps(part, sort_keys=True, ensure_ascii=False) + "\n"
                       for part in [*(tools if isinstance(tools, list) else []),
                                    *(messages if isinstance(messages, list) else [])])
        hasher = hashlib.sha256(f"openai\0{model}".encode())
        done, cached, keys = 0, 0, []
        for tokens in range(OPENAI_MIN_TOKENS, len(text) // CHARS_PER_TOKEN + 1, OPENAI_STEP_TOKENS):
            end = tokens * CHARS_PER_TOKEN
            hasher.update(text[done:end].encode())
            done = end
            key = hasher.hexdigest()
            keys.append(key)
            if self._alive(key):
                cached = tokens
        for key in keys:
            self._put(key, TTL_S)  # cached now, or its TTL refreshed by this hit
        return CacheUsage(read_tokens=cached)

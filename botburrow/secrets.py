"""Secrets (contract §3): read from `SECRETS_DIR/<name>`, else from an environment variable; redacted by value.

Every secret value this process reads is remembered, and `redact()` replaces each occurrence in a
string with `[REDACTED:<name>]`. Logs, run events, DLQ reasons and error messages pass through it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Secret name -> the environment variable that may hold it instead of a file.
ENV_FALLBACK = {
    "hub-api-key": "HUB_API_KEY",
    "anthropic-api-key": "ANTHROPIC_API_KEY",
    "openai-api-key": "OPENAI_API_KEY",
    "github-pat": "GITHUB_PERSONAL_ACCESS_TOKEN",
    "brave-api-key": "BRAVE_API_KEY",
    "r2-access-key": "R2_ACCESS_KEY",
    "r2-secret-key": "R2_SECRET_KEY",
    "memory-access-key": "MEMORY_ACCESS_KEY",  # the runner's memory token (MEMORY_STORE), scoped to memory/
    "memory-secret-key": "MEMORY_SECRET_KEY",
    "memory-embeddings-key": "MEMORY_EMBEDDINGS_KEY",  # MEMORY_EMBEDDINGS_URL's key, if it needs one
}
# Values shorter than this are not redacted: they would mangle ordinary text and are not real secrets.
MIN_REDACT_LENGTH = 6

_lock = threading.Lock()
_known: dict[str, str] = {}
_pattern: re.Pattern[str] | None = None
_END = ""  # the trie key that marks the end of a value (never a character of one)


def env_name_to_secret(env_name: str) -> str:
    """`OPENAI_API_KEY` -> `openai-api-key` (the kebab-case of a `brain.api_key_env`)."""
    return env_name.lower().replace("_", "-")


def remember(name: str, value: str) -> None:
    """Register a secret value so that `redact` removes it everywhere from now on."""
    global _pattern
    if len(value) < MIN_REDACT_LENGTH:
        return
    with _lock:
        if _known.get(value) == name:
            return
        _known[value] = name
        # Compiled on the next `redact`, not here: registering N secrets one by one (a thousand agent keys
        # at start) would otherwise compile N patterns of up to N alternatives, O(N^2): 45 CPU s for 1,000.
        _pattern = None


def _current_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _known:
            try:
                _pattern = re.compile(_trie_regex(_known))
            except RecursionError:  # values nested hundreds deep (a, aa, aaa...): the slow, flat form
                _pattern = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))
        return _pattern


def _trie_regex(values: Iterable[str]) -> str:
    """One regex for all `values`, shaped as their trie (`bb_(?:k1|x(?:9|y))`-like), longest match first.

    `re` tries an alternation's branches one after another at every position of the text: a thousand
    agent keys as `key1|key2|...` cost 3 ms per 2 KB log line. As a trie each position costs about one
    branch. Chains without a fork become one literal, so the nesting is only as deep as the forks."""
    trie: dict[str, Any] = {}
    for value in values:
        node = trie
        for char in value:
            node = node.setdefault(char, {})
        node[_END] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = []
        for char, child in sorted((c, n) for c, n in node.items() if c != _END):
            literal = char
            while len(child) == 1 and _END not in child:  # a chain: no fork, no value ends inside it
                (char, child), = child.items()
                literal += char
            branches.append(re.escape(literal) + emit(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # A value may end here: the rest is optional, and greedy, so a longer secret wins over its prefix.
        return f"(?:{body})?" if _END in node else body

    return emit(trie)


def redact(text: str) -> str:
    if not text:
        return text
    pattern = _pattern or _current_pattern()
    if pattern is None:
        return text
    return pattern.sub(lambda m: f"[REDACTED:{_known.get(m.group(0), 'secret')}]", text)


def read_secret(name: str, env_name: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret `name` from SECRETS_DIR, else from its environment variable; None if neither has it."""
    env = os.environ if environ is None else environ
    secrets_dir = env.get("SECRETS_DIR")
    value: str | None = None
    if secrets_dir:
        path = Path(secrets_dir) / name
        if path.is_file():
            value = path.read_text().strip()
    if value is None:
        value = env.get(env_name or ENV_FALLBACK.get(name, name.upper().replace("-", "_"))) or None
    if value:
        remember(name, value)
    return value


class AgentKeys:
    """Agent Hub keys: `AGENT_KEYS_DIR/<agent name>` files, else the `BOTBURROW_AGENT_KEYS` JSON object."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._dir = Path(env["AGENT_KEYS_DIR"]) if env.get("AGENT_KEYS_DIR") else None
        self._inline: dict[str, str] = {}
        if env.get("BOTBURROW_AGENT_KEYS"):
            try:
                self._inline = dict(json.loads(env["BOTBURROW_AGENT_KEYS"]))
            except (ValueError, TypeError) as exc:
                raise SystemExit(f"BOTBURROW_AGENT_KEYS is not a JSON object of name -> key: {exc}") from None
        for agent, key in self._inline.items():
            remember(f"agent-key:{agent}", key)

    def get(self, agent: str) -> str | None:
        if self._dir is not None:
            path = self._dir / agent
            if path.is_file():
                key = path.read_text().strip()
                remember(f"agent-key:{agent}", key)
                return key
        return self._inline.get(agent)


def remember_all(environ: Mapping[str, str] | None = None) -> int:
    """Register every secret this process could ever see, so each is redacted even before (or without)
    being read: every file in SECRETS_DIR and AGENT_KEYS_DIR, the known secret variables, and the
    inline agent keys. Returns how many values were registered."""
    env = os.environ if environ is None else environ
    count = 0
    for folder_var, prefix in (("SECRETS_DIR", ""), ("AGENT_KEYS_DIR", "agent-key:")):
        folder = env.get(folder_var)
        if folder and Path(folder).is_dir():
            for path in Path(folder).iterdir():
                if path.is_file() and not path.name.startswith("."):
                    remember(prefix + path.name, path.read_text().strip())
                    count += 1
    for name, var in ENV_FALLBACK.items():
        if env.get(var):
            remember(name, env[var])
            count += 1
    if env.get("BOTBURROW_AGENT_KEYS"):
        count += len(AgentKeys(env)._inline)
    for password in url_passwords(env.get("NATS_URL", "")):
        remember("nats-password", password)
        count += 1
    return count


def url_passwords(urls: str) -> list[str]:
    """The passwords in a comma-separated list of URLs (`nats://user:password@host`)."""
    return [password for url in urls.split(",") if (password := urlsplit(url.strip()).password)]


def without_credentials(urls: str) -> str:
    """A comma-separated list of URLs fit to print: any `user:password@` is dropped."""
    shown = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        shown.append(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
    return ",".join(shown)

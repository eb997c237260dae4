"""Redaction by value: every remembered secret is replaced wherever it appears, also one remembered after
the last redaction (the pattern is rebuilt lazily), and a longer secret wins over one it contains."""

from __future__ import annotations

import secrets as stdlib_secrets

from botburrow.secrets import redact, remember


def test_thousands_of_keys_then_one_more_are_all_redacted() -> None:
    keys = [f"agent-key-{i}-{stdlib_secrets.token_hex(8)}" for i in range(3000)]
    for i, key in enumerate(keys):
        remember(f"agent-key:a{i}", key)
    assert redact(f"x {keys[0]} y {keys[-1]} z") == "x [REDACTED:agent-key:a0] y [REDACTED:agent-key:a2999] z"
    late = f"late-{stdlib_secrets.token_hex(8)}"
    assert redact(late) == late  # not a secret yet
    remember("late", late)
    assert redact(f"now {late}") == "now [REDACTED:late]"


def test_the_longest_secret_wins() -> None:
    short = f"tok-{stdlib_secrets.token_hex(6)}"
    remember("short", short)
    remember("long", short + "-extended")
    assert redact(f"{short}-extended and {short}") == "[REDACTED:long] and [REDACTED:short]"

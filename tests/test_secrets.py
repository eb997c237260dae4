"""Redaction by value: every remembered secret is replaced wherever it appears, also one remembered after
the last redaction (the pattern is rebuilt lazily), and a longer secret wins over one it contains."""

from __future__ import annotations

import secrets as stdlib_secrets
import subprocess
import sys
from pathlib import Path

import pytest

from botburrow import secrets as secrets_module
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


def test_keys_sharing_no_prefix_multiline_and_deeply_nested_values_are_redacted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Random keys (the pattern is a trie: nothing in common to scan for), a PEM-like value with newlines,
    # and values each the prefix of the next (nesting deeper than the trie form allows). On a registry of
    # its own: the slow flat pattern these values force must not stay behind for later tests.
    monkeypatch.setattr(secrets_module, "_known", {})
    monkeypatch.setattr(secrets_module, "_pattern", None)
    keys = [stdlib_secrets.token_urlsafe(24) for _ in range(500)]
    for i, key in enumerate(keys):
        remember(f"random:{i}", key)
    pem = "-----BEGIN KEY-----\n" + "\n".join(stdlib_secrets.token_hex(32) for _ in range(30)) + "\n-----END KEY-----"
    remember("pem", pem)
    text = f"a {keys[7]}b {pem} c{keys[499]}"
    assert redact(text) == "a [REDACTED:random:7]b [REDACTED:pem] c[REDACTED:random:499]"
    nested = "q" * 6 + stdlib_secrets.token_hex(4)
    for length in range(6, 1100):
        remember(f"nested:{length}", (nested * 200)[:length])
    assert redact(f"<{(nested * 200)[:1050]}>") == "<[REDACTED:nested:1050]>"
    assert redact(f"{keys[0]}") == "[REDACTED:random:0]"


def test_a_nats_password_in_nats_url_is_redacted_and_never_printed_by_the_cli() -> None:
    password = f"natspw-{stdlib_secrets.token_hex(8)}"
    urls = f"nats://runner:{password}@127.0.0.1:4222, nats://runner:{password}@127.0.0.2:4222"
    secrets_module.remember_all({"NATS_URL": urls})
    assert password not in redact(f"connecting to {urls}")
    shown = secrets_module.without_credentials(urls)
    assert password not in shown and "runner" not in shown
    assert shown == "nats://127.0.0.1:4222,nats://127.0.0.2:4222"


def test_the_cli_names_an_unreachable_nats_without_its_password(tmp_path: Path) -> None:
    password = f"natspw-{stdlib_secrets.token_hex(8)}"
    env = {"PATH": "/usr/bin:/bin", "NATS_URL": f"nats://operator:{password}@127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "botburrow", "dlq", "ls"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert "NATS_URL" in done.stderr and "tried nats://127.0.0.1:1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert password not in done.stderr + done.stdout

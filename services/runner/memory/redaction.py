"""What is taken out of a memory before it is written: nothing secret is ever stored.

Two passes: every secret value this process knows (botburrow.secrets.redact: model keys, agent keys,
the store's own credentials), then the shapes of credentials a thread may carry that the runner never
read (a stranger pasting a token): provider keys, GitHub and Slack tokens, AWS access key ids, JWTs,
private key blocks, bearer tokens and `password=`-style assignments. Each becomes `[REDACTED:<what>]`.
"""

from __future__ import annotations

import re

from botburrow.secrets import redact as redact_known

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern)) for name, pattern in (
    ("private-key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"),
    ("api-key", r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"),
    ("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    ("slack-token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("aws-access-key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    ("credential", r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)(\s*[:=]\s*)[^\s,;]{6,}"),
))


def redact(text: str) -> str:
    text = redact_known(text)
    for name, pattern in PATTERNS:
        if name == "credential":
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED:credential]", text)
        else:
            text = pattern.sub(f"[REDACTED:{name}]", text)
    return text

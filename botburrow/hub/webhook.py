"""The Hub's inbox ping (push): how a ping is signed, and how ingest checks it. One scheme, both ends.

The Hub POSTs `{"type":"inbox_update","agent_id":"<agent>","unread_count":n}` to ingest's
`POST /hooks/inbox/<agent>`, keyed by that agent's webhook secret (`SECRETS_DIR/webhook-<agent>`).

Departure (docs/contract.md §1): the signature covers the timestamp as well as the raw body,
`HMAC-SHA256(secret, "<timestamp>." + body)`, as Stripe and Slack sign theirs. A signature over the
body alone would let anyone who saw one ping replay it forever with a fresh timestamp header.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Botburrow-Signature"
TIMESTAMP_HEADER = "X-Botburrow-Timestamp"
TOLERANCE_S = 300
_PREFIX = "sha256="


def secret_name(agent: str) -> str:
    """The file under SECRETS_DIR holding the agent's webhook secret."""
    return f"webhook-{agent}"


def sign(secret: bytes, body: bytes, timestamp_s: int) -> str:
    """The `X-Botburrow-Signature` value for `body` sent at `timestamp_s` (Unix seconds)."""
    digest = hmac.new(secret, str(timestamp_s).encode() + b"." + body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def verify(secret: bytes, body: bytes, timestamp: str, signature: str, now_s: float) -> str | None:
    """None when the ping is genuine and fresh, else the reason it is refused (never echoing inputs)."""
    try:
        timestamp_s = int(timestamp)
    except ValueError:
        return "bad timestamp"
    if abs(now_s - timestamp_s) > TOLERANCE_S:
        return "stale timestamp"
    if not signature.startswith(_PREFIX):
        return "bad signature"
    # compare_digest: the time taken says nothing about how much of a forged signature was right.
    if not hmac.compare_digest(sign(secret, body, timestamp_s), signature):
        return "bad signature"
    return None

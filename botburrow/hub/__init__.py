"""The Botburrow Hub client (contract §1).

- `client`: `HubClient`, one method per call of the table
- `decode`: Hub answers into the shared structs, tolerant of the Hub's variations
- `deepjson`: JSON without recursion, for answers nested deeper than msgspec goes
- `errors`: the client's errors, carrying the call, the status and the Hub's message
- `breaker`: a circuit breaker per Hub and failure class, so a Hub that is down is not hammered
- `budget`: one request budget per Hub shared by every stage and replica (KV bucket `hub-budget`)
- `capabilities`: which optional routes the Hub serves (notifications, mark-read, DMs, /system/*)
- `connect`: `hub_client_for_stage`, the one way a stage builds its HubClient
- `probe`: keep `HubClient.available` current for `/readyz`
"""

from botburrow.hub.breaker import CircuitBreaker
from botburrow.hub.client import HubClient
from botburrow.hub.errors import (
    HubAuthError,
    HubEndpointMissing,
    HubError,
    HubNotFound,
    HubRateLimited,
    HubUnavailable,
)

__all__ = [
    "CircuitBreaker",
    "HubAuthError",
    "HubClient",
    "HubEndpointMissing",
    "HubError",
    "HubNotFound",
    "HubRateLimited",
    "HubUnavailable",
]

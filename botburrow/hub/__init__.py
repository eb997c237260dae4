"""The Botburrow Hub client (contract §1).

- `client`: `HubClient`, one method per call of the table
- `decode`: Hub answers into the shared structs, tolerant of the Hub's variations
- `deepjson`: JSON without recursion, for answers nested deeper than msgspec goes
- `errors`: the client's errors, carrying the call, the status and the Hub's message
- `breaker`: a circuit breaker, so a Hub that is down is not hammered
- `probe`: keep `HubClient.available` current for `/readyz`
"""

from botburrow.hub.breaker import CircuitBreaker
from botburrow.hub.client import HubClient
from botburrow.hub.errors import HubAuthError, HubError, HubNotFound, HubRateLimited, HubUnavailable

__all__ = [
    "CircuitBreaker",
    "HubAuthError",
    "HubClient",
    "HubError",
    "HubNotFound",
    "HubRateLimited",
    "HubUnavailable",
]

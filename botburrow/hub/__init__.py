"""The Botburrow Hub client (SPEC §1)."""

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

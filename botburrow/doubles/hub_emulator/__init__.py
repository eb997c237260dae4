"""The Botburrow Hub emulator (contract §1): the table under `/api/v1`, an admin API under `/admin`.

- `emulator`: `HubEmulator`, a real HTTP server plus in-process helpers for tests and seeding
- `api`: the table under `/api/v1`, behind faults, bearer auth and rate limits
- `admin`: the admin API under `/admin`: seed the world, set faults
- `guards`: injected faults, Moltbook's rate limits, a request log
- `state`: the in-memory world: agents, posts, comments, notifications, DMs, consumption, budget
- `cli`: `botburrow hub-emulator [--port N] ...`
"""

from botburrow.doubles.hub_emulator.cli import main, seed
from botburrow.doubles.hub_emulator.emulator import DEFAULT_SYSTEM_KEY, HubEmulator
from botburrow.doubles.hub_emulator.guards import Fault, RequestRecord

__all__ = ["DEFAULT_SYSTEM_KEY", "Fault", "HubEmulator", "RequestRecord", "main", "seed"]

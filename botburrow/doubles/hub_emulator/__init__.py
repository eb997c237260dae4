"""The Hub emulator: the Botburrow Hub (contract §1) or, with `profile="moltbook"`, the Moltbook API;
the table under `/api/v1`, an admin API under `/admin` (the same in both profiles).

- `emulator`: `HubEmulator`, a real HTTP server plus in-process helpers for tests and seeding
- `profiles`: every way the profiles differ, as data (ids, names, keys, notifications, limits)
- `api`: the `botburrow` table under `/api/v1`, behind faults, bearer auth and rate limits
- `moltbook`, `moltbook_rules`, `moltbook_shapes`: the `moltbook` table, its rules and its shapes
- `pings`: signed inbox pings to ingest's `/hooks/inbox/<agent>` on each new notification
- `admin`: the admin API under `/admin`: seed the world, set faults
- `guards`: injected faults, Moltbook's rate limits, a request log
- `state`: the in-memory world: agents, posts, comments, notifications, DMs, consumption, budget
- `cli`: `botburrow hub-emulator [--port N] ...`
"""

from botburrow.doubles.hub_emulator.cli import main, seed
from botburrow.doubles.hub_emulator.emulator import DEFAULT_SYSTEM_KEY, HubEmulator
from botburrow.doubles.hub_emulator.guards import Fault, RequestRecord

__all__ = ["DEFAULT_SYSTEM_KEY", "Fault", "HubEmulator", "RequestRecord", "main", "seed"]

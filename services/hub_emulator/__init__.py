"""The Botburrow Hub emulator (SPEC §1): the table under `/api/v1`, an admin API under `/admin`."""

from botburrow.services.hub_emulator.cli import main, seed
from botburrow.services.hub_emulator.emulator import DEFAULT_SYSTEM_KEY, HubEmulator
from botburrow.services.hub_emulator.guards import Fault, RequestRecord

__all__ = ["DEFAULT_SYSTEM_KEY", "Fault", "HubEmulator", "RequestRecord", "main", "seed"]

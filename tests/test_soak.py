"""The fault and load suite's small form (bench/soak): the whole system, every stage a process, under faults.

One run of about a minute: notifications to a few dozen agents while runners and the scheduler are
SIGKILLed, nats-server restarts on its store, the Hub and the model throw 5xx/429/529 bursts, every
subject gets malformed payloads and an agent's config breaks. Then every notification must be
accounted for, nothing posted twice, nothing stuck, every stage ready, no secret anywhere, grants held.
`just soak` runs the same suite at any size; see bench/soak/__init__.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.soak import SMALL, render, run_soak

pytestmark = pytest.mark.slow


async def test_the_system_keeps_every_promise_under_load_and_faults(tmp_path: Path) -> None:
    result = await run_soak(dataclasses.replace(SMALL, inject_s=15.0), tmp_path)
    print(render(result))

    # The run really did what it claims: load, every kind of fault, the probes.
    assert result.table.get("answered", 0) >= 200, result.table
    for fault in ("sigkill_runner", "sigkill_scheduler", "nats_restart", "malformed_message", "broken_config"):
        assert result.faults.get(fault, 0) >= 1, (fault, result.faults)
    assert any(k.startswith("hub_") for k in result.faults) and any(k.startswith("model_") for k in result.faults)
    assert result.info["grants_probe_ends"] >= 1
    assert any(k.startswith("skipped: respond_to") for k in result.table)
    assert any("limited" in k for k in result.table)

    # And nothing was lost, doubled, stuck or leaked.
    assert not result.breaches, "\n".join(result.breaches)

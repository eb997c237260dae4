"""The fault and load suite (`just soak`): the whole system under load while things break.

Every stage runs as its own process (several runners, two schedulers sharing the partitions) against
the Hub emulator and the scripted LLM in demo mode with random latency. While notifications flow,
the soak SIGKILLs runners and schedulers (and restarts them), restarts
nats-server on the same store, bursts Hub 5xx/429 and model 429/529 errors, publishes malformed
payloads on every subject and breaks an agent's config. Then it accounts for every notification
(answered exactly once, skipped with a reason, failed with a reason, or dead-lettered), checks that
nothing was posted twice, that every ended activation reached the Hub as one consumption event, that
no consumer or lease is stuck and every stage is ready again, and that no planted secret reached the
Hub, the events, the logs or the model, and that grants hold whatever the model asks.

    python -m bench.soak            # small (about a minute)
    python -m bench.soak --full     # 1,000 agents, 20,000 notifications
    python -m bench soak            # the small form through the bench runner

Results go to bench/results/soak.json; the exit status is 1 on any breach.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.soak.run import Soak, SoakResult
from bench.soak.world import FULL, SMALL, SoakConfig

__all__ = ["FULL", "SMALL", "SoakConfig", "SoakResult", "main", "run_soak"]


async def run_soak(config: SoakConfig, work_dir: Path | None = None,
                   progress: Callable[[str], None] = lambda line: None) -> SoakResult:
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="botburrow-soak-"))
    return await Soak(config, work_dir, progress).run()


def render(result: SoakResult) -> str:
    width = max((len(k) for k in result.table), default=10)
    lines = ["disposition of every notification sent:"]
    lines += [f"  {what:<{width}}  {count:>7}" for what, count in result.table.items()]
    lines.append(f"faults: {result.faults}")
    lines.append(f"recovery (s): {result.recovery_s}")
    lines.append(f"throughput: {result.throughput}")
    lines.append(f"latency notification -> answer on the Hub (s): {result.latency_s}")
    lines.append(f"checks: {result.info}")
    if result.breaches:
        lines.append(f"BREACHES ({len(result.breaches)}):")
        lines += [f"  - {b}" for b in result.breaches[:50]]
        if len(result.breaches) > 50:
            lines.append(f"  ... and {len(result.breaches) - 50} more (see the results file)")
    else:
        lines.append("no breach: every promise held")
    return "\n".join(lines)


async def main(results_dir: Path) -> dict[str, Any]:
    """The bench runner's entry point (`python -m bench soak`): the small form."""
    result = await run_soak(SMALL, progress=lambda line: print(f"soak | {line}", flush=True))
    print(render(result), flush=True)
    return result.as_json()

"""The scheduler and runner pool at 1 million agents, simulated from measured costs (docs/scaling.md).

`python -m bench scaling` (or `python -m bench.scaling --agents 1000000 --mentions-per-agent-day 20`).
Inputs are the per-message costs this machine measured (bench/results/scheduler.json, runner.json,
cluster.json when present: the R3/R1 ratio) and a load (agents, notifications per agent per day, the
peak-to-mean factor, how long an activation's model and tools take). It gives replicas per stage:

- scheduler: CPU per notification and per request, plus the tick (its cost measured at 100,000 agents,
  scaled linearly), at `TARGET_UTILISATION` of a core per pod; capped by the partition count, which is
  therefore what to raise first;
- runner: a discrete-event simulation of the peak: Poisson arrivals of activations, each holding one of
  `RUNNER_CONCURRENCY` slots of a pod for a log-normal duration (mean `activation_s`) plus the measured
  runner overhead; the smallest pool whose queue wait stays under `max_wait_s` at p99;
- metrics (one RUNS ending per activation) and the NATS traffic (messages and bytes per second per stream).

The numbers assume the measured costs hold at scale (same Python, same message sizes); see docs/scaling.md
for what does not scale linearly (ingest polling, the per-agent tick).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
TARGET_UTILISATION = 0.6
MAX_SLOT_UTILISATION = 0.95
SCHEDULER_PARTITIONS = 16
DAY_S = 86_400
# Events per activation on RUNS (started, llm, posted, completed plus about two tool or llm turns), and sizes.
RUN_EVENTS_PER_ACTIVATION = 6
EVENT_BYTES = 600
NOTIFICATIONS_PER_ACTIVATION = 1.3  # several notifications of one agent coalesce into one activation


@dataclass(frozen=True)
class Load:
    agents: int = 1_000_000
    mentions_per_agent_day: float = 20.0
    peak_factor: float = 3.0
    activation_s: float = 20.0  # model and tools, mean
    runner_concurrency: int = 8
    max_wait_s: float = 5.0
    tick_s: float = 1.0
    simulated_s: float = 900.0
    seed: int = 20


@dataclass(frozen=True)
class Costs:
    """Per-message costs measured on this machine (milliseconds of one core), from bench/results."""

    scheduler_ms_per_notification: float
    scheduler_ms_per_request: float
    tick_ms_per_100k_agents: float
    scheduler_kib_per_agent: float
    runner_overhead_ms: float
    runner_kib_per_activation: float
    metrics_ms_per_ending: float
    replication_cost: float  # R3 throughput / R1 throughput (1.0 when not measured)

    @classmethod
    def measured(cls, results: Path = RESULTS) -> Costs:
        sched = json.loads((results / "scheduler.json").read_text())
        runner = json.loads((results / "runner.json").read_text())
        runner = runner.get("current", runner)  # the tree measured beside its baseline (bench/runner.py)
        ratio = 1.0
        if (results / "cluster.json").is_file():
            ratio = json.loads((results / "cluster.json").read_text())["r3_over_r1"]["scheduler_throughput"]
        return cls(
            scheduler_ms_per_notification=sched["scheduler_cpu_ms_per_notification"],
            scheduler_ms_per_request=sched["latency_at_1000_per_s_scheduler_cpu_ms_per_request"],
            # A tick that finds 5,000 agents due among 100,000: the busy case, taken as the steady one.
            tick_ms_per_100k_agents=sched["tick_5000_due_ms"],
            scheduler_kib_per_agent=sched["scale_rss_kib_per_agent"],
            runner_overhead_ms=runner["overhead"]["started_to_posted_minus_model_ms"]["mean"],
            runner_kib_per_activation=runner["concurrency"]["rss_per_activation_kib"],
            # Metrics reads RUNS endings with the same worker and batches as the scheduler's notifications.
            metrics_ms_per_ending=sched["scheduler_cpu_ms_per_notification"],
            replication_cost=ratio)


def scheduler_pods(load: Load, costs: Costs, peak_notifications_per_s: float) -> dict[str, Any]:
    requests_per_s = peak_notifications_per_s / NOTIFICATIONS_PER_ACTIVATION
    cpu_ms_per_s = (peak_notifications_per_s * costs.scheduler_ms_per_notification
                    + requests_per_s * costs.scheduler_ms_per_request) / costs.replication_cost
    cpu_ms_per_s += costs.tick_ms_per_100k_agents * (load.agents / 100_000) / load.tick_s
    cores = cpu_ms_per_s / 1000
    pods = max(1, math.ceil(cores / TARGET_UTILISATION))
    return {"cores": round(cores, 2), "pods": min(pods, SCHEDULER_PARTITIONS), "pods_wanted": pods,
            "capped_by_partitions": pods > SCHEDULER_PARTITIONS,
            "memory_mib_total": round(load.agents * costs.scheduler_kib_per_agent / 1024)}


def simulate_runners(load: Load, costs: Costs, activations_per_s: float, pods: int) -> dict[str, float]:
    """Queue waits of a pool of `pods` x `runner_concurrency` slots under Poisson arrivals (FIFO)."""
    rng = random.Random(load.seed)
    sigma = 0.8  # log-normal spread of activation time: a few long tool runs in many short ones
    mu = math.log(load.activation_s) - sigma**2 / 2
    # Started in the steady state, not empty: the slots Little's law says are busy hold a run part-way
    # through (an empty pool would hide a queue that only builds after the first activation times).
    busy = activations_per_s * load.activation_s
    slots = [rng.uniform(0, 1) * rng.lognormvariate(mu, sigma) if i < busy else 0.0
             for i in range(pods * load.runner_concurrency)]
    heapq.heapify(slots)  # when each slot is free next
    now, waits = 0.0, []
    while now < load.simulated_s:
        now += rng.expovariate(activations_per_s)
        free_at = heapq.heappop(slots)
        start = max(now, free_at)
        waits.append(start - now)
        heapq.heappush(slots, start + rng.lognormvariate(mu, sigma) + costs.runner_overhead_ms / 1000)
    waits.sort()
    return {"p50_wait_s": round(waits[len(waits) // 2], 2), "p99_wait_s": round(waits[int(len(waits) * 0.99)], 2),
            "activations": len(waits)}


def runner_pods(load: Load, costs: Costs, activations_per_s: float) -> dict[str, Any]:
    """The smallest pool whose p99 wait is under `max_wait_s` (Little's law gives the start)."""
    busy = activations_per_s * load.activation_s
    # Never above MAX_SLOT_UTILISATION: at 100 % a queue grows without bound in the long run, which a
    # simulation of minutes can miss.
    pods = max(1, math.ceil(busy / load.runner_concurrency / MAX_SLOT_UTILISATION))
    while True:
        sim = simulate_runners(load, costs, activations_per_s, pods)
        if sim["p99_wait_s"] <= load.max_wait_s:
            return {"busy_slots_mean": round(busy), "pods": pods, "slots": pods * load.runner_concurrency,
                    "memory_mib_per_pod_runner_only": round(load.runner_concurrency * costs.runner_kib_per_activation
                                                            / 1024 + 150), **sim}
        pods = math.ceil(pods * 1.02) if pods > 50 else pods + 1


def plan(load: Load, costs: Costs) -> dict[str, Any]:
    mean_notifications_per_s = load.agents * load.mentions_per_agent_day / DAY_S
    peak_notifications_per_s = mean_notifications_per_s * load.peak_factor
    activations_per_s = peak_notifications_per_s / NOTIFICATIONS_PER_ACTIVATION
    metrics_cores = activations_per_s * costs.metrics_ms_per_ending / 1000 / costs.replication_cost
    return {
        "load": asdict(load), "costs": asdict(costs),
        "peak_notifications_per_s": round(peak_notifications_per_s, 1),
        "peak_activations_per_s": round(activations_per_s, 1),
        "scheduler": scheduler_pods(load, costs, peak_notifications_per_s),
        "runner": runner_pods(load, costs, activations_per_s),
        "metrics": {"cores": round(metrics_cores, 3), "pods": max(1, math.ceil(metrics_cores / TARGET_UTILISATION))},
        "nats": {"messages_per_s": round(peak_notifications_per_s * 2 + activations_per_s
                                         * (1 + RUN_EVENTS_PER_ACTIVATION + 3)),
                 "runs_bytes_per_s": round(activations_per_s * RUN_EVENTS_PER_ACTIVATION * EVENT_BYTES),
                 "runs_gib_per_30_days_r3": round(activations_per_s / load.peak_factor * RUN_EVENTS_PER_ACTIVATION
                                                  * EVENT_BYTES * 30 * DAY_S * 3 / 2**30)},
    }


async def main(results_dir: Path) -> dict[str, Any]:
    """The bench runner's entry point: the default load at 100,000 and 1,000,000 agents."""
    costs = Costs.measured(results_dir)
    return {f"agents_{n}": plan(Load(agents=n), costs) for n in (100_000, 1_000_000)}


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    for name, default in asdict(Load()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    print(json.dumps(plan(Load(**vars(args)), Costs.measured()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))

"""`python -m bench.soak [--full] [--agents N] [--notifications M] ...`: run, print, write, exit 1 on a breach."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from bench.soak import FULL, SMALL, SoakConfig, render, run_soak
from bench.soak.world import CLUSTER

RESULTS = Path(__file__).resolve().parent.parent / "results" / "soak.json"
CLUSTER_RESULTS = RESULTS.with_name("soak-cluster.json")


def parse(argv: list[str]) -> tuple[argparse.Namespace, SoakConfig]:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--full", action="store_true", help="1,000 agents, 20,000 notifications (default: small)")
    parser.add_argument("--cluster", action="store_true",
                        help="three clustered nats-servers at R3, with the cluster faults (bench/soak/cluster.py)")
    for name in ("agents", "notifications", "runners", "schedulers", "seed"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--inject-s", type=float, help="seconds over which notifications are sent")
    parser.add_argument("--work-dir", type=Path, help="keep everything (logs, store) here")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args(argv)
    config = FULL if args.full else CLUSTER if args.cluster else SMALL
    if args.cluster and args.full:
        config = dataclasses.replace(FULL, cluster=CLUSTER.cluster, nats_restarts=0)
    args.results = args.results or (CLUSTER_RESULTS if args.cluster else RESULTS)
    chosen = {k: v for k, v in vars(args).items()
              if k in ("agents", "notifications", "runners", "schedulers", "seed", "inject_s") and v is not None}
    return args, dataclasses.replace(config, **chosen)


def main(argv: list[str]) -> int:
    args, config = parse(argv)
    for package in ("botburrow", "schemas", "streams", "services"):
        logging.getLogger(package).setLevel(logging.ERROR)
    started = time.monotonic()
    result = asyncio.run(run_soak(config, args.work_dir, progress=lambda line: print(f"soak | {line}", flush=True)))
    print(render(result), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": "soak", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "wall_s": round(time.monotonic() - started, 2), **result.as_json()}
    args.results.write_text(json.dumps(document, indent=2) + "\n")
    print(f"soak | results in {args.results}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

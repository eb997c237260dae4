"""Run the benchmarks: `python -m bench` (all) or `python -m bench scheduler runner`."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    chosen = argv or names()
    unknown = set(chosen) - set(names())
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(names())}", file=sys.stderr)
        return 2
    RESULTS_DIR.mkdir(exist_ok=True)
    for name in chosen:
        print(f"bench | {name}: running", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        result = asyncio.run(module.main(RESULTS_DIR))
        result = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "wall_s": round(time.monotonic() - started, 2), **result}
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"bench | {name}: {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

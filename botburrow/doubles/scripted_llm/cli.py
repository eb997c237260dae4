"""Run the scripted LLM alone: `python -m botburrow.doubles.scripted_llm --port 8700 --script s.yaml`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from botburrow import logs
from botburrow.doubles.scripted_llm.server import ScriptedLLM


def read_script_file(path: Path) -> Any:
    """A script document from a JSON or YAML file (YAML is a superset of JSON, but JSON errors read better)."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripted-llm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--script", type=Path, help="script file, JSON or YAML")
    parser.add_argument("--demo", action="store_true", help="not strict: answer politely once out of steps")
    return parser


async def _run(llm: ScriptedLLM, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await llm.start(host, port)
    # The URL alone on stdout, so a wrapper can read it.
    print(llm.url, flush=True)
    try:
        await stop.wait()
    finally:
        await llm.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup("scripted-llm")
    llm = ScriptedLLM(strict=not args.demo)
    if args.script is not None:
        try:
            llm.load(read_script_file(args.script))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"scripted-llm: cannot load {args.script}: {exc}", file=sys.stderr)
            return 2
    asyncio.run(_run(llm, args.host, args.port))
    return 0

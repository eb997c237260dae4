"""Arize Phoenix for `botburrow dev --traces` (issue 21): a local trace view, loopback only, SQLite.

Phoenix lives in its own virtual environment, tools/phoenix/.venv (./setup.sh puts it there: it pins
`anthropic<2`, which ours cannot share). It is started as a process of its own (own session, killed
with its group), its database and files in the stack's work directory, its OTLP/HTTP receiver on the
same port as its UI (`/v1/traces`), gRPC on a port of its own. Each activation's trace is at
`<url>/redirects/traces/<trace id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx

from botburrow.runtime.natsserver import free_ports

ROOT = Path(__file__).resolve().parents[2]
PHOENIX_BIN = ROOT / "tools" / "phoenix" / ".venv" / "bin" / "phoenix"
START_TIMEOUT_S = 120.0  # its first start creates the SQLite schema (~10 s on the development machine)


class PhoenixError(RuntimeError):
    pass


def installed() -> bool:
    return PHOENIX_BIN.is_file()


def trace_url(base_url: str, trace_id: str) -> str:
    return f"{base_url}/redirects/traces/{trace_id}"


class Phoenix:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        if not installed():
            raise PhoenixError(f"Phoenix is not installed ({PHOENIX_BIN} missing): run ./setup.sh (not --minimal)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port, grpc_port = free_ports(2)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work_dir),
               "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(self.port), "PHOENIX_GRPC_PORT": str(grpc_port),
               "PHOENIX_WORKING_DIR": str(self.work_dir), "PHOENIX_TELEMETRY_ENABLED": "false"}
        with open(self.work_dir / "phoenix.log", "ab") as log:  # noqa: ASYNC230 - handed to the child
            self.process = await asyncio.create_subprocess_exec(
                str(PHOENIX_BIN), "serve", env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        await self._wait_ready(timeout_s)
        return self.url

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while asyncio.get_running_loop().time() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise PhoenixError(f"Phoenix exited with {self.process.returncode}; see "
                                       f"{self.work_dir / 'phoenix.log'}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        await self.stop()
        raise PhoenixError(f"Phoenix not ready after {timeout_s:.0f} s; see {self.work_dir / 'phoenix.log'}")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

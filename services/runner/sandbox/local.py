"""SANDBOX_BACKEND=none: no isolation at all, for local mode on a developer's machine only.

The command still gets a cleared environment, closed stdin, its own process group and the wall-clock
kill, but it sees the whole host file system and network. `/workspace` and `/tmp` are not remapped:
the command runs in the host workspace directory, and HOME defaults to a fresh scratch dir.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time

from services.runner.sandbox import LineHandler, SandboxResult, SandboxSpec, StdioCommand
from services.runner.sandbox._common import Capture, result, run_process, sandbox_env

log = logging.getLogger(__name__)


class LocalSandbox:
    name = "none"

    def __init__(self) -> None:
        log.warning("SANDBOX_BACKEND=none: commands run UNSANDBOXED with full access to this host; local mode only")

    async def run(
        self, spec: SandboxSpec, *, on_line: LineHandler | None = None, stop: asyncio.Event | None = None
    ) -> SandboxResult:
        started = time.monotonic()
        out = Capture(spec.limits.output_bytes, on_line)
        err = Capture(spec.limits.output_bytes)
        home = await asyncio.to_thread(tempfile.mkdtemp, prefix="botburrow-home-")
        try:
            env = sandbox_env(spec)
            if "HOME" not in spec.env:
                env["HOME"] = home
            code, ending = await run_process(
                spec.argv,
                env=env,
                cwd=spec.workspace,
                timeout_s=spec.limits.timeout_s,
                stop=stop,
                stdout=out,
                stderr=err,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, home, True)
        return result(code, ending, out, err, started)

    async def stdio(self, spec: SandboxSpec, *, network: bool = False, limit_workspace: bool = True) -> StdioCommand:
        """The command itself, on the host, with only its own environment (and a scratch HOME)."""
        home = await asyncio.to_thread(tempfile.mkdtemp, prefix="botburrow-home-")
        env = sandbox_env(spec)
        if "HOME" not in spec.env:
            env["HOME"] = home
        return StdioCommand(spec.argv[0], list(spec.argv[1:]), env, spec.workspace,
                            lambda: asyncio.to_thread(shutil.rmtree, home, True))

    async def sweep(self, *, stale_after_s: float | None = None) -> int:
        return 0

    async def close(self) -> None:
        return None

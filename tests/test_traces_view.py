"""`botburrow dev --traces` (issue 21): Phoenix from tools/phoenix, every reply printed with its trace's link,
and that link opened in a real browser (Debian's chromium, headless) showing the activation.

The screenshot is kept as an artifact: build/test-artifacts/trace-view.png (build/ is not committed).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from botburrow.dev.phoenix import installed
from tests.fixtures.wait import until
from tests.test_dev_stack import Dev

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LINK = r"replied on post \S+: .*   trace: (http://127\.0\.0\.1:(\d+))/redirects/traces/([0-9a-f]{32})"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not installed(), reason="Phoenix not installed (./setup.sh without --minimal)")]


async def chromium(*args: str, timeout_s: float = 90.0) -> str:
    """Headless chromium on `args`; its stdout (a DOM dump), failing with its output."""
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--window-size=1600,1000", "--virtual-time-budget=20000", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


async def test_dev_traces_prints_each_replys_trace_and_the_browser_shows_it(tmp_path: Path) -> None:
    dev = await Dev.start("--traces")
    try:
        await dev.line(r"traces: Arize Phoenix at http://127\.0\.0\.1:\d+")
        found = await dev.line(LINK)
        base, trace_id = found.group(1), found.group(3)

        async def root_span() -> bool:
            async with httpx.AsyncClient(timeout=10) as client:
                spans = (await client.get(f"{base}/v1/projects/default/spans", params={"limit": 1000})).json()
            return any(s["context"]["trace_id"] == trace_id and s["name"].startswith("invoke_agent ")
                       for s in spans["data"])

        await until(root_span, 30.0, f"the activation's span in Phoenix, trace {trace_id}")
        if CHROMIUM is None:
            pytest.skip("no chromium (apt-get install chromium): the link works, the browser part is skipped")
        link = f"{base}/redirects/traces/{trace_id}"
        dom = await chromium("--dump-dom", link)
        assert "invoke_agent pirate-captain" in dom, dom[-3000:]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "trace-view.png"
        shot.unlink(missing_ok=True)
        await chromium(f"--screenshot={shot}", link)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        dev.process.send_signal(signal.SIGINT)
        assert await dev.exit_code(60) == 0, dev.lines[-10:]
    assert not [line for line in dev.lines if re.search(r"Traceback", line)]

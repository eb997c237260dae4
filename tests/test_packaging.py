"""A built wheel carries the code (each top-level folder as the import package of its name), the
generated schemas and the example agents local mode needs. Which package may import which is checked by
`lint-imports` (the contracts in pyproject.toml), not here."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_carries_code_schemas_and_examples(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("botburrow_agents-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("botburrow/cli/__init__.py", "schemas/codec.py", "streams/topology.py",
                     "services/runner/stage.py", "services/runner/mcp/relay.py",
                     "services/runner/sandbox/netlaunch.py", "botburrow/doubles/hub_emulator/emulator.py",
                     "schemas/json/agents.dlq._.schema.json", "services/runner/prices.yaml",
                     "botburrow/dev/agents/pirate-captain/config.yaml",
                     "botburrow/dev/skills/hub-post/SKILL.md"):
        assert expected in names, expected
    assert not any(name.startswith(("tests/", "bench/", "deploy/", "tools/")) for name in names)

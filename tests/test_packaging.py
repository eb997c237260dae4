"""The layout promise: every folder with code is a listed sub-package of `botburrow`, and a built
wheel carries the code, the generated schemas and the example agents local mode needs."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"botburrow": "botburrow", "botburrow.schemas": "schemas", "botburrow.streams": "streams",
           "botburrow.services": "services"}


def declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def packages_on_disk() -> set[str]:
    found = set()
    for package, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    return found


def test_every_package_on_disk_is_declared() -> None:
    assert packages_on_disk() == declared_packages()


@pytest.mark.slow
def test_the_wheel_carries_code_schemas_and_examples(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("botburrow_agents-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("botburrow/cli/__init__.py", "botburrow/schemas/codec.py", "botburrow/streams/topology.py",
                     "botburrow/services/runner/stage.py", "botburrow/schemas/json/agents.dlq._.schema.json",
                     "botburrow/services/dev/agents/pirate-captain/config.yaml",
                     "botburrow/services/dev/skills/hub-post/SKILL.md"):
        assert expected in names, expected

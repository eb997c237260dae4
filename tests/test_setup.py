"""The set-up a person follows: `./setup.sh` (and `--minimal`) says what it does step by step, and
`just` with no argument lists the tasks even when `.venv/bin` is not on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JUST = ROOT / ".venv" / "bin" / "just"
# What setup.sh makes, each measured by it and stated in the README's table.
PARTS = (".venv", "tools/node_modules", "tools/aider", ".cache/sandbox")
STEP = re.compile(r"^setup \| \[(\d)/(\d)\] .+ \.\.\. (done in \d+ s(, \S+: \S+)?|skipped \(.+\))$")


def _bare_env() -> dict[str, str]:
    """No virtual environment on PATH, as a fresh shell after ./setup.sh."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


def test_just_with_no_argument_lists_the_tasks_without_the_venv_on_path() -> None:
    done = subprocess.run([str(JUST)], cwd=ROOT, env=_bare_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Available recipes:" in done.stdout and re.search(r"^\s+test\b", done.stdout, re.M)
    assert "setup-minimal" in done.stdout


def test_setup_says_its_options_and_refuses_others_in_one_line() -> None:
    shown = subprocess.run(["./setup.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "--minimal" in shown.stdout
    refused = subprocess.run(["./setup.sh", "--fast"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "setup: unknown option --fast (try --minimal or --help)"]


def test_the_readme_states_each_part_and_its_disk() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    script = (ROOT / "setup.sh").read_text()
    for part in PARTS:
        assert part in script
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{part}` |")), None)
        assert row is not None, f"the README's set-up table has no row for {part}"
        assert re.search(r"\| \d+ MB \|", row), row
    assert "./setup.sh --minimal" in readme


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for a scratch clone")
def test_minimal_set_up_on_a_fresh_clone_makes_the_venv_only_one_line_per_step(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    done = subprocess.run(["./setup.sh", "--minimal"], cwd=clone, env=_bare_env() | {"PYTHON": _python()},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    steps = [line for line in lines if STEP.match(line)]
    assert [STEP.match(line).group(1) for line in steps] == ["1", "2"], lines  # type: ignore[union-attr]
    assert "done in" in steps[1] and ", .venv: " in steps[1]
    assert lines[-2].startswith("setup | done in ") and " on disk. Next: .venv/bin/botburrow dev" in lines[-2]
    assert all(line.startswith("setup | ") for line in lines), lines  # no tool output, no warnings
    assert not done.stderr.strip(), done.stderr
    assert (clone / ".venv/bin/botburrow").exists()
    assert not any((clone / part).exists() for part in PARTS[1:])


def _python() -> str:
    """The interpreter the repository's own .venv was made from (Python 3.11+)."""
    cfg = (ROOT / ".venv" / "pyvenv.cfg").read_text()
    home = re.search(r"^home = (.+)$", cfg, re.M)
    candidate = Path(home.group(1).strip()) / "python3" if home else None
    return str(candidate) if candidate and candidate.exists() else "python3"

"""Where the pinned outside programs live (see tools/README.md): `BOTBURROW_TOOLS_DIR`, else the
repository's own `tools/` folder (an editable install), as laid out by ./setup.sh."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def tools_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("BOTBURROW_TOOLS_DIR"):
        return Path(env["BOTBURROW_TOOLS_DIR"])
    return Path(__file__).resolve().parents[1] / "tools"


def node_bin(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """An npm package's command, e.g. `claude`, from tools/node_modules/.bin."""
    return tools_dir(environ) / "node_modules" / ".bin" / name

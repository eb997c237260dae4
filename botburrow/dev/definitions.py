"""Which agents `botburrow dev` runs, and what it says about them.

The source is `--agents`, else `AGENTS_SOURCE`, else the examples beside this module (a directory or
`s3://bucket/prefix`, as configsync reads it). It is loaded here once, by the definitions loader
configsync uses, so the terminal can say which agents loaded, why any did not (the loader's reasons),
and which loaded but cannot answer a mention (no `hub:write` grant: their reply could not be posted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from botburrow.definitions import LoadResult, open_source
from botburrow.definitions.files import SourceError
from botburrow.definitions.source import load_all
from botburrow.grants import holds_all

EXAMPLES_DIR = Path(__file__).parent
# `botburrow dev` names every agent; a soak with 1,000 would flood the terminal.
SHOWN_AGENTS = 8


class StartError(RuntimeError):
    """`botburrow dev` cannot start as asked; the message is the one line to print."""


def source_of(option: str | None, environ: Mapping[str, str]) -> str:
    """The definitions source: the option, else AGENTS_SOURCE, else the examples; a local one must exist."""
    source = option or environ.get("AGENTS_SOURCE", "").strip() or str(EXAMPLES_DIR)
    setting = "--agents" if option else "AGENTS_SOURCE"
    if not source.startswith("s3://") and not (Path(source).expanduser() / "agents").is_dir():
        raise StartError(f"{setting}={source}: no agents/ directory there; want a definitions directory "
                         "(agents/<name>/config.yaml, system-prompt.md) or s3://bucket/prefix")
    return source


@dataclass(frozen=True)
class Agents:
    source: str
    result: LoadResult

    def loaded(self) -> list[str]:
        return sorted(self.result.agents)

    def silent(self) -> dict[str, str]:
        """Loaded agents that cannot answer a mention, with why."""
        return {name: "no hub:write grant, so it cannot post a reply" for name, agent in self.result.agents.items()
                if not holds_all(agent.config.capabilities.grants, "hub", "write")}

    def answering(self) -> list[str]:
        silent = self.silent()
        return [name for name in self.loaded() if name not in silent]

    def report(self) -> list[str]:
        """What the terminal says: loaded, skipped (and why), not loaded (and why)."""
        names = self.loaded()
        shown = ", ".join(names[:SHOWN_AGENTS]) + (f" and {len(names) - SHOWN_AGENTS} more"
                                                    if len(names) > SHOWN_AGENTS else "")
        lines = [f"agents: {len(names)} loaded from {self.source}: {shown or 'none'}"]
        lines += [f"agents: {name} skipped: {why}" for name, why in sorted(self.silent().items())]
        lines += [f"agents: not loaded: {error}" for error in self.result.errors]
        lines += [f"agents: {field} is not acted on yet (set by {', '.join(agents)})"
                  for field, agents in sorted(self.result.unacted.items())]
        return lines


async def load(source: str, environ: Mapping[str, str]) -> Agents:
    """Load `source` as configsync will; StartError if it cannot be read at all."""
    try:
        reader = open_source(source, environ)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    try:
        return Agents(source, await load_all(reader))
    except SourceError as exc:
        raise StartError(f"agents source {source}: cannot be read: {exc}") from None
    finally:
        await reader.close()

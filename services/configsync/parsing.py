"""Parse a snapshot off the event loop, re-parsing only the definitions whose files changed.

Parsing 1,000 agents costs seconds of CPU; done on the loop it froze the stage (no stop, no health
answers). Here each definition folder (`agents/<name>`, `skills/<name>`) is remembered with the source
hashes of its files; a pass parses, in a worker thread and in small batches, only the folders that are
new or whose files changed, and reuses the rest. Small batches keep a cancelled pass from holding the
process (and `asyncio.run`'s executor shutdown) for longer than one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prometheus_client import Counter

from botburrow.definitions.source import LoadResult, SourceFile, build_result, warn_unacted

PARSE_BATCH = 50
PARSED = Counter("botburrow_configsync_parsed_definitions_total",
                 "Definitions parsed (a definition is parsed again only when its files changed)")

Signature = tuple[tuple[str, str], ...]  # (path, source hash) of a folder's files, sorted


def _folder(path: str) -> str:
    return "/".join(path.split("/")[:2])


def _by_folder(files: Mapping[str, SourceFile]) -> dict[str, dict[str, SourceFile]]:
    folders: dict[str, dict[str, SourceFile]] = {}
    for path, file in files.items():
        folders.setdefault(_folder(path), {})[path] = file
    return folders


def _parse_batch(batch: list[dict[str, SourceFile]]) -> list[LoadResult]:
    """Blocking: one `LoadResult` per folder (each holds one definition or its error)."""
    return [build_result(files) for files in batch]


def merge(parts: list[LoadResult]) -> LoadResult:
    """One result from per-folder results, in their order (agents, then skills, each by name)."""
    result = LoadResult()
    for part in parts:
        result.agents.update(part.agents)
        result.skills.update(part.skills)
        result.errors.extend(part.errors)
        for field, names in part.unacted.items():
            result.unacted.setdefault(field, []).extend(names)
    return result


class ParseCache:
    """Folder -> (signature of its files, its parsed result), carried from one pass to the next."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[Signature, LoadResult]] = {}
        self.parsed = 0  # definitions parsed by this cache, over its life

    async def load(self, files: Mapping[str, SourceFile]) -> LoadResult:
        """The parsed snapshot; only new or changed folders are parsed (in a thread)."""
        folders = _by_folder(files)
        signatures = {name: tuple(sorted((p, f.hash) for p, f in folder.items())) for name, folder in folders.items()}
        stale = sorted(name for name, sig in signatures.items() if self._folders.get(name, ((), None))[0] != sig)
        for start in range(0, len(stale), PARSE_BATCH):
            names = stale[start:start + PARSE_BATCH]
            results = await asyncio.to_thread(_parse_batch, [folders[name] for name in names])
            # Stored batch by batch: a pass cancelled half way keeps what it parsed for the next one.
            for name, result in zip(names, results, strict=True):
                self._folders[name] = (signatures[name], result)
            self.parsed += len(names)
            PARSED.inc(len(names))
        for gone in set(self._folders) - set(folders):
            del self._folders[gone]
        result = merge([self._folders[name][1] for name in sorted(folders)])
        warn_unacted(result)
        return result

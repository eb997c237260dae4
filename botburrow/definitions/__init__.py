"""Agent and skill definitions (contract §2): parsing, sources, the `configs` bucket, and its readers.

Sources (`AGENTS_SOURCE`): a directory, or `s3://bucket[/prefix]` on R2 or any S3 endpoint. Layout:
`agents/<name>/config.yaml` + `agents/<name>/system-prompt.md`, `skills/<name>/SKILL.md`, and on S3 a
root `manifest.json` whose per-file hashes decide what is re-read. `templates/` is ignored.

The `configs` KV bucket (written only by configsync, read by every stage through `AgentDirectory`):

- key `agent.<name>` -> the `AgentDefinition` as msgspec JSON (config, rendered system prompt, `hash`)
- key `skill.<name>` -> the `SkillDefinition` as msgspec JSON (front matter, body, `hash`)
- deleting an agent or skill at the source deletes its key.

Departure from contract §5 ("parsed definitions by hash"): values are keyed by name, not by hash, and
carry their content hash (sha256 over the definition's files) in the value. One key per definition
lets a reader load everything with one watch and follow changes without a pointer indirection; the
hash in the value is what `ConfigChanged.hash` names.

CONFIG events: `agents.config.agent.<name>` / `agents.config.skill.<name>` carry
`ConfigChanged(name, hash, deleted)` with `Nats-Msg-Id` `cfg:<kind>:<name>:<hash>` (plus `:deleted`
for a deletion). configsync writes the bucket first and publishes second, so whoever sees the event
finds the definition.

Modules:
- `source`: where definitions come from, behind one seam (`open_source`, `load_all`)
- `local`: a definitions directory, read through directory descriptors
- `s3`: an `s3://bucket/prefix` source, with or without a manifest
- `files`: what every source returns, and the checks every source applies
- `parse`: one agent or one skill into its stored form
- `bucket`: keys and values of the `configs` bucket
- `directory`: `AgentDirectory`, the definitions a stage works with, kept current from the bucket
- `letters`: dead letters for `configs` values no stage can read
- `validate`: `botburrow validate <dir>`
"""

from botburrow.definitions.directory import AgentDirectory
from botburrow.definitions.parse import DefinitionError, content_hash, parse_agent, parse_skill
from botburrow.definitions.source import (
    DefinitionSource,
    LoadResult,
    LocalSource,
    S3Source,
    SourceError,
    SourceFile,
    load_all,
    open_source,
)
from botburrow.definitions.validate import validate_dir

__all__ = [
    "AgentDirectory",
    "DefinitionError",
    "DefinitionSource",
    "LoadResult",
    "LocalSource",
    "S3Source",
    "SourceError",
    "SourceFile",
    "content_hash",
    "load_all",
    "open_source",
    "parse_agent",
    "parse_skill",
    "validate_dir",
]

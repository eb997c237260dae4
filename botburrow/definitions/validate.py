"""`botburrow validate <dir>`: check a definitions directory exactly as the loader would."""

from __future__ import annotations

from pathlib import Path

from botburrow.definitions.source import SourceError, build_result, read_tree


def validate_dir(path: Path | str) -> list[str]:
    """One line per problem, `<file>: <field path>: <message>`; empty when every definition loads."""
    root = Path(path)
    try:
        result = build_result(read_tree(root))
    except (SourceError, OSError) as exc:
        return [f"{root}: {exc}"]
    lines = [f"{root / error.path}: {error.field_path}: {error.message}" for error in result.errors]
    if not result.agents and not result.errors:
        lines.append(f"{root}: no agents found (expected agents/<name>/config.yaml)")
    # A config that names a skill nobody publishes still loads, but the skill is silently missing.
    for name, agent in sorted(result.agents.items()):
        for index, skill in enumerate(agent.config.capabilities.skills):
            if skill not in result.skills and f"skills/{skill}/SKILL.md" not in {e.path for e in result.errors}:
                lines.append(f"{root}/agents/{name}/config.yaml: $.capabilities.skills[{index}]: "
                             f"unknown skill {skill!r} (no skills/{skill}/SKILL.md)")
    return lines

"""What every definitions source returns, and the checks every source applies to what it is given.

Definitions are data written by someone else: a file is a `SourceFile`, and a file a source will not read
is a `SourceFile` with `refused` set (fails only its own definition, named by its path). Paths that could
leave the layout (`..`, absolute, backslash, NUL or control characters) and files over the size limit
(DEFINITION_FILE_MAX_BYTES) are refused by every source; a directory also refuses symlinks, hard links
and anything that is not a regular file.
"""

from __future__ import annotations

import msgspec

from botburrow.settings import ConfigsyncSettings

DEFAULT_MAX_FILE_BYTES = ConfigsyncSettings.definition_file_max_bytes
SYMLINK = "a symbolic link (definitions are read only from plain files inside their folder)"


class SourceError(Exception):
    """The source could not be read at all (unreachable, denied, missing): nothing changes."""


class SourceFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # relative to the source root, `/`-separated
    hash: str  # the source's change detector: sha256 hex (local, manifest) or the S3 ETag
    data: bytes
    refused: str | None = None  # why this file was not read (then `data` is empty): fails its definition


def refused_file(path: str, reason: str, digest: str = "") -> SourceFile:
    return SourceFile(path=path, hash=digest or f"refused:{reason}", data=b"", refused=reason)


def path_problem(path: str) -> str | None:
    """Why a source path could leave its folder or the layout (None when it is a plain relative path)."""
    if path.startswith("/"):
        return "an absolute path"
    if "\\" in path:
        return "a backslash in the path"
    if "\0" in path:
        return "a NUL byte in the path"
    if any(not char.isprintable() for char in path):
        return "a control character in the path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "an empty, '.' or '..' segment in the path"
    return None


def is_safe_name(name: str) -> bool:
    """A folder name that stays one folder (no separator, no `..`, nothing unprintable)."""
    return "/" not in name and path_problem(name) is None


def shown(path: str) -> str:
    """A path as it may appear in an error line or a log: unprintable characters escaped."""
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in path)


def is_definition_file(path: str) -> bool:
    """The files a definition is made of; `templates/`, `schemas/` and skill siblings are not read."""
    parts = path.split("/")
    if len(parts) != 3:
        return False
    if parts[0] == "agents":
        return parts[2] in ("config.yaml", "system-prompt.md")
    return parts[0] == "skills" and parts[2] == "SKILL.md"


def too_big(size: int, max_bytes: int) -> str:
    return f"{size} bytes or more, over the {max_bytes}-byte limit (DEFINITION_FILE_MAX_BYTES): not read"

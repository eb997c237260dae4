"""A definitions directory, read through directory descriptors so nothing is read through a link."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import time
from pathlib import Path

from botburrow.definitions.files import (
    DEFAULT_MAX_FILE_BYTES,
    SYMLINK,
    SourceError,
    SourceFile,
    is_definition_file,
    path_problem,
    refused_file,
    too_big,
)

# A file modified this close to a scan may be written again within the same mtime tick, size unchanged:
# its stat cannot be trusted to show that, so it is read again next time (git's "racy clean" rule).
RACY_NS = 2_000_000_000
StatKey = tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NOFOLLOW: a symlink swapped in after the scan still fails the open; O_NONBLOCK: a FIFO never blocks it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _file_refusal(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink > 1:  # a hard link's content may be any file of the filesystem
        return "a hard link (its content may live outside the definitions)"
    return None


def _read_file(name: str, dir_fd: int, max_bytes: int) -> bytes | str:
    """The file's bytes, or why it is refused; opened relative to its folder's descriptor, never followed."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return SYMLINK
        raise
    try:
        st = os.fstat(fd)
        refusal = _file_refusal(st)
        if refusal is not None:
            return refusal
        if st.st_size > max_bytes:
            return too_big(st.st_size, max_bytes)
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(max_bytes + 1)
        return too_big(len(data), max_bytes) if len(data) > max_bytes else data
    finally:
        os.close(fd)


class _TreeReader:
    """One scan of a definitions directory, through directory descriptors (see `read_tree`)."""

    def __init__(self, root: Path, cache: dict[str, tuple[StatKey, SourceFile]] | None, max_bytes: int) -> None:
        self.root, self.cache, self.max_bytes = root, cache, max_bytes
        self.scan_ns = time.time_ns()
        self.files: dict[str, SourceFile] = {}
        self.seen: dict[str, tuple[StatKey, SourceFile]] = {}

    def scan(self) -> dict[str, SourceFile]:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's choice
        try:
            for kind in ("agents", "skills"):
                kind_fd = self._open_kind(root_fd, kind)
                if kind_fd is not None:
                    self._scan_kind(kind_fd, kind)
        finally:
            os.close(root_fd)
        return dict(sorted(self.files.items()))

    def _open_kind(self, root_fd: int, kind: str) -> int | None:
        """`agents/` or `skills/` opened, or None when absent. A Kubernetes ConfigMap or Secret volume shows
        them as links into the volume's own `..data/`: a link is followed only to a folder inside the
        definitions directory, checked on the folder actually opened (a link swapped meanwhile is caught)."""
        try:
            st = os.stat(kind, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISLNK(st.st_mode):
            return os.open(kind, _DIR_FLAGS, dir_fd=root_fd) if stat.S_ISDIR(st.st_mode) else None
        try:
            kind_fd = os.open(kind, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
        except OSError as exc:
            raise SourceError(f"{self.root / kind} is a symbolic link to no folder: {exc.strerror}") from None
        root_real, kind_real = (os.readlink(f"/proc/self/fd/{fd}") for fd in (root_fd, kind_fd))
        if not kind_real.startswith(root_real.rstrip("/") + "/"):
            os.close(kind_fd)
            raise SourceError(f"{self.root / kind} is a symbolic link out of {self.root}: refused")
        return kind_fd

    def _scan_kind(self, kind_fd: int, kind: str) -> None:
        try:
            with os.scandir(kind_fd) as entries:
                folders = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in entries
                                 if not e.name.startswith("."))
            for name, is_link, is_dir in folders:
                rel = f"{kind}/{name}"
                refusal = path_problem(rel) or (SYMLINK if is_link else None)
                if refusal is not None:
                    self.files[rel] = refused_file(rel, refusal)
                elif is_dir:
                    self._scan_folder(kind_fd, rel, name)
        finally:
            os.close(kind_fd)

    def _scan_folder(self, kind_fd: int, rel: str, name: str) -> None:
        try:
            folder_fd = os.open(name, _DIR_FLAGS, dir_fd=kind_fd)
        except OSError as exc:  # swapped for a symlink since the listing
            self.files[rel] = refused_file(rel, SYMLINK if exc.errno in (errno.ELOOP, errno.ENOTDIR) else str(exc))
            return
        try:
            with os.scandir(folder_fd) as entries:
                wanted = [(f"{rel}/{e.name}", e.name, e.stat(follow_symlinks=False)) for e in entries
                          if is_definition_file(f"{rel}/{e.name}")]
            for path, file_name, st in wanted:
                self._read(folder_fd, path, file_name, st)
        finally:
            os.close(folder_fd)

    def _read(self, folder_fd: int, path: str, file_name: str, st: os.stat_result) -> None:
        refusal = path_problem(path) or _file_refusal(st)
        if refusal is not None:
            self.files[path] = refused_file(path, refusal)
            return
        stat_key = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        cached = self.cache.get(path) if self.cache is not None else None
        if cached is not None and cached[0] == stat_key:
            self.files[path] = cached[1]
        else:
            try:
                data = _read_file(file_name, folder_fd, self.max_bytes)
            except OSError as exc:  # one unreadable file fails its definition, not the whole source
                data = f"cannot be read: {exc.strerror or exc}"
            if isinstance(data, str):
                self.files[path] = refused_file(path, data)
                return
            self.files[path] = SourceFile(path=path, hash=hashlib.sha256(data).hexdigest(), data=data)
        if max(st.st_mtime_ns, st.st_ctime_ns) < self.scan_ns - RACY_NS:
            self.seen[path] = (stat_key, self.files[path])


def read_tree(root: Path, cache: dict[str, tuple[StatKey, SourceFile]] | None = None, *,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> dict[str, SourceFile]:
    """Every definition file under `root` (blocking: call it in a thread from async code).

    Folders and files are opened relative to their parent's descriptor with O_NOFOLLOW, so nothing is
    read through a symbolic link, even one swapped in during the scan; refusals are `SourceFile`s with
    `refused` set. With a `cache` (kept by the caller, updated in place) a file whose stat has not changed
    since an earlier call is not read and hashed again: a poll of an unchanged tree costs a directory listing.
    """
    if not root.is_dir():
        raise SourceError(f"definitions directory {root} does not exist")
    reader = _TreeReader(root, cache, max_file_bytes)
    files = reader.scan()
    if cache is not None:
        cache.clear()
        cache.update(reader.seen)
    return files


class LocalSource:
    def __init__(self, root: Path | str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = Path(root)
        self.description = str(self.root)
        self.max_file_bytes = max_file_bytes
        self._stats: dict[str, tuple[StatKey, SourceFile]] = {}

    async def snapshot(self) -> dict[str, SourceFile]:
        try:
            return await asyncio.to_thread(read_tree, self.root, self._stats, max_file_bytes=self.max_file_bytes)
        except OSError as exc:
            raise SourceError(f"cannot read {self.root}: {exc}") from None

    async def close(self) -> None:
        return None

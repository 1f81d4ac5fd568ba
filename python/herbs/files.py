"""Writing files safely: :func:`atomic_write`, used by every writer of weights and checkpoints, and
:func:`remove_stale_temps` for the temporary files of writes that a killed process left."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from typing import IO, Iterator

__all__ = ["atomic_write", "remove_stale_temps"]

_TOKEN_BYTES = 4  # a temporary file is named .{name}.{8 hex digits}.tmp


def _temp_pattern(base: str) -> "re.Pattern[str]":
    return re.compile(re.escape(f".{base}.") + f"[0-9a-f]{{{2 * _TOKEN_BYTES}}}" + re.escape(".tmp"))


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """Opens a temporary file next to `path` for binary writing; on success it is flushed,
    fsync'ed and renamed over `path`. On any error the temporary file is removed and an
    existing `path` is left untouched. The new file gets the usual permissions (umask).
    A process killed while writing leaves the temporary file (``.{name}.{hex}.tmp``), which
    :func:`remove_stale_temps` removes."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temps(path: str) -> int:
    """Removes the temporary files that :func:`atomic_write` calls for `path` left when their
    process was killed; returns how many. Only for a path that nothing is writing now (a
    write in progress elsewhere would lose its temporary file and fail)."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    pattern, removed = _temp_pattern(base), 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed

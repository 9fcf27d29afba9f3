"""One run at a time per output folder: an advisory lock on `FOLDER/.ipsolve.lock`.

The operating system drops the lock when its process ends, however it ends (kill -9 included), so a
stale lock never blocks a later run. A second run into a folder in use fails at once with one line.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

LOCK_NAME = ".ipsolve.lock"

try:
    import fcntl

    def _try_lock(handle) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
except ImportError:  # Windows
    import msvcrt

    def _try_lock(handle) -> bool:
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def folder_lock(folder, enabled: bool = True):
    """Create `folder` and hold its lock for the block; ValueError if another run holds it."""
    if not enabled:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        if not _try_lock(handle):
            raise _in_use(folder, handle)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield


def check_free(folder) -> None:
    """ValueError when another run holds `folder`'s lock now; creates nothing."""
    try:
        handle = open(Path(folder) / LOCK_NAME, "r+")
    except (FileNotFoundError, NotADirectoryError):
        return
    with handle:
        if not _try_lock(handle):
            raise _in_use(folder, handle)


def _in_use(folder, handle) -> ValueError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    return ValueError(f"{folder} is in use by another ipsolve run ({holder}): wait for it to end "
                      f"or choose another output folder")

"""What a run may write under --out, checked before anything is written.

- names that become folders (a measurement's name in a folder restore) are plain names;
- no input (a measurement, its sidecar, its mask) is among the files a run writes or replaces;
- a folder the run writes into is a run folder of ipsolve, or holds none of the names a run writes.

Every check raises ValueError with one line in the command line's words.
"""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from ipsolve.services.folder_lock import LOCK_NAME
from ipsolve.services.run_folder import OUTPUT_PATTERNS, stored_record

RUN_FILES = (*OUTPUT_PATTERNS, LOCK_NAME, ".*.tmp*")  # every name writing a run folder touches


def plain_name(name: str, what: str) -> str:
    """`name` unless it is not a plain name (a separator, `.`, `..`, hidden, empty): ValueError naming `what`."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{what} {name!r} is not a plain name (no separators, no . or .., nothing hidden): "
                         f"rename it")
    return name


def check_spares_inputs(run_folder, inputs) -> None:
    """ValueError when writing the run folder `run_folder` would replace or remove one of `inputs`."""
    folder = Path(run_folder).resolve()
    for source in filter(None, inputs):
        path = Path(source).resolve()
        if path == folder:
            raise ValueError(f"{source} would be an output folder of this run: choose another --out")
        if path.parent == folder and any(fnmatch(path.name, pattern) for pattern in RUN_FILES):
            raise ValueError(f"writing {run_folder} would replace the input {source}: choose another --out")


def check_run_folder(run_folder) -> None:
    """ValueError unless `run_folder` is missing, an ipsolve run folder, or a folder holding none of the
    names a run writes (a user's own final.png is never replaced)."""
    folder = Path(run_folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, and this run would write a folder there: choose another --out")
    if stored_record(folder):
        return
    for path in sorted(folder.iterdir()):
        if path.name != LOCK_NAME and any(fnmatch(path.name, pattern) for pattern in RUN_FILES):
            raise ValueError(f"{path} was not written by an ipsolve run and this run would replace it: "
                             f"choose another --out")

"""What a run may write under --out, checked before anything is written.

- names that become folders (a measurement's name in a folder restore) are plain names, and the folders
  lie inside --out once resolved;
- no input (a measurement, its sidecar, its mask) is among the files a run writes or replaces;
- a folder the run writes into is not in use by another run, and is a run folder of ipsolve or holds none
  of the names a run writes;
- an earlier run recorded there was made with the settings of this one (`check_same_settings`), unless
  --overwrite.

Every check raises ValueError with one line in the command line's words.
"""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from ipsolve import schema
from ipsolve.services.folder_lock import LOCK_NAME, check_free
from ipsolve.services.run_folder import OUTPUT_PATTERNS, stored_record

RUN_FILES = (*OUTPUT_PATTERNS, LOCK_NAME, ".*.tmp*")  # every name writing a run folder touches


def plain_name(name: str, what: str) -> str:
    """`name` unless it is not a plain name (a separator, `.`, `..`, hidden, empty): ValueError naming `what`."""
    if not schema.is_plain_name(name):
        raise ValueError(f"{what} {name!r} is not a plain name (no separators, no . or .., nothing hidden): "
                         f"rename it")
    return name


def check_confined(out, path) -> None:
    """ValueError unless `path`, resolved, lies inside `out`, resolved (a link never leads a run elsewhere)."""
    if Path(out).resolve() not in Path(path).resolve().parents:
        raise ValueError(f"{path} leads outside {out} (to {Path(path).resolve()}): choose another --out")


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
    names a run writes (a user's own final.png is never replaced), and no other run is writing it."""
    folder = Path(run_folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, and this run would write a folder there: choose another --out")
    check_free(folder)
    if stored_record(folder):
        return
    for path in sorted(folder.iterdir()):
        if path.name != LOCK_NAME and any(fnmatch(path.name, pattern) for pattern in RUN_FILES):
            raise ValueError(f"{path} was not written by an ipsolve run and this run would replace it: "
                             f"choose another --out")


def check_earlier_run(out, kind: str, arguments: dict, *, measurement=None, ignored=(), defaults=None) -> None:
    """ValueError when `out` holds a run other than `kind` ("a restore", "a generation") made with these
    `arguments` (the request as run.json records them; `measurement`: the resolved path a restore reads;
    `ignored`: arguments that do not decide the result; `defaults`: what None stands for). Same settings
    pass: the run then replaces what the earlier one recorded it wrote."""
    held = stored_record(out)
    if not held:
        return
    held_kind = ("a folder restore's run" if "index" in held else "a restore" if "measurement" in held
                 else "a generation")
    if held_kind != kind or not isinstance(held.get("arguments"), dict):
        raise ValueError(f"{out} holds {held_kind}; this one is {kind}: use another --out or --overwrite")
    wanted = argument_flags(arguments, ignored, defaults)
    earlier = argument_flags(held["arguments"], ignored, defaults)
    if measurement is not None:
        wanted, earlier["MEASUREMENT"] = {"MEASUREMENT": measurement, **wanted}, held.get("measurement")
    check_same_settings(out, kind, earlier, wanted)


def argument_flags(arguments: dict, ignored=(), defaults=None) -> dict:
    """A request's arguments as flags and values, but those that do not decide the result (`ignored`, and
    where the run goes and how it shows); None replaced by `defaults`, a budget of None by outer x inner."""
    skip = {"out", "device", "force", "quiet", "overwrite", *ignored}
    given = {**arguments, **{name: value for name, value in (defaults or {}).items() if arguments.get(name) is None}}
    if given.get("budget") is None and isinstance(given.get("outer"), int) and isinstance(given.get("inner"), int):
        given["budget"] = given["outer"] * given["inner"]
    return {f"--{name.replace('_', '-')}": value for name, value in given.items() if name not in skip}


def check_same_settings(out, kind: str, held: dict, wanted: dict) -> None:
    """ValueError naming the first flag whose value in `held` (what an earlier run in `out` was made with)
    differs from `wanted` (this run's); both map flags (`--solver`) to values (None: the default)."""
    for flag, value in wanted.items():
        if held.get(flag) != value:
            raise ValueError(f"{out} holds {kind} with {_flag(flag, held.get(flag))}; this one is "
                             f"{_flag(flag, value)}: use another --out or --overwrite")


def _flag(flag: str, value) -> str:
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {'(default)' if value is None else value}"

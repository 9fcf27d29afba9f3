"""Pieces shared by the `ipsolve` subcommands: argument types, input checks, device choice, Ctrl-C.

Every check raises ValueError / OSError / argparse.ArgumentTypeError with a one-line message; the command
line turns those into `ipsolve: error: …` and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143   # SIGTERM (128 + SIGTERM)
MAX_SEED = 2**63 - 1


class Terminated(KeyboardInterrupt):
    """SIGTERM: ends a run exactly like Ctrl-C (latest preview kept, run.json written), exit code 143."""


def exit_code_for(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def handle_sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises Terminated where the program is, as SIGINT raises KeyboardInterrupt."""
    def terminate(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, terminate)


def seed_int(text):
    return number(text, int, lambda value: 0 <= value <= MAX_SEED, f"an integer from 0 to {MAX_SEED}")


def positive_int(text):
    return number(text, int, lambda value: value >= 1, "a positive integer")


def positive_float(text):
    return number(text, float, lambda value: 0 < value < float("inf"), "a positive number")


def natural_int(text):
    return number(text, int, lambda value: value >= 0, "a non-negative integer")


def unit_float(text):
    return number(text, float, lambda value: 0 <= value <= 1, "a number in [0, 1]")


def number(text, kind, valid, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not valid(value):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def image_size(text):
    height, sep, width = text.lower().partition("x")
    if not (sep and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise argparse.ArgumentTypeError(f"must be HxW in pixels, like 256x256, got {text!r}")
    return int(height), int(width)


def folder_name(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string (use . for the current folder)")
    return text


def device_name(text):
    """cpu, cuda or cuda:N, checked against the devices this machine has."""
    import torch

    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available here; use cpu")
        if index and int(index) >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s), "
                                             f"cuda:0 to cuda:{count - 1}")
    return text


def existing_file(name: str, what: str) -> Path:
    path = Path(name)
    if not path.is_file():
        problem = f"is a folder, not a {what} file" if path.is_dir() else f"no such {what} file"
        raise FileNotFoundError(f"{name}: {problem}")
    return path


def resolve_device(name):
    """The torch device called `name` (already checked by `device_name`); None → cuda when available."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_writable_folder(path) -> None:
    """ValueError unless `path` is a folder we can write in, or one we can create; creates nothing."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot write to {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {path}: {existing} is not writable")


@contextlib.contextmanager
def deferred_interrupt(reraise: bool = True):
    """Hold Ctrl-C and SIGTERM during a block so its files are complete; raise the held one after it
    (KeyboardInterrupt or Terminated) unless `reraise` is False."""
    pending = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: pending.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending and reraise:
        raise Terminated() if pending[0] == signal.SIGTERM else KeyboardInterrupt()


def one_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

"""Values people type, parsed and checked: the argument types of the command line and the fields of the
studio's forms (both front-ends hand the services values checked here).

Each parser takes the text as typed and returns the value, or raises argparse.ArgumentTypeError with the
reason (`must be a positive integer, got '0'`); the command line prefixes the option, the studio the field.
"""
from __future__ import annotations

import argparse
import os

MAX_SEED = 2**63 - 1


def seed_int(text):
    return number(text, int, lambda value: 0 <= value <= MAX_SEED, f"an integer from 0 to {MAX_SEED}")


def positive_int(text):
    return number(text, int, lambda value: value >= 1, "a positive integer")


def positive_float(text):
    return number(text, float, lambda value: 0 < value < float("inf"), "a positive number")


def port_number(text):
    return number(text, int, lambda value: 1 <= value <= 65535, "a port number from 1 to 65535")


def natural_int(text):
    return number(text, int, lambda value: value >= 0, "a non-negative integer")


def unit_float(text):
    return number(text, float, lambda value: 0 <= value <= 1, "a number in [0, 1]")


def guidance_scale(text):
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not 0 <= scale < float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return scale


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
    """An output folder as typed, its `..` and `.` parts resolved (`a/../run` is `run`: no stray `a` made)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string (use . for the current folder)")
    return os.path.normpath(text)


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

"""Checks of what a run is handed, made before anything is written: files that must exist, a folder we
may write in, the device to use, and the one line that says what was wrong.

Every check raises ValueError / OSError with a one-line message (`one_line`); the command line turns it
into `ipsolve: error: …` and exit code 2, the studio shows it on the page.
"""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path


def existing_file(name: str, what: str) -> Path:
    path = Path(name)
    if not path.is_file():
        problem = f"is a folder, not a {what} file" if path.is_dir() else f"no such {what} file"
        raise FileNotFoundError(f"{name}: {problem}")
    return path


def resolve_device(name):
    """The torch device called `name` (already checked by `values.device_name`); None → cuda when available."""
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


def check_listen_address(host: str, port: int) -> None:
    """ValueError unless a server can listen on `host`:`port` (resolved, local, free): a socket is bound
    there and closed again."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise ValueError(f"--host {host}: cannot find this address ({reason}): give a name or address of "
                         f"this machine, such as 127.0.0.1") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as error:
            reasons = {errno.EADDRINUSE: f"--port {port} is in use on {host} by another program: "
                                         f"choose another --port",
                       errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine: "
                                            f"give one of its names or addresses, such as 127.0.0.1",
                       errno.EACCES: f"--port {port} on {host} needs more rights than this user has: "
                                     f"choose a port above 1023"}
            raise ValueError(reasons.get(error.errno, f"cannot listen on {host}:{port}: {error.strerror}")) from None


def one_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

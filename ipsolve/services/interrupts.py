"""Ctrl-C and SIGTERM: both end a run the same way (latest preview kept, run.json written), with the
exit codes 130 and 143; file writes hold them until the files are complete."""
from __future__ import annotations

import contextlib
import signal

EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143   # SIGTERM (128 + SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM: ends a run exactly like Ctrl-C (latest preview kept, run.json written), exit code 143."""


def exit_code_for(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def handle_sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises Terminated where the program is, as SIGINT raises KeyboardInterrupt."""
    def terminate(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, terminate)


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

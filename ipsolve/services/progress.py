"""Progress of an anytime run: network evaluations done out of the budget, previews so far.

On a terminal it is a live bar; written to anything else (a log file, a pipe, CI) it is one line per
preview, `restore: preview 2 at NFE 10/20 (1.3 s)`, never carriage-return bursts.
"""
import sys
import time


class RunProgress:
    """Progress of `total_nfe` network evaluations labelled `desc` (restore, generate) on `stream`."""

    def __init__(self, total_nfe: int, desc: str = "restore", enabled: bool = True, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.enabled = total_nfe, desc, enabled
        self.done = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total_nfe, unit="NFE", desc=desc, file=self.stream, dynamic_ncols=True)
            self.bar.set_postfix(previews=0)

    def nfe(self, nfe: int) -> None:
        """Move the bar to `nfe` evaluations."""
        if self.bar is not None:
            self.bar.update(nfe - self.done)
        self.done = nfe

    def preview(self, count: int) -> None:
        """The `count`-th preview exists."""
        if self.bar is not None:
            self.bar.set_postfix(previews=count)
        elif self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"{self.desc}: preview {count} at NFE {self.done}/{self.total} ({elapsed:.1f} s)",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()



def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())

"""Progress bars that read well in a terminal and in a log.

`RunProgress`: one anytime run, network evaluations done out of the budget and previews so far.
`CountProgress`: many items (images of an evaluation or of a folder restore).
On a terminal each is a live bar; written to anything else (a log file, a pipe, CI) it is plain lines,
`restore: preview 2 at NFE 10/20 (1.3 s)` or `eval: 40/200 images (12.3 s)`, never carriage-return bursts.
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


class CountProgress:
    """Progress over `total` items labelled `desc`; off a terminal one line whenever another `step_percent`
    of the items is done (and at the last one), so a log holds at most 100 / step_percent lines."""

    def __init__(self, total: int, desc: str, unit: str = "image", enabled: bool = True, stream=None,
                 step_percent: float = 5.0):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.step = max(1.0, total * step_percent / 100)
        self.done, self.next_line = 0, self.step
        self.start = time.perf_counter()
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True)

    def update(self, count: int = 1, **postfix) -> None:
        """`count` more items are done; `postfix` (e.g. nfe=10) is shown beside a live bar."""
        self.done += count
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix)
            self.bar.update(count)
        elif self.enabled and (self.done >= self.next_line or self.done == self.total):
            while self.next_line <= self.done:
                self.next_line += self.step
            elapsed = time.perf_counter() - self.start
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({elapsed:.1f} s)", file=self.stream,
                  flush=True)

    def note(self, **postfix) -> None:
        """Show `postfix` beside a live bar (nothing in a log)."""
        if self.bar is not None:
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())

"""The progress bar of `ipsolve restore`: network evaluations done out of the budget, previews so far."""
import sys

from tqdm import tqdm


class RestoreProgress:
    def __init__(self, total_nfe: int, enabled: bool = True):
        self.bar = tqdm(total=total_nfe, unit="NFE", desc="restore", file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True)
        self.done = 0
        self.bar.set_postfix(previews=0)

    def nfe(self, nfe: int) -> None:
        """Move the bar to `nfe` evaluations."""
        self.bar.update(nfe - self.done)
        self.done = nfe

    def preview(self, count: int) -> None:
        self.bar.set_postfix(previews=count)

    def close(self) -> None:
        self.bar.close()

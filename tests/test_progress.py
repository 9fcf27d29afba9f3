"""Progress of a run: a live bar on a terminal, one plain line per preview anywhere else."""
import io

from ipsolve.services.progress import RunProgress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def drive(stream, enabled=True):
    progress = RunProgress(6, "restore", enabled=enabled, stream=stream)
    for nfe in range(1, 7):
        progress.nfe(nfe)
        if nfe % 2 == 0:
            progress.preview(nfe // 2)
    progress.close()
    return stream.getvalue()


def test_a_log_gets_one_line_per_preview_and_no_carriage_returns():
    lines = drive(io.StringIO()).splitlines()
    assert [line.split(" (")[0] for line in lines] == ["restore: preview 1 at NFE 2/6", "restore: preview 2 at NFE 4/6",
                                                       "restore: preview 3 at NFE 6/6"]


def test_a_terminal_gets_a_live_bar():
    shown = drive(Terminal())
    assert "\r" in shown and "6/6" in shown and "previews=3" in shown


def test_disabled_progress_writes_nothing():
    assert drive(io.StringIO(), enabled=False) == drive(Terminal(), enabled=False) == ""

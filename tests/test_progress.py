"""Progress of a run and of many items: a live bar on a terminal, plain lines (no carriage returns) anywhere else."""
import io

from ipsolve.services.progress import CountProgress, RunProgress


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


def count(stream, total, enabled=True):
    with CountProgress(total, "eval", enabled=enabled, stream=stream) as progress:
        for _ in range(total):
            progress.update(nfe=3)
    return stream.getvalue()


def test_a_log_gets_a_line_per_five_percent_of_the_items_and_the_last():
    lines = count(io.StringIO(), 200).splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"eval: {n}/200 images" for n in range(10, 201, 10)]
    assert [line.split(" (")[0] for line in count(io.StringIO(), 3).splitlines()] == [
        "eval: 1/3 images", "eval: 2/3 images", "eval: 3/3 images"]


def test_counts_on_a_terminal_are_a_live_bar():
    shown = count(Terminal(), 7)
    assert "\r" in shown and "7/7" in shown and "nfe=3" in shown
    assert count(Terminal(), 7, enabled=False) == count(io.StringIO(), 7, enabled=False) == ""

"""Mutations of valid command lines (issue 19): from each valid call of restore (a file, a folder), degrade
and generate, every flag is replaced by a wrong type, an out-of-range number, NaN / inf, a path-like name,
or given twice; each mutant must be refused with exit 2, exactly one `ipsolve: error:` line, and the file
tree byte for byte as it was (no lock, no folder)."""

import pytest

from test_plans import refused, run, shipped_files

VALID = {  # a valid call of each command → its flags and their values
    "restore": ["restore", "digit_sr4.png", "--outer", "1", "--inner", "2", "--budget", "2", "--eta", "0.5",
                "--eta-b", "1", "--seed", "0", "--batch", "1", "--quiet", "--out", "out"],
    "restore folder": ["restore", "in", "--outer", "1", "--inner", "2", "--batch-size", "2", "--sigma-y", "0.05",
                       "--quiet", "--out", "out"],
    "degrade": ["degrade", "digit_clean.png", "--task", "sr4", "--sigma-y", "0.05", "--seed", "0", "--size", "32x32",
                "-o", "made.png"],
    "generate": ["generate", "--outer", "1", "--inner", "2", "--n", "1", "--seed", "0", "--budget", "2", "--quiet",
                 "--out", "out"],
}
WRONG = {  # a flag's kind of value → values it must refuse
    "count": ["0", "-2", "2.5", "nan", "inf", "two", ""],
    "unit": ["-0.1", "1.5", "nan", "inf", "-inf", "half", ""],
    "seed": ["-1", str(2**64), "nan", "0.5", ""],
    "size": ["0x32", "32", "-32x32", "nanxnan", ""],
    "task": ["frobnicate", "../sr4", "", "sr4/"],
    "folder": ["", "  ", "digit_sr4.png"],
    "output": ["", "  ", "made.jpg", "in", "digit_clean.png"],
    "measurement": ["missing.png", "../missing.png", "in/../missing.png"],
}
KINDS = {"--outer": "count", "--inner": "count", "--budget": "count", "--batch": "count", "--batch-size": "count",
         "--n": "count", "--eta": "unit", "--eta-b": "unit", "--sigma-y": "unit", "--seed": "seed", "--size": "size",
         "--task": "task", "--out": "folder", "-o": "output"}


def mutants():
    for name, call in VALID.items():
        for position, word in enumerate(call):
            kind = KINDS.get(call[position - 1]) if position > 1 else None
            if position == 1 and name.startswith("restore"):
                kind = "measurement"
            for value in WRONG.get(kind, []):
                yield pytest.param([*call[:position], value, *call[position + 1:]],
                                   id=f"{name}: {call[position - 1]} {value!r}")
            if word in KINDS:  # the flag given twice
                yield pytest.param([*call, word, call[position + 1]], id=f"{name}: {word} twice")


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return shipped_files(tmp_path, ("digit_sr4.png", "digit_sr4.png.json", "digit_clean.png"), "ab", sidecars=False)


@pytest.mark.parametrize("name", VALID)
def test_every_valid_call_runs(work, capsys, name):
    call = VALID[name]
    if name == "restore folder":
        call = [*call, "--task", "sr4"]
    code, _, lines = run(capsys, *call)
    assert code == 0, lines


@pytest.mark.parametrize("call", list(mutants()))
def test_every_mutant_is_refused_in_one_line_and_writes_nothing(work, capsys, call):
    if call[1] == "in":
        call = [*call, "--task", "sr4"]
    refused(capsys, work, *call)

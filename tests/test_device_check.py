"""scripts/device_check.py stays runnable without a GPU: its comparison rows pass on the CPU (--cpu)."""
import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_check.py"
spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
device_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_check)


def test_operator_and_speed_rows_pass_on_the_cpu():
    table, cpu = device_check.Table(), torch.device("cpu")
    device_check.operators(table, cpu, 8)
    device_check.nested_speed(table, cpu, device_check.SMALL)
    assert len(table.rows) == len(device_check.OPERATORS) + 1
    assert [row for row in table.rows if row[4] != "ok"] == []
    assert table.markdown().count("\n") == len(table.rows) + 1


def test_solver_rows_compare_float32_with_float64_on_the_same_draws():
    shape = (2, 3, 16, 16)
    problems = device_check.solver_problems(shape)
    runs = {precision: device_check.solver_runs(device_check.small_unet(torch.device("cpu"), dtype, 3),
                                                device_check.on(problems, "cpu", dtype), shape)
            for precision, dtype in (("fp64", torch.float64), ("fp32", torch.float32))}
    assert {f"nested({inner}), 3×4 calls" for inner in ("ddrm", "ddnm", "pigdm", "dps", "ddim", "ddpm", "dpm_solver")} \
        <= set(runs["fp64"])
    with torch.no_grad():
        for name in ("ddrm, 10 calls", "nested(ddrm), 3×4 calls", "pigdm on blur+mask (conjugate gradients), 10 calls",
                     "dps on the saturating sensor, 10 calls"):
            error = device_check.relative_error(runs["fp32"][name](), runs["fp64"][name]())
            assert 0 < error < device_check.SOLVER_TOL  # float32 rounding is seen, and small


def test_a_row_over_its_limit_fails_the_table():
    table = device_check.Table()
    table.add("a check", "cpu", "2e-3", "≤ 1e-4", device_check.verdict(2e-3, 1e-4))
    assert table.failed and "| a check | cpu | 2e-3 | ≤ 1e-4 | FAIL |" in table.markdown()

"""Timestep grids against the numbers of docs/algorithms.md and the released code's rules."""
import numpy as np
import pytest

import solvers


def test_ddrm_reference_rule():
    assert solvers.ddrm_timesteps(10) == list(range(900, -1, -100))
    assert solvers.ddrm_timesteps(20) == list(range(950, -1, -50))
    grid = solvers.ddrm_timesteps(30)
    assert len(grid) == 31 and grid[:2] == [990, 957] and grid[-1] == 0


def test_inner_grids():
    assert solvers.inner_timesteps(999, 4) == [999, 666, 333, 0]
    assert solvers.inner_timesteps(950, 20) == solvers.ddrm_timesteps(20)
    assert solvers.inner_timesteps(500, 1) == [500]
    assert solvers.dpm_inner_timesteps(999, 4) == [999, 749, 500, 250]
    assert solvers.sd_inner_timesteps(999, 4) == [999, 666, 334, 1]


def test_outer_grids():
    assert solvers.outer_timesteps(5, 999) == [999, 799, 599, 400, 200]
    assert solvers.outer_timesteps(3, 990) == [990, 660, 330]
    assert solvers.sd_outer_timesteps(5) == [999, 799, 600, 400, 201]


@pytest.mark.parametrize("start,stop,count", [(0, 999, 7), (1, 999, 6), (0, 333, 12), (0, 997, 5)])
def test_linspace_grid_equals_numpy_rounding(start, stop, count):
    expected = np.linspace(start, stop, count).round()[::-1].astype(int).tolist()
    assert solvers.linspace_timesteps(start, stop, count) == expected


@pytest.mark.parametrize("schedule", ["uniform", "front", "back"])
@pytest.mark.parametrize("total,steps", [(30, 3), (30, 5), (7, 7), (31, 4)])
def test_inner_step_counts_share_the_whole_budget(schedule, total, steps):
    counts = solvers.inner_step_counts(total, steps, schedule)
    assert sum(counts) == total and len(counts) == steps and min(counts) >= 1
    if schedule == "front":
        assert counts == sorted(counts, reverse=True)
    if schedule == "back":
        assert counts == sorted(counts)
    if schedule == "uniform":
        assert max(counts) - min(counts) <= 1


def test_front_and_back_schedules_are_linear():
    assert solvers.inner_step_counts(30, 3, "front") == [15, 10, 5]
    assert solvers.inner_step_counts(30, 3, "back") == [5, 10, 15]


def test_bad_grids_raise_value_error():
    with pytest.raises(ValueError):
        solvers.ddrm_timesteps(0)
    with pytest.raises(ValueError):
        solvers.inner_timesteps(10, 12)
    with pytest.raises(ValueError):
        solvers.inner_step_counts(2, 3)
    with pytest.raises(ValueError):
        solvers.inner_step_counts(30, 3, "middle")

"""Timestep grids: DDRM's reference rule, and the outer / inner grids of the released Nested Diffusion code.

Every grid is a descending list of ints. Rounding is of the exact rational value, half to even (as numpy).
"""
from __future__ import annotations

import itertools
from fractions import Fraction


def ddrm_timesteps(n: int, num_train: int = 1000) -> list[int]:
    """DDRM's grid: skip = T // n, then 0, skip, 2·skip, … < T from the top down (10 → 900…0; 30 → 31 points)."""
    _check_count("n", n, num_train)
    return list(range(0, num_train, num_train // n))[::-1]


def plain_ddrm_timesteps(n: int, num_train: int = 1000) -> list[int]:
    """Plain DDRM with exactly n calls: DDRM's grid cut to its last n points (30 → 957, 924, …, 0)."""
    return ddrm_timesteps(n, num_train)[-n:]


def linspace_timesteps(start: int, stop: int, count: int) -> list[int]:
    """round(linspace(start, stop, count)), descending (count = 1 gives [stop])."""
    if count == 1:
        return [stop]
    points = [round(start + Fraction(stop - start) * i / (count - 1)) for i in range(count)]
    return points[::-1]


def inner_timesteps(t: int, count: int) -> list[int]:
    """`count` points evenly spaced on [0, t] with both ends (t = 999, 4 → 999, 666, 333, 0); 1 → [t].

    The inner grid of the released DiT code, used for DDRM, DDIM and DDPM inner runs.
    """
    _check_count("count", count, t + 1)
    return linspace_timesteps(0, t, count)


def dpm_inner_timesteps(t: int, count: int) -> list[int]:
    """round(linspace(0, t, count + 1)) descending minus 0 (the released DPM-Solver++ inner grid)."""
    _check_count("count", count, t)
    return linspace_timesteps(0, t, count + 1)[:-1]


def sd_inner_timesteps(t: int, count: int) -> list[int]:
    """round(linspace(1, t, count)) descending (the released Stable Diffusion inner grid)."""
    _check_count("count", count, t)
    return linspace_timesteps(1, t, count)


def outer_timesteps(steps: int, top: int) -> list[int]:
    """`steps` evenly spaced outer times from `top` down, 0 excluded: round(linspace(0, top, steps + 1))[1:].

    With top = T − 1 this is the released DiT grid (5, 999 → 999, 799, 599, 400, 200).
    """
    _check_count("outer steps", steps, top)
    return linspace_timesteps(0, top, steps + 1)[:-1]


def sd_outer_timesteps(steps: int, num_train: int = 1000) -> list[int]:
    """round(linspace(1, T − 1, steps + 1)) descending, last point dropped (released Stable Diffusion code)."""
    _check_count("outer steps", steps, num_train - 2)
    return linspace_timesteps(1, num_train - 1, steps + 1)[:-1]


SCHEDULES = {
    "uniform": lambda n: [1] * n,
    "front": lambda n: list(range(n, 0, -1)),
    "back": lambda n: list(range(1, n + 1)),
}


def inner_step_counts(total: int, outer_steps: int, schedule: str = "uniform") -> list[int]:
    """Split a budget of `total` inner model calls over `outer_steps` outer steps (each gets ≥ 1).

    Shares ∝ weights, rounded by largest remainder: "uniform" equal (the remainder to the first steps),
    "front" ∝ S, S−1, …, 1 (better early previews), "back" ∝ 1, 2, …, S (more calls near the end).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"inner schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if outer_steps < 1 or total < outer_steps:
        raise ValueError(f"cannot split {total} inner calls over {outer_steps} outer steps: "
                         "give at least one call per outer step")
    weights = SCHEDULES[schedule](outer_steps)
    shares = [Fraction(total * w, sum(weights)) for w in weights]
    counts = [max(1, int(share)) for share in shares]
    while sum(counts) < total:
        counts[max(range(outer_steps), key=lambda i: (shares[i] - counts[i], -i))] += 1
    while sum(counts) > total:
        counts[min((i for i in range(outer_steps) if counts[i] > 1), key=lambda i: (shares[i] - counts[i], i))] -= 1
    return counts


def _check_count(name, count, most):
    if not 1 <= count <= most:
        raise ValueError(f"{name} must lie in 1…{most}, got {count}")


def planned_inner_counts(counts: list[int], budget: int | None = None) -> list[int]:
    """Inner-run lengths of a nested run capped at `budget` calls, planned from the start: the leading runs
    that fit whole are kept and the whole budget is shared over them in proportion to their lengths
    (largest remainder, ties to the earlier run), so no run is shortened below its plan and the last
    preview comes after exactly min(budget, sum(counts)) calls ([10, 10, 10] with 25 → [13, 12]; with 7 → [7]).
    """
    counts = [int(c) for c in counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"inner-run lengths must be at least 1, got {counts}")
    if budget is None or budget >= sum(counts):
        return counts
    if budget < 1:
        raise ValueError(f"budget must be at least 1 model call, got {budget}")
    kept = max(1, sum(1 for total in itertools.accumulate(counts) if total <= budget))
    counts = counts[:kept]
    shares = [Fraction(budget * c, sum(counts)) for c in counts]
    planned = [int(share) for share in shares]
    for i in sorted(range(kept), key=lambda i: (planned[i] - shares[i], i))[:budget - sum(planned)]:
        planned[i] += 1
    return planned


def matched_inner_timesteps(counts: list[int], plain_grid=plain_ddrm_timesteps, reach: float = 1.0,
                            num_train: int = 1000) -> list[list[int]]:
    """The inner grids of the "matched" nested schedule: run j (k_j calls) runs on the last k_j points of
    `plain_grid(K_j)`, K_j = k_1 + … + k_j the calls made by its end (capped at num_train) — it steps
    exactly as a plain run that spent the same calls in all does near t = 0 — and the first run is the
    plain run with k_1 calls. `reach` < 1 starts the later runs lower (at reach × that grid's first point,
    evenly spaced down to 0). The outer times are the grids' first points: descending for any even split;
    with very many outer steps the tails coincide (equal outer times: the outer step is then the identity
    and the run starts afresh from the same state), and a list whose lengths grow fast can start a run above
    the previous one (the outer step then re-noises the previous preview up to it).
    """
    grids = []
    for step, (count, total) in enumerate(zip(counts, itertools.accumulate(counts))):
        plain = plain_grid(min(total, num_train), num_train)
        if len(plain) < count:
            raise ValueError(f"an inner run of {count} calls does not fit in {num_train} timesteps")
        if step == 0 or reach == 1:
            grids.append(plain[-count:])
        else:
            grids.append(inner_timesteps(max(count - 1, round(reach * plain[-count])), count))
    return grids


def cut_to_budget(counts: list[int], budget: int) -> list[int]:
    """Inner-run lengths that fit a total of `budget` calls: runs in order, the last one that starts
    shortened to what is left, the rest dropped (25 over [10, 10, 10] → [10, 10, 5])."""
    cut, left = [], budget
    for count in counts:
        if left == 0:
            break
        cut.append(min(count, left))
        left -= cut[-1]
    return cut

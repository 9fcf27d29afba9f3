"""DDPM and DPM-Solver++ step by step against re-implementations written here from the papers' update
rules (Ho et al. 2020 eq. 6–7; Lu et al. 2022, DPM-Solver++ Algorithms 1 and 2), fed the same draws;
and the limits and messages of the timestep grids.

The convergence-order tests elsewhere pass with either DPM-Solver++ variant (both are second order);
these tell 2S from 2M and pin each to its published form.
"""
import math

import pytest
import torch

import solvers
from _toy_ops import random_gaussian_prior

SHAPE = (2, 2, 2)


def generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def prior():
    return random_gaussian_prior(SHAPE, generator(0))


def x0_of(model, x, t):
    """x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t."""
    a = float(model.alphas_cumprod[t])
    return (x - math.sqrt(1 - a) * model(x, torch.full((x.shape[0],), t))) / math.sqrt(a)


def lam(model, t):
    a = float(model.alphas_cumprod[t])
    return 0.5 * math.log(a / (1 - a))


def first_order(model, x, s, t, data):
    """x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D with α = √ᾱ, σ = √(1−ᾱ), h = λ_t − λ_s."""
    a_s, a_t = float(model.alphas_cumprod[s]), float(model.alphas_cumprod[t])
    h = lam(model, t) - lam(model, s)
    return math.sqrt(1 - a_t) / math.sqrt(1 - a_s) * x - math.sqrt(a_t) * (math.exp(-h) - 1) * data


def dpm_2m_reference(model, x, grid):
    """Multistep: D_i = (1 + 1/(2r)) x̂₀(t_{i−1}) − 1/(2r) x̂₀(t_{i−2}), r = h_{i−1}/h_i (first step D = x̂₀);
    the last model call's x̂₀ is the result."""
    previous = None
    for i, t in enumerate(grid):
        x0 = x0_of(model, x, t)
        if i == len(grid) - 1:
            return x0
        data = x0
        if previous is not None:
            r = (lam(model, t) - lam(model, previous[0])) / (lam(model, grid[i + 1]) - lam(model, t))
            data = (1 + 1 / (2 * r)) * x0 - previous[1] / (2 * r)
        x = first_order(model, x, t, grid[i + 1], data)
        previous = (t, x0)


def dpm_2s_reference(model, x, grid):
    """Singlestep: from t_{i−1} through the intermediate s_i (the next grid point) to t_i (the one after):
    u = first order to s_i, D = (1 − 1/(2r)) x̂₀(x, t_{i−1}) + 1/(2r) x̂₀(u, s_i), r = (λ_s − λ_{t_{i−1}})/h_i."""
    for start in range(0, len(grid), 2):
        t, x0 = grid[start], x0_of(model, x, grid[start])
        if start + 1 == len(grid):
            return x0
        mid = grid[start + 1]
        x0_mid = x0_of(model, first_order(model, x, t, mid, x0), mid)
        if start + 2 == len(grid):
            return x0_mid
        end = grid[start + 2]
        r = (lam(model, mid) - lam(model, t)) / (lam(model, end) - lam(model, t))
        x = first_order(model, x, t, end, (1 - 1 / (2 * r)) * x0 + x0_mid / (2 * r))


@pytest.mark.parametrize("grid", [[999, 700, 420, 250, 100, 30, 5], [900, 600, 300, 120, 40, 9]])
def test_dpm_solver_variants_follow_their_update_rules(prior, grid):
    x_T = torch.randn(3, *SHAPE, generator=generator(1), dtype=torch.float64)
    multistep = solvers.dpm_solver(prior, x_T, grid, variant="2M")
    singlestep = solvers.dpm_solver(prior, x_T, grid, variant="2S")
    torch.testing.assert_close(multistep, dpm_2m_reference(prior, x_T, grid), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(singlestep, dpm_2s_reference(prior, x_T, grid), rtol=1e-10, atol=1e-10)
    assert (multistep - singlestep).abs().max() > 1e-4  # the two rules differ on this grid


def ddpm_reference(model, x, grid, variance, draw):
    """x_{t'} = μ̃ + σ z, μ̃ = √ᾱ' β/(1−ᾱ) x̂₀ + √(ᾱ/ᾱ') (1−ᾱ')/(1−ᾱ) x_t with β = 1 − ᾱ/ᾱ', σ² = β
    (fixedlarge) or β (1−ᾱ')/(1−ᾱ) (fixedsmall); no noise after the last call, whose x̂₀ is the result."""
    for t, t_next in zip(grid, grid[1:] + [-1]):
        x0 = x0_of(model, x, t)
        if t_next < 0:
            return x0
        a, a_next = float(model.alphas_cumprod[t]), float(model.alphas_cumprod[t_next])
        beta = 1 - a / a_next
        mean = math.sqrt(a_next) * beta / (1 - a) * x0 + math.sqrt(a / a_next) * (1 - a_next) / (1 - a) * x
        var = beta if variance == "fixedlarge" else beta * (1 - a_next) / (1 - a)
        x = mean + math.sqrt(var) * draw(x.shape)


@pytest.mark.parametrize("variance", ["fixedsmall", "fixedlarge"])
def test_ddpm_steps_follow_the_posterior_of_the_forward_process(prior, variance):
    grid = [999, 640, 300, 90, 10]
    x_T = torch.randn(3, *SHAPE, generator=generator(2), dtype=torch.float64)

    def draws(seed):
        g = generator(seed)
        return lambda shape: torch.randn(tuple(shape), generator=g, dtype=torch.float64)

    out = solvers.ddpm(prior, x_T, grid, variance=variance, noise=draws(3))
    torch.testing.assert_close(out, ddpm_reference(prior, x_T, grid, variance, draws(3)), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- grids

@pytest.mark.parametrize("grid,name,most", [
    (lambda n: solvers.dpm_inner_timesteps(40, n), "count", 40),
    (lambda n: solvers.sd_inner_timesteps(40, n), "count", 40),
    (lambda n: solvers.inner_timesteps(40, n), "count", 41),
    (lambda n: solvers.outer_timesteps(n, 40), "outer steps", 40),
    (lambda n: solvers.sd_outer_timesteps(n), "outer steps", 998),
    (lambda n: solvers.ddrm_timesteps(n), "n", 1000),
])
def test_grids_accept_counts_up_to_their_limit_and_name_the_argument_beyond(grid, name, most):
    """The largest count still gives distinct, descending integer times; one more is refused, with a
    message naming the argument and its range."""
    points = grid(most)
    assert points == sorted(set(points), reverse=True) and min(points) >= 0
    for bad in (most + 1, 0):
        with pytest.raises(ValueError, match=rf"^{name} must lie in 1…{most}, got {bad}$"):
            grid(bad)


def largest_remainder(total, weights):
    """Hamilton's method: quotas total·w/Σw, each floored (at least 1), the calls left over to the largest
    remainders, ties to the earlier step."""
    from fractions import Fraction
    quotas = [Fraction(total * w, sum(weights)) for w in weights]
    counts = [max(1, int(q)) for q in quotas]
    for i in sorted(range(len(weights)), key=lambda i: (counts[i] - quotas[i], i))[:total - sum(counts)]:
        counts[i] += 1
    return counts


@pytest.mark.parametrize("schedule,weights", [("uniform", lambda n: [1] * n), ("front", lambda n: list(range(n, 0, -1))),
                                              ("back", lambda n: list(range(1, n + 1)))])
def test_inner_step_counts_are_largest_remainder_shares(schedule, weights):
    for steps in range(1, 9):
        for total in range(steps, 40):
            assert solvers.inner_step_counts(total, steps, schedule) == largest_remainder(total, weights(steps))
    assert solvers.inner_step_counts(7, 3) == [3, 2, 2]  # uniform by default, the remainder to the first steps


def test_inner_step_counts_refuse_fewer_calls_than_steps():
    with pytest.raises(ValueError, match="cannot split 2 inner calls over 3 outer steps"):
        solvers.inner_step_counts(2, 3)
    with pytest.raises(ValueError, match="cannot split 4 inner calls over 0 outer steps"):
        solvers.inner_step_counts(4, 0)


def test_ddim_draws_only_where_its_noise_can_be_nonzero(prior):
    """One z per step into ᾱ' < 1 when η > 0, none into the last step (σ = 0 there) and none at η = 0."""
    x_T = torch.randn(2, *SHAPE, generator=generator(4), dtype=torch.float64)
    for eta, expected in ((0.7, 4), (0.0, 0)):
        shapes = []
        solvers.ddim(prior, x_T, [999, 600, 300, 90, 10], eta=eta,
                     noise=lambda shape: shapes.append(shape) or torch.zeros(shape, dtype=torch.float64))
        assert shapes == [(2, *SHAPE)] * expected


class LearnedVariance:
    """Returns [ε, v] along the channels with a constant v, as a learned-variance network does."""

    learned_sigma = True

    def __init__(self, model, v):
        self.model, self.v, self.alphas_cumprod = model, v, model.alphas_cumprod

    def __call__(self, x, t):
        return torch.cat([self.model(x, t), torch.full_like(x, self.v)], dim=1)


def test_learned_variance_channels_split_off_for_any_image_shape():
    """One channel, 3×4 pixels (channels ≠ height): v = 1 is the fixed large variance, v = −1 the small."""
    prior = random_gaussian_prior((1, 3, 4), generator(5))
    x_T = torch.randn(2, 1, 3, 4, generator=generator(6), dtype=torch.float64)
    grid = [999, 500, 100, 0]
    for v, fixed in ((1.0, "fixedlarge"), (-1.0, "fixedsmall")):
        learned = solvers.ddpm(LearnedVariance(prior, v), x_T, grid, generator=generator(7))
        torch.testing.assert_close(learned, solvers.ddpm(prior, x_T, grid, variance=fixed, generator=generator(7)),
                                   rtol=1e-12, atol=1e-12)


def test_a_repeated_timestep_is_refused(prior):
    with pytest.raises(ValueError, match="strictly descending"):
        solvers.ddim(prior, torch.zeros(1, *SHAPE, dtype=torch.float64), [500, 500, 0])

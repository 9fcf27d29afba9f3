"""DDIM, DDPM and DPM-Solver++ on exact priors: call counts, callbacks, conditioning, learned variance,
the closed-form probability-flow ODE solution, and the moments of the sampled distribution."""
import pytest
import torch

import solvers
from _moments import assert_moments
from _toy_ops import Recorder, linear_alphas_cumprod, mixture_moments, random_gaussian_prior, two_component_prior

GRID = solvers.inner_timesteps(999, 12)
SAMPLERS = {
    "ddim": lambda model, x, grid, **kw: solvers.ddim(model, x, grid, eta=0.5, **kw),
    "ddpm": lambda model, x, grid, **kw: solvers.ddpm(model, x, grid, **kw),
    "dpm_2M": lambda model, x, grid, **kw: solvers.dpm_solver(model, x, grid, variant="2M", **kw),
    "dpm_2S": lambda model, x, grid, **kw: solvers.dpm_solver(model, x, grid, variant="2S", **kw),
}


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def prior():
    return random_gaussian_prior((2, 2, 2), generator(0))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 7, 12])
def test_one_model_call_per_timestep_and_the_result_is_the_last_x0(prior, name, steps):
    model, infos = Recorder(prior), []
    grid = solvers.inner_timesteps(999, steps)
    x_T = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=generator(1))
    out = SAMPLERS[name](model, x_T, grid, generator=generator(2), callback=infos.append)
    assert len(model.calls) == steps
    assert [info["nfe"] for info in infos] == list(range(1, steps + 1))
    assert [int(t[0]) for t, _ in model.calls] == [info["t"] for info in infos] == grid
    assert all(cond is None for _, cond in model.calls)
    torch.testing.assert_close(out, infos[-1]["x0"], rtol=0, atol=1e-12)
    torch.testing.assert_close(infos[0]["x"], x_T, rtol=0, atol=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_cond_reaches_the_model_untouched(prior, name):
    model, cond = Recorder(prior), object()
    SAMPLERS[name](model, torch.randn(2, 2, 2, 2, dtype=torch.float64), GRID, cond=cond)
    assert all(c is cond for _, c in model.calls)


@pytest.mark.parametrize("name", SAMPLERS)
def test_output_follows_the_input_dtype(prior, name):
    assert SAMPLERS[name](prior, torch.randn(2, 2, 2, 2), GRID, generator=generator()).dtype == torch.float32


class LearnedSigma:
    """Returns [ε, v] with a constant v, as a learned-variance network does."""

    learned_sigma = True

    def __init__(self, model, v):
        self.model, self.v, self.alphas_cumprod = model, v, model.alphas_cumprod

    def __call__(self, x, t):
        return torch.cat([self.model(x, t), torch.full_like(x, self.v)], dim=1)


@pytest.mark.parametrize("v,fixed", [(1.0, "fixedlarge"), (-1.0, "fixedsmall")])
def test_ddpm_learned_variance_interpolates_between_the_fixed_ones(prior, v, fixed):
    x_T = torch.randn(4, 2, 2, 2, dtype=torch.float64, generator=generator(3))
    learned = solvers.ddpm(LearnedSigma(prior, v), x_T, GRID, generator=generator(4))
    expected = solvers.ddpm(prior, x_T, GRID, variance=fixed, generator=generator(4))
    torch.testing.assert_close(learned, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ddim", "dpm_2M"])
def test_other_samplers_use_only_the_eps_channels(prior, name):
    x_T = torch.randn(2, 2, 2, 2, dtype=torch.float64, generator=generator(5))
    with_v = SAMPLERS[name](LearnedSigma(prior, 0.3), x_T, GRID, generator=generator(6))
    torch.testing.assert_close(with_v, SAMPLERS[name](prior, x_T, GRID, generator=generator(6)), rtol=0, atol=0)


def test_noise_callable_replaces_the_generator(prior):
    x_T = torch.randn(2, 2, 2, 2, dtype=torch.float64, generator=generator(7))
    source = generator(8)
    from_callable = solvers.ddpm(prior, x_T, GRID, noise=lambda shape: torch.randn(shape, generator=source,
                                                                                   dtype=torch.float64))
    torch.testing.assert_close(from_callable, solvers.ddpm(prior, x_T, GRID, generator=generator(8)), rtol=0, atol=0)
    zeros = solvers.ddim(prior, x_T, GRID, eta=1.0, noise=torch.zeros)
    torch.testing.assert_close(zeros, solvers.ddpm(prior, x_T, GRID, variance="fixedsmall", noise=torch.zeros),
                               rtol=1e-12, atol=1e-12)  # η = 1 DDIM is DDPM with β̃: same mean path
    with pytest.raises(ValueError, match="shape"):
        solvers.ddpm(prior, x_T, GRID, noise=lambda shape: torch.zeros(3))


def test_dpm_solver_order_one_is_ddim(prior):
    x_T = torch.randn(2, 2, 2, 2, dtype=torch.float64, generator=generator(9))
    torch.testing.assert_close(solvers.dpm_solver(prior, x_T, GRID, order=1), solvers.ddim(prior, x_T, GRID),
                               rtol=1e-10, atol=1e-12)


def ode_solution(prior, x_T, t):
    """Exact probability-flow ODE endpoint for N(μ, Σ): in Σ's eigenbasis x̄ − μ scales as √(λ + σ²),
    with x̄ = x/√ᾱ and σ² = (1−ᾱ)/ᾱ, so x₀ = μ + √(λ/(λ + σ_T²)) (x̄_T − μ)."""
    a = prior.alphas_cumprod[t]
    lam, q = prior.eigenvalues[0], prior.eigenvectors[0]
    centred = (x_T.reshape(x_T.shape[0], -1) / a.sqrt() - prior.means[0]) @ q
    return (prior.means[0] + (centred * (lam / (lam + (1 - a) / a)).sqrt()) @ q.T).reshape(x_T.shape)


def log_snr_grid(alphas_cumprod, count):
    """Integer timesteps nearest to `count` points evenly spaced in λ = log(√ᾱ/√(1−ᾱ)) from t = 999 to 0."""
    lam = 0.5 * (alphas_cumprod.log() - (1 - alphas_cumprod).log())
    targets = torch.linspace(float(lam[999]), float(lam[0]), count, dtype=torch.float64)
    return sorted({int((lam - target).abs().argmin()) for target in targets}, reverse=True)


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpm_2M", 2), ("dpm_2S", 2)])
def test_ode_solvers_converge_to_the_closed_form_solution_at_their_order(prior, name, order):
    x_T = torch.randn(4, 2, 2, 2, dtype=torch.float64, generator=generator(10))
    exact = ode_solution(prior, x_T, 999)
    solve = {"ddim": lambda grid: solvers.ddim(prior, x_T, grid),
             "dpm_2M": lambda grid: solvers.dpm_solver(prior, x_T, grid, variant="2M"),
             "dpm_2S": lambda grid: solvers.dpm_solver(prior, x_T, grid, variant="2S")}[name]
    coarse, fine = log_snr_grid(prior.alphas_cumprod, 25), log_snr_grid(prior.alphas_cumprod, 100)
    errors = [((solve(grid) - exact).norm() / exact.norm()).item() for grid in (coarse, fine)]
    assert errors[1] < (0.03 if order == 1 else 3e-3)
    assert errors[0] / errors[1] > 0.6 * (len(fine) / len(coarse)) ** order  # the error falls as h^order



@pytest.mark.parametrize("sample", [
    lambda m, x, grid, g: solvers.ddpm(m, x, grid, generator=g),
    lambda m, x, grid, g: solvers.ddpm(m, x, grid, variance="fixedlarge", generator=g),
    lambda m, x, grid, g: solvers.ddim(m, x, grid, eta=1.0, generator=g),
    lambda m, x, grid, g: solvers.ddim(m, x, grid, eta=0.0, generator=g),
    lambda m, x, grid, g: solvers.dpm_solver(m, x, grid, generator=g),
], ids=["ddpm", "ddpm-fixedlarge", "ddim-eta1", "ddim-eta0", "dpm-2M"])
def test_samples_reproduce_the_moments_of_a_mixture_prior(sample):
    g = generator(11)
    prior = two_component_prior(4, g, linear_alphas_cumprod())
    x_T = torch.randn(2000, 4, dtype=torch.float64, generator=g)
    draws = sample(prior, x_T, solvers.inner_timesteps(999, 250), g)
    assert_moments(draws, *mixture_moments(prior))


def test_bad_arguments_raise_value_error(prior):
    x_T = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    for grid in ([], [10, 20], [1000, 0], [5, -1]):
        with pytest.raises(ValueError, match="timesteps"):
            solvers.ddim(prior, x_T, grid)
    with pytest.raises(ValueError, match="variance"):
        solvers.ddpm(prior, x_T, GRID, variance="learned")
    with pytest.raises(ValueError, match="variant"):
        solvers.dpm_solver(prior, x_T, GRID, variant="3M")
    with pytest.raises(ValueError, match="eta"):
        solvers.ddim(prior, x_T, GRID, eta=-0.1)

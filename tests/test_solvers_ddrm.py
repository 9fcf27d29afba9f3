"""DDRM beyond the reference: call counts, the y-aware initialisation, its noise, and how its samples relate
to the exact posterior of a Gaussian prior.

DDRM is not an exact posterior sampler: for a Gaussian prior its output is linear in (y, draws), so its
sample mean is its mean path, and that path approaches the exact posterior mean only for small σ_y and
many steps (for large σ_y it converges elsewhere). The Monte-Carlo tests below use that regime.
"""
import pytest
import torch

import solvers
from _toy_ops import Recorder, gaussian_problem


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_one_call_per_timestep_and_the_result_is_the_last_x0():
    prior, op, y = gaussian_problem("sr2", 0.1)
    model, infos = Recorder(prior), []
    grid = solvers.ddrm_timesteps(20)
    out = solvers.ddrm(model, y, op, 0.1, grid, generator=generator(), callback=infos.append)
    assert len(model.calls) == 20 and [info["t"] for info in infos] == grid
    assert [info["nfe"] for info in infos] == list(range(1, 21))
    torch.testing.assert_close(out, infos[-1]["x0"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["sr2", "inp", "color", "deno"])
def test_noiseless_init_mean_is_the_scaled_pseudo_inverse(name):
    shape = (3, 4, 4) if name == "color" else (1, 4, 4)
    prior, op, _ = gaussian_problem(name, 0.0, shape=shape)
    y = op.H(torch.rand(2, *shape, dtype=torch.float64, generator=generator(1)))
    x_T = solvers.ddrm_init(prior, y, op, 0.0, 700, noise=torch.zeros)
    torch.testing.assert_close(x_T, prior.alphas_cumprod[700].sqrt() * op.H_pinv(y), rtol=1e-12, atol=1e-12)


def test_noiseless_denoising_init_is_the_forward_process():
    """With σ_y = 0 and H = I, q(x_t | y) is q(x_t | x₀ = y): x_t = √ᾱ y + √(1−ᾱ) n."""
    prior, op, y = gaussian_problem("deno", 0.0)
    n = torch.randn(1, 16, dtype=torch.float64, generator=generator(2))
    x_t = solvers.ddrm_init(prior, y, op, 0.0, 400, noise=lambda shape: n)
    a = prior.alphas_cumprod[400]
    torch.testing.assert_close(x_t, a.sqrt() * y + (1 - a).sqrt() * n.reshape(y.shape), rtol=1e-12, atol=1e-12)


def test_generator_noise_callable_and_explicit_init_agree():
    prior, op, y = gaussian_problem("sr2", 0.1)
    grid = solvers.ddrm_timesteps(10)
    plain = solvers.ddrm(prior, y, op, 0.1, grid, generator=generator(5))
    source = generator(5)
    via_noise = solvers.ddrm(prior, y, op, 0.1, grid,
                             noise=lambda shape: torch.randn(shape, generator=source, dtype=torch.float64))
    g = generator(5)
    via_init = solvers.ddrm(prior, y, op, 0.1, grid, x_T=solvers.ddrm_init(prior, y, op, 0.1, 900, generator=g),
                            generator=g)
    assert torch.equal(plain, via_noise) and torch.equal(plain, via_init)


def mean_z_scores(draws, target):
    """(sample mean − target) in Monte-Carlo standard errors, per pixel."""
    return (draws.mean(0) - target) / (draws.std(0) / draws.shape[0] ** 0.5)


def test_sample_mean_is_the_mean_path():
    """The draws have mean zero: for a Gaussian prior the sample mean is the all-zero-draws path."""
    prior, op, y = gaussian_problem("sr2", 0.1)
    grid = solvers.ddrm_timesteps(20)
    draws = solvers.ddrm(prior, y.expand(1000, -1, -1, -1), op, 0.1, grid, generator=generator(6))
    mean_path = solvers.ddrm(prior, y, op, 0.1, grid, noise=torch.zeros)[0]
    assert mean_z_scores(draws, mean_path).abs().max() < 4


def test_sample_mean_approaches_the_exact_posterior_mean():
    """Super-resolution, σ_y = 0.05, 250 steps: the bias is below one standard error of 800 draws."""
    prior, op, y = gaussian_problem("sr2", 0.05)
    exact = prior.posterior(y, op, 0.05).mean[0]
    draws = solvers.ddrm(prior, y.expand(800, *y.shape[1:]), op, 0.05, solvers.ddrm_timesteps(250),
                         generator=generator(7))
    assert mean_z_scores(draws, exact).abs().max() < 4


@pytest.mark.parametrize("name,shape,most", [("sr2", (1, 4, 4), 0.05), ("color", (3, 2, 2), 0.2),
                                             ("inp", (1, 4, 4), 0.2)])
def test_mean_path_bias_shrinks_with_more_steps_at_small_sigma(name, shape, most):
    """Bias of the mean in posterior standard deviations; slowest to vanish for inpainting and colorization."""
    prior, op, y = gaussian_problem(name, 0.05, shape=shape)
    post = prior.posterior(y, op, 0.05)
    std = post.covariance[0].diagonal().sqrt().reshape(post.mean.shape)
    bias = [((solvers.ddrm(prior, y, op, 0.05, solvers.ddrm_timesteps(n), noise=torch.zeros) - post.mean) / std)
            .abs().max().item() for n in (20, 100, 1000)]
    assert bias[0] > bias[1] > bias[2] and bias[2] < most


def test_bad_arguments_raise_value_error():
    prior, op, y = gaussian_problem("sr2", 0.1)
    grid = solvers.ddrm_timesteps(10)
    for kwargs in ({"eta": 1.5}, {"eta_b": -0.1}):
        with pytest.raises(ValueError, match="eta"):
            solvers.ddrm(prior, y, op, 0.1, grid, **kwargs)
    with pytest.raises(ValueError, match="sigma_y"):
        solvers.ddrm(prior, y, op, -0.1, grid)

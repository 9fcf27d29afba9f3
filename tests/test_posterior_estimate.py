"""Posterior estimates from K samples per measurement: the mean and std against numpy by hand, the batch
order of the K-fold batch, nested's per-preview estimate, and the estimate of exact posterior draws against
the closed-form posterior of a Gaussian prior (error of the mean ∝ 1/K, std = the exact posterior std)."""
import math

import numpy as np
import pytest
import torch

import degradations
import solvers
from _toy_ops import linear_alphas_cumprod, random_dense_operator
from ipsolve.models import GaussianPrior, IsotropicGaussianPrior

F64 = torch.float64


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("count", [2, 7])
def test_mean_and_std_are_numpys_by_hand(count):
    samples = torch.randn(3, count, 2, 4, 5, generator=generator(1), dtype=F64)
    result = solvers.estimate(samples)
    by_hand = samples.numpy()
    np.testing.assert_allclose(result.mean.numpy(), by_hand.sum(1) / count, rtol=1e-12)
    centred = by_hand - by_hand.sum(1, keepdims=True) / count
    np.testing.assert_allclose(result.std.numpy(), np.sqrt((centred**2).sum(1) / (count - 1)), rtol=1e-12)
    assert result.samples is samples and result.count == count and result.std.shape == (3, 2, 4, 5)


def test_k_scalars_per_measurement_are_an_estimate_too():
    """(B, K): one number per draw; mean and unbiased std by hand: (1, 2, 6) → 3, √7; (0, 0, 3) → 1, √3."""
    result = solvers.estimate(torch.tensor([[1.0, 2, 6], [0, 0, 3]], dtype=F64))
    assert result.mean.tolist() == [3, 1]
    assert result.std.tolist() == pytest.approx([math.sqrt(7), math.sqrt(3)], rel=1e-15)
    with pytest.raises(ValueError) as error:
        solvers.estimate(torch.zeros(3))
    assert str(error.value) == "samples must be (B, K, ...) with K ≥ 1, got shape (3,)"


@pytest.mark.parametrize("count", [2.0, True, 0])
def test_a_sample_count_is_a_whole_number(count):
    with pytest.raises(ValueError) as error:
        solvers.repeat_for_samples(torch.zeros(2, 3), count)
    assert str(error.value) == f"samples must be a whole number ≥ 1 (draws per measurement), got {count!r}"


def test_one_sample_is_its_own_mean_with_zero_std():
    samples = torch.randn(2, 1, 1, 3, 3, generator=generator(2))
    result = solvers.estimate(samples)
    assert torch.equal(result.mean, samples[:, 0]) and torch.equal(result.std, torch.zeros(2, 1, 3, 3))


def test_sample_k_of_measurement_b_is_row_b_times_k_plus_k():
    y = torch.arange(3, dtype=F64)[:, None, None, None] * torch.ones(3, 1, 2, 2, dtype=F64)  # y[b] ≡ b
    repeated = solvers.repeat_for_samples(y, 4)
    assert repeated.shape == (12, 1, 2, 2)
    assert [int(row[0, 0, 0]) for row in repeated] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    rows = torch.arange(12, dtype=F64)[:, None] * torch.ones(12, 5, dtype=F64)  # row r ≡ r
    split = solvers.split_samples(rows, 4)
    assert split.shape == (3, 4, 5)
    assert all(split[b, k, 0] == 4 * b + k for b in range(3) for k in range(4))


def standard_normal_problem(shape, measurements, batch, sigma_y, seed):
    """N(μ, I) as an exact ε-model (IsotropicGaussianPrior, O(D) per call), the same prior as a dense
    GaussianPrior (its posterior: the dense Kalman formula), a random dense H and B measurements."""
    mean = 0.5 * torch.randn(shape, generator=generator(seed), dtype=F64)
    dim = math.prod(shape)
    model = IsotropicGaussianPrior(mean, 1.0, linear_alphas_cumprod())
    dense = GaussianPrior(mean, torch.eye(dim, dtype=F64), linear_alphas_cumprod())
    op = random_dense_operator(measurements, shape, generator(seed + 1))
    clean = op.H(dense.sample(batch, generator(seed + 2)))
    y = clean + sigma_y * torch.randn(clean.shape, generator=generator(seed + 3), dtype=F64)
    return model, op, y, dense.posterior(y, op, sigma_y)


def exact_draws(model, op, y, sigma_y, count, seed, steps):
    """ΠGDM's score weight on N(μ, I) is DDIM on the exact posterior model (test_solvers_guided.py); η = 1
    and a fine grid make its draws posterior samples up to a discretisation bias."""
    return solvers.sample_estimate(solvers.pigdm, model, y, count, op=op, sigma_y=sigma_y,
                                   timesteps=solvers.ddrm_timesteps(steps), eta=1.0, weight="score",
                                   generator=generator(seed))


def test_the_k_draws_of_each_measurement_come_from_its_own_posterior():
    """Measurements far apart: every draw lies nearest to the posterior mean of its own measurement."""
    model, op, _, _ = standard_normal_problem((1, 2, 2), 4, 1, 0.05, seed=10)
    clean = 4 * torch.arange(3, dtype=F64)[:, None, None, None] * torch.ones(3, 1, 2, 2, dtype=F64)
    y = op.H(clean)
    result = exact_draws(model, op, y, 0.05, 5, seed=14, steps=50)
    posterior_means = GaussianPrior(model.mean, torch.eye(4, dtype=F64), model.alphas_cumprod).posterior(
        y, op, 0.05).mean
    distances = (result.samples[:, :, None] - posterior_means[None, None]).flatten(3).norm(dim=3)  # (B, K, B)
    assert torch.equal(distances.argmin(2), torch.arange(3)[:, None].expand(3, 5))


STEPS = 250  # the std of 250-step draws is ≈ 2 % low (≈ 4.5 % / 100 steps), ≈ 0.4 standard errors at K = 200


@pytest.fixture(scope="module")
def exact_estimates():
    """64 measurements of a 1×4×4 image (8 random projections, σ_y = 0.3), K = 50 and K = 200 draws each."""
    model, op, y, posterior = standard_normal_problem((1, 4, 4), 8, 64, 0.3, seed=20)
    estimates = {count: exact_draws(model, op, y, 0.3, count, seed=30 + count, steps=STEPS) for count in (50, 200)}
    return estimates, posterior


def mean_errors(estimate, posterior):
    """‖mean_K − μ‖² per measurement (B,)."""
    return (estimate.mean - posterior.mean).flatten(1).pow(2).sum(1)


def test_the_mean_error_is_the_posterior_trace_over_k(exact_estimates):
    """For exact draws, K (mean_K − μ) ~ N(0, Σ): K‖mean_K − μ‖² has mean tr Σ and variance 2 tr Σ²; the
    average over B measurements is tr Σ within 4 standard errors √(2 tr Σ² / B), at K = 50 and at K = 200,
    and the ratio of the errors is 4 within 4 of its standard errors (delta method: the two averages are
    independent, each with relative error √(2 tr Σ² / B) / tr Σ)."""
    estimates, posterior = exact_estimates
    cov = posterior.covariance[0]
    trace, spread = cov.trace(), (2 * (cov @ cov).trace() / 64).sqrt()
    errors = {count: mean_errors(estimate, posterior).mean() for count, estimate in estimates.items()}
    for count, error in errors.items():
        assert abs(count * error - trace) < 4 * spread, (count, count * error / trace)
    ratio = errors[50] / errors[200]
    assert abs(ratio - 4) < 4 * 4 * math.sqrt(2) * spread / trace, ratio


def test_the_std_map_is_the_exact_posterior_std(exact_estimates):
    """The std of K = 200 draws per pixel against √diag Σ, within 4 standard errors σ / √(2(K − 1)), on the
    first 8 measurements' maps (128 pixels: a family-wise false alarm of < 1 % for exact draws)."""
    estimates, posterior = exact_estimates
    exact = posterior.covariance[0].diagonal().sqrt().reshape(1, 1, 4, 4)
    z = (estimates[200].std[:8] - exact) / (exact / math.sqrt(2 * 199))
    assert z.abs().max() < 4, z.abs().max()


def ddrm_problem():
    """N(0, I) on 1×4×4 (DDRM is not exact there: these tests check bookkeeping), sr2, two measurements."""
    prior = GaussianPrior(torch.zeros(1, 4, 4, dtype=F64), torch.eye(16, dtype=F64), linear_alphas_cumprod())
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    clean = op.H(prior.sample(2, generator(40)))
    y = clean + 0.1 * torch.randn(clean.shape, generator=generator(41), dtype=F64)
    return prior, {"y": y, "op": op, "sigma_y": 0.1}


def nested_ddrm(**options):
    prior, measurement = ddrm_problem()
    return solvers.nested(prior, "ddrm", outer_steps=3, inner_steps=4, **measurement, **options)


def test_nested_previews_carry_the_estimate_of_their_k_draws():
    previews = list(nested_ddrm(generator=generator(42), samples=3))
    assert len(previews) == 3
    for preview in previews:
        draws = preview.x0.numpy().reshape(2, 3, 1, 4, 4)
        assert preview.x0.shape == (6, 1, 4, 4) and preview.estimate.count == 3
        np.testing.assert_allclose(preview.estimate.mean.numpy(), draws.mean(1), rtol=1e-12)
        np.testing.assert_allclose(preview.estimate.std.numpy(), draws.std(1, ddof=1), rtol=1e-12)


def test_nested_samples_is_the_k_fold_batch_run_plainly():
    """samples=K only repeats y measurement-major: the same draws as y repeated by hand, without an estimate."""
    prior, measurement = ddrm_problem()
    with_samples = solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=3, generator=generator(43), samples=4,
                                  **measurement)
    by_hand = solvers.nested(prior, "ddrm", outer_steps=2, inner_steps=3, generator=generator(43),
                             **{**measurement, "y": measurement["y"][[0, 0, 0, 0, 1, 1, 1, 1]]})
    for preview, plain in zip(with_samples, by_hand):
        assert torch.equal(preview.x0, plain.x0) and plain.estimate is None


def test_sample_estimate_runs_a_plain_solver_on_the_k_fold_batch():
    prior, measurement = ddrm_problem()
    grid = solvers.ddrm_timesteps(10)
    result = solvers.sample_estimate(solvers.ddrm, prior, measurement["y"], 3, op=measurement["op"],
                                     sigma_y=0.1, timesteps=grid, generator=generator(44))
    plain = solvers.ddrm(prior, measurement["y"][[0, 0, 0, 1, 1, 1]], measurement["op"], 0.1, grid,
                         generator=generator(44))
    assert torch.equal(result.samples, plain.reshape(2, 3, 1, 4, 4))


def ddrm_estimate(**options):
    prior, measurement = ddrm_problem()
    return solvers.sample_estimate(solvers.ddrm, prior, measurement["y"], 3, op=measurement["op"], sigma_y=0.1,
                                   timesteps=[500, 0], **options)


def test_sample_estimate_starts_each_of_the_k_rows_from_its_row_of_x_t():
    """x_T holds B·K rows: row b·K + k starts draw k of measurement b (ddrm on the repeated y from that x_T);
    one row per measurement is refused, in words that give the count."""
    prior, measurement = ddrm_problem()
    x_T = torch.randn(6, 1, 4, 4, generator=generator(46), dtype=F64)
    result = ddrm_estimate(x_T=x_T, generator=generator(47))
    plain = solvers.ddrm(prior, measurement["y"][[0, 0, 0, 1, 1, 1]], measurement["op"], 0.1, [500, 0], x_T=x_T,
                         generator=generator(47))
    assert torch.equal(result.samples, plain.reshape(2, 3, 1, 4, 4))
    with pytest.raises(ValueError) as error:
        ddrm_estimate(x_T=x_T[:2])
    assert str(error.value) == "with samples=3, x_T needs 6 rows (K per measurement), got 2"


@pytest.mark.parametrize("call", [
    lambda: solvers.repeat_for_samples(torch.zeros(2, 3), 0),
    lambda: solvers.split_samples(torch.zeros(6, 3), -1),
    lambda: solvers.split_samples(torch.zeros(7, 3), 2),
    lambda: solvers.estimate(torch.zeros(3, 0, 4)),
    lambda: solvers.nested(ddrm_problem()[0], "ddim", outer_steps=2, inner_steps=3, shape=(2, 1, 4, 4), samples=2),
    lambda: nested_ddrm(samples=0),
    lambda: nested_ddrm(samples=3, x_T=torch.zeros(2, 1, 4, 4, dtype=F64)),
    lambda: ddrm_estimate(x_T=torch.zeros(1, 1, 4, 4, dtype=F64)),
])
def test_bad_sample_counts_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_keep_is_refused_on_a_samples_run():
    """keep() would copy draws within a measurement's K and shrink its std."""
    run = nested_ddrm(generator=generator(45), samples=2)
    next(run)
    with pytest.raises(ValueError, match="keep"):
        run.keep([0])

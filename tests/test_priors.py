"""Exact priors: ε against autograd of the true log-density, posteriors against the information form,
sampling moments, EM fitting, errors."""
import pytest
import torch
from torch.distributions import MultivariateNormal

import degradations
from ipsolve.models import GaussianMixturePrior, GaussianPrior
from _moments import assert_moments
from _toy_ops import (linear_alphas_cumprod, mixture_moments, random_dense_operator, random_gaussian_prior,
                      two_component_prior)

ALPHAS_CUMPROD = linear_alphas_cumprod()


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def log_density_of_noisy(prior, x_t, a):
    """log p_t(x_t) = log Σ_k w_k N(x_t; √ᾱ μ_k, ᾱ Σ_k + (1−ᾱ) I), with torch.distributions."""
    eye = torch.eye(prior.dim, dtype=torch.float64)
    terms = [w.log() + MultivariateNormal(a.sqrt() * m, a * c + (1 - a) * eye).log_prob(x_t)
             for w, m, c in zip(prior.weights, prior.means, prior.covariances)]
    return torch.stack(terms).logsumexp(0)


@pytest.mark.parametrize("t", [0, 100, 600, 999])
def test_mixture_eps_is_the_scaled_score_of_the_noisy_density(t):
    """Tweedie: ε(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t)."""
    prior = two_component_prior(5, generator(1))
    x_t = torch.randn(7, 5, dtype=torch.float64, generator=generator(2)).requires_grad_()
    a = ALPHAS_CUMPROD[t]
    (score,) = torch.autograd.grad(log_density_of_noisy(prior, x_t, a).sum(), x_t)
    eps = prior(x_t.detach(), torch.full((7,), t))
    torch.testing.assert_close(eps, -(1 - a).sqrt() * score, rtol=1e-9, atol=1e-11)


def test_eps_takes_images_and_per_sample_timesteps_and_follows_dtype():
    prior = random_gaussian_prior((2, 2, 2), generator(0))
    x = torch.randn(3, 2, 2, 2, generator=generator(1))
    t = torch.tensor([5, 500, 990])
    eps = prior(x, t)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    one_by_one = torch.cat([prior(x[i:i + 1].double(), t[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(eps.double(), one_by_one, rtol=1e-6, atol=1e-6)
    assert prior.image_shape == (2, 2, 2)


def information_form_posterior(mean, cov, h, y, sigma_y):
    """N(m, P) with P = (Σ⁻¹ + HᵀH/σ²)⁻¹ and m = P (Σ⁻¹ μ + Hᵀ y/σ²): independent of the gain form."""
    precision = torch.linalg.inv(cov)
    post_cov = torch.linalg.inv(precision + h.T @ h / sigma_y**2)
    post_mean = (precision @ mean + y @ h / sigma_y**2) @ post_cov
    return post_mean, post_cov


@pytest.mark.parametrize("make_op", [
    lambda g: degradations.make("sr2", channels=1, image_size=(4, 4)),
    lambda g: degradations.make("inp", channels=1, image_size=(4, 4), seed=3),
    lambda g: random_dense_operator(6, (1, 4, 4), g),
], ids=["sr2", "inp", "dense"])
def test_gaussian_posterior_matches_the_information_form(make_op):
    g = generator(4)
    prior = random_gaussian_prior((1, 4, 4), g)
    op = make_op(g)
    x = prior.sample(2, g)
    y = op.H(x) + 0.1 * torch.randn(op.H(x).shape, generator=g, dtype=torch.float64)
    post = prior.posterior(y, op, 0.1)
    h = torch.stack([op.H(e.reshape(1, 1, 4, 4))[0].reshape(-1) for e in torch.eye(16, dtype=torch.float64)], 1)
    mean, cov = information_form_posterior(prior.means[0], prior.covariances[0], h, y.reshape(2, -1), 0.1)
    torch.testing.assert_close(post.mean.reshape(2, -1), mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(post.covariance, cov.expand(2, 16, 16), rtol=1e-8, atol=1e-10)


def test_mixture_posterior_weights_and_means_follow_bayes_rule():
    g = generator(5)
    prior = two_component_prior(6, g)
    op = random_dense_operator(3, (6,), g)
    op.input_shape = (6,)
    y = op.H(prior.sample(4, g)) + 0.05 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    post = prior.posterior(y, op, 0.05)
    h = op.matrix
    log_evidence = torch.stack([w.log() + MultivariateNormal(h @ m, h @ c @ h.T + 0.0025 * torch.eye(3)).log_prob(y)
                                for w, m, c in zip(prior.weights, prior.means, prior.covariances)], 1)
    torch.testing.assert_close(post.weights, log_evidence.softmax(1), rtol=1e-7, atol=1e-9)
    for k in range(2):
        mean, cov = information_form_posterior(prior.means[k], prior.covariances[k], h, y, 0.05)
        torch.testing.assert_close(post.means[:, k], mean, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(post.covariances[k], cov, rtol=1e-8, atol=1e-10)


def test_noiseless_posterior_is_consistent_with_the_measurement():
    g = generator(6)
    prior = random_gaussian_prior((1, 4, 4), g)
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    y = op.H(prior.sample(1, g))
    post = prior.posterior(y, op, 0.0)
    draws = post.sample(50, generator=g)
    assert draws.shape == (50, 1, 1, 4, 4)
    torch.testing.assert_close(op.H(post.mean), y, rtol=0, atol=1e-9)
    torch.testing.assert_close(op.H(draws[:, 0]), y.expand(50, -1, -1, -1), rtol=0, atol=1e-6)
    assert post.covariance[0].diagonal().min() > 1e-4  # the null space stays uncertain



def test_prior_and_posterior_samples_have_the_exact_moments():
    g = generator(7)
    prior = two_component_prior(4, g)
    assert_moments(prior.sample(4000, g), *mixture_moments(prior))
    op = random_dense_operator(2, (4,), g)
    op.input_shape = (4,)
    post = prior.posterior(torch.tensor([[0.3, -0.2]], dtype=torch.float64), op, 0.1)
    assert_moments(post.sample(4000, generator=g)[:, 0], post.mean[0], post.covariance[0])


def test_fit_recovers_a_known_mixture():
    g = generator(8)
    separated = two_component_prior(3, g)
    truth = GaussianMixturePrior(separated.weights, 2 * separated.means, separated.covariances, ALPHAS_CUMPROD)
    fitted = GaussianMixturePrior.fit(truth.sample(3000, g), 2, ALPHAS_CUMPROD, reg=1e-6, generator=g)
    order = fitted.weights.argsort()
    torch.testing.assert_close(fitted.weights[order], truth.weights, atol=0.03, rtol=0)
    # tolerances ≈ 4 standard errors of moments estimated from ~900 and ~2100 draws
    torch.testing.assert_close(fitted.means[order], truth.means, atol=0.06, rtol=0)
    torch.testing.assert_close(fitted.covariances[order], truth.covariances, atol=0.04, rtol=0)


def test_fit_keeps_image_shape_and_regularises_constant_pixels():
    data = torch.rand(200, 1, 3, 3, generator=generator(9))
    data[:, :, 0, 0] = -1.0  # a pixel that never changes
    fitted = GaussianMixturePrior.fit(data, 3, ALPHAS_CUMPROD, iterations=20, generator=generator(9))
    assert fitted.image_shape == (1, 3, 3)
    assert fitted.eigenvalues.min() >= 1e-3 * 0.999


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixturePrior(torch.ones(2), torch.zeros(2, 3), torch.eye(3)[None], ALPHAS_CUMPROD)
    big = GaussianPrior(torch.zeros(3, 20, 20), torch.eye(1200), ALPHAS_CUMPROD)
    with pytest.raises(ValueError, match="dimensions"):
        big.posterior(torch.zeros(1, 3, 10, 10), degradations.make("sr2", channels=3, image_size=(20, 20)), 0.1)
    small = GaussianPrior(torch.zeros(1, 2, 2), torch.eye(4), ALPHAS_CUMPROD)
    with pytest.raises(ValueError, match="sigma_y"):
        small.posterior(torch.zeros(1, 1, 2, 2), degradations.make("deno", channels=1, image_size=(2, 2)), -1)


@pytest.mark.parametrize("task", ["deno", "sr2", "color", "inp"])
def test_isotropic_prior_equals_the_dense_prior_with_the_same_covariance(task):
    """IsotropicGaussianPrior's O(D) closed forms against the dense, eigendecomposed N(μ, vI)."""
    from ipsolve.models import IsotropicGaussianPrior

    mean = torch.randn(3, 4, 4, dtype=torch.float64, generator=generator(3)) * 0.3
    iso = IsotropicGaussianPrior(mean, 0.3, ALPHAS_CUMPROD)
    dense = GaussianPrior(mean, 0.3 * torch.eye(48, dtype=torch.float64), ALPHAS_CUMPROD)
    x_t = torch.randn(5, 3, 4, 4, dtype=torch.float64, generator=generator(4))
    t = torch.tensor([0, 10, 300, 700, 999])
    torch.testing.assert_close(iso(x_t, t), dense(x_t, t), rtol=1e-12, atol=1e-12)
    op = degradations.make(task, channels=3, image_size=(4, 4), seed=0)
    y = op.H(x_t[:2]) + 0.1 * torch.randn(2, *op.measurement_shape, dtype=torch.float64, generator=generator(5))
    for sigma_y in (0.1, 0.0):
        got, want = iso.posterior(y, op, sigma_y), dense.posterior(y, op, sigma_y)
        torch.testing.assert_close(got.mean, want.mean, rtol=1e-9, atol=1e-10)
    draws = iso.posterior(y, op, 0.1).sample(20000, generator=generator(6))[:, 0].reshape(20000, -1)
    assert_moments(draws, dense.posterior(y, op, 0.1).mean[0].reshape(-1), dense.posterior(y, op, 0.1).covariance[0])


def test_isotropic_prior_takes_large_images_and_dense_ones_are_refused():
    from ipsolve.models import IsotropicGaussianPrior, load_model

    prior = load_model("gaussian:3x256x256")
    assert isinstance(prior, IsotropicGaussianPrior) and prior.image_shape == (3, 256, 256)
    x_t = torch.randn(2, 3, 256, 256, generator=generator(1))
    a = ALPHAS_CUMPROD[500]
    torch.testing.assert_close(prior(x_t, torch.tensor([500, 500])),
                               ((1 - a).sqrt() * x_t / (0.25 * a + 1 - a)).float(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="dense covariance over 12288 values"):
        GaussianPrior(torch.zeros(3, 64, 64), torch.eye(1), ALPHAS_CUMPROD)

"""Test-only helpers for the solver tests: a dense-SVD operator (independent of `degradations`' structured
factors), a linear-β schedule and small exact priors."""
import math

import torch

import degradations
from ipsolve.models import GaussianMixturePrior, GaussianPrior


def linear_alphas_cumprod(steps=1000):
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class DenseOperator:
    """H given as an (m, D) matrix, its SVD from torch.linalg.svd; implements the solvers' spectral protocol."""

    def __init__(self, matrix, input_shape):
        self.input_shape = tuple(input_shape)
        self.matrix = matrix.to(torch.float64)
        self.measurement_shape = (matrix.shape[0],)
        u, s, vh = torch.linalg.svd(self.matrix, full_matrices=True)
        keep = s > 1e-10 * s.max()
        self._u, self._s, self._vh = u[:, keep], s[keep], vh  # rows of vh: kept directions first

    @classmethod
    def copy_of(cls, op):
        """The dense version of any operator, probed through op.H on the standard basis."""
        dim = math.prod(op.input_shape)
        basis = torch.eye(dim, dtype=torch.float64).reshape(dim, *op.input_shape)
        return cls(op.H(basis).reshape(dim, -1).T, op.input_shape)

    def singulars(self):
        return self._s.clone()

    def H(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.to(x).T

    def Vt(self, x):
        return x.reshape(x.shape[0], -1) @ self._vh.to(x).T

    def V(self, z):
        return (z @ self._vh.to(z)).reshape(z.shape[0], *self.input_shape)

    def Ut(self, y):
        return y.reshape(y.shape[0], -1) @ self._u.to(y)

    def U(self, w):
        return w @ self._u.to(w).T


def random_dense_operator(measurements, input_shape, generator):
    """A random (measurements × D) Gaussian matrix as an operator."""
    dim = math.prod(input_shape)
    matrix = torch.randn(measurements, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    return DenseOperator(matrix, input_shape)


def random_gaussian_prior(shape, generator, alphas_cumprod=None, floor=0.02):
    """N(μ, Σ) with a random mean and a random full covariance (eigenvalues ≥ floor)."""
    dim = math.prod(shape)
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    covariance = 0.3 * a @ a.T + floor * torch.eye(dim, dtype=torch.float64)
    mean = 0.3 * torch.randn(dim, generator=generator, dtype=torch.float64)
    return GaussianPrior(mean.reshape(shape), covariance, alphas_cumprod if alphas_cumprod is not None
                         else linear_alphas_cumprod())


def two_component_prior(dim, generator, alphas_cumprod=None):
    """A well-separated two-component mixture in `dim` dimensions, unequal weights and covariances."""
    means = torch.stack([torch.full((dim,), 0.6), torch.full((dim,), -0.4)]).to(torch.float64)
    means[1, ::2] = 0.2
    a = torch.randn(2, dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(4 * dim)
    covariances = a @ a.transpose(1, 2) + 0.01 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixturePrior(torch.tensor([0.3, 0.7]), means, covariances,
                                alphas_cumprod if alphas_cumprod is not None else linear_alphas_cumprod())


def mixture_moments(prior):
    """Exact mean (D,) and covariance (D, D) of a mixture prior."""
    w, means, covs = prior.weights, prior.means, prior.covariances
    mean = (w[:, None] * means).sum(0)
    second = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


class Recorder:
    """Wraps a model: counts calls and records (t, cond) of each; passes cond on only when given."""

    def __init__(self, model):
        self.model, self.alphas_cumprod = model, model.alphas_cumprod
        self.calls = []

    def __call__(self, x, t, *cond):
        self.calls.append((t.clone(), cond[0] if cond else None))
        return self.model(x, t)


def gaussian_problem(name, sigma_y, seed=3, shape=(1, 4, 4), batch=1):
    """A random Gaussian prior, the operator `name` and y = H x + σ_y n for a prior draw x."""
    g = torch.Generator().manual_seed(seed)
    prior = random_gaussian_prior(shape, g)
    op = degradations.make(name, channels=shape[0], image_size=shape[1:])
    clean = op.H(prior.sample(batch, g))
    return prior, op, clean + sigma_y * torch.randn(clean.shape, generator=g, dtype=torch.float64)


def dps_step_by_hand(t, t_next):
    """One DPS step by hand on gaussian_problem("sr2", 0.1) from seeded x_t (generator 10) with the noise
    draw z (generator 11): x̂₀ = μ + M (x_t − √ᾱ μ), M = √ᾱ Σ (ᾱΣ + (1−ᾱ)I)⁻¹, r = y − A x̂₀,
    ∇_{x_t}‖r‖ = −Mᵀ Aᵀ r / ‖r‖; the ancestral step with the posterior variance β̃. Returns (problem, x_t, z,
    the unguided step, the gradient, r): the guided step with weight ζ is `unguided − ζ · gradient`."""
    prior, op, y = gaussian_problem("sr2", 0.1)
    a_mat = DenseOperator.copy_of(op).matrix
    x_t = torch.randn(1, 16, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    z = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    a, a_next = prior.alphas_cumprod[t], prior.alphas_cumprod[t_next]
    mu, sigma = prior.means[0], prior.covariances[0]
    m = a.sqrt() * sigma @ torch.linalg.inv(a * sigma + (1 - a) * torch.eye(16, dtype=torch.float64))
    x0 = mu + (x_t[0] - a.sqrt() * mu) @ m.T
    r = y.reshape(-1) - a_mat @ x0
    grad = -(m.T @ a_mat.T @ r) / r.norm()
    beta = 1 - a / a_next
    mean = (a_next.sqrt() * beta * x0 + (a / a_next).sqrt() * (1 - a_next) * x_t[0]) / (1 - a)
    return (prior, op, y), x_t, z, mean + (beta * (1 - a_next) / (1 - a)).sqrt() * z.reshape(-1), grad, r


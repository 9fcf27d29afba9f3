"""Exact diffusion models: Gaussian and Gaussian-mixture data distributions, for which ε(x_t, t), samples and
the posterior under a linear operator with Gaussian noise are known in closed form. Everything in float64.

For a component N(μ, Σ) and x_t = √ᾱ x₀ + √(1−ᾱ) n, x_t ~ N(√ᾱ μ, C) with C = ᾱΣ + (1−ᾱ)I and the exact
ε = E[n | x_t] = √(1−ᾱ) C⁻¹ (x_t − √ᾱ μ); a mixture weighs these by the responsibilities p(k | x_t).
Covariances are held as eigendecompositions Σ = Q Λ Qᵀ, so C⁻¹ costs one projection per call.
"""
from __future__ import annotations

import math

import torch

MAX_POSTERIOR_DIM = 1024  # dense H and D×D covariances: exact posteriors are for small images only
MAX_DENSE_DIM = 4096  # a D×D covariance and its eigendecomposition: 2·D²·8 bytes (268 MB at 4096)
LOG_2PI = math.log(2 * math.pi)


class GaussianMixturePrior:
    """p(x₀) = Σ_k w_k N(μ_k, Σ_k); calling `prior(x_t, t)` gives the exact ε (a diffusion model).

    weights (K,), means (K, D) or (K, C, H, W), covariances (K, D, D), alphas_cumprod (T,).
    `image_shape` is (C, H, W) when given or read off image-shaped means, else None; x_t may be
    (B, C, H, W) or (B, D).
    """

    def __init__(self, weights, means, covariances, alphas_cumprod, image_shape=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if image_shape is None and means.dim() > 2:
            image_shape = tuple(means.shape[1:])
        self.means = means.reshape(means.shape[0], -1)
        count, dim = self.means.shape
        if dim > MAX_DENSE_DIM:
            raise ValueError(f"a dense covariance over {dim} values needs {2 * dim * dim * 8 / 1e9:.1f} GB and an "
                             f"O(D³) eigendecomposition; at most {MAX_DENSE_DIM} values are allowed: use "
                             f"IsotropicGaussianPrior for σ²I covariances, or a smaller image")
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        covariances = torch.as_tensor(covariances, dtype=torch.float64)
        if self.weights.shape != (count,) or covariances.shape != (count, dim, dim):
            raise ValueError(f"a mixture of {count} components in {dim} dimensions needs weights ({count},) and "
                             f"covariances ({count}, {dim}, {dim}); got {tuple(self.weights.shape)} and "
                             f"{tuple(covariances.shape)}")
        if (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        if image_shape is not None and math.prod(image_shape) != dim:
            raise ValueError(f"image_shape {tuple(image_shape)} does not hold {dim} values")
        self.weights = self.weights / self.weights.sum()
        self.covariances = (covariances + covariances.transpose(1, 2)) / 2
        eigenvalues, self.eigenvectors = torch.linalg.eigh(self.covariances)
        self.eigenvalues = eigenvalues.clamp_min(0)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.image_shape = None if image_shape is None else tuple(int(n) for n in image_shape)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def __call__(self, x_t, t):
        """Exact ε(x_t, t) = E[noise | x_t] for t a (B,) tensor of timesteps; same shape and dtype as x_t."""
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"the prior is over {self.dim} values per sample, x_t has {x.shape[1]}")
        means, eigenvalues, eigenvectors = (p.to(x.device) for p in (self.means, self.eigenvalues, self.eigenvectors))
        a = self.alphas_cumprod.to(x.device)[torch.as_tensor(t, device=x.device).reshape(-1)].reshape(-1, 1, 1)
        # in each component's eigenbasis: p = Qᵀ(x_t − √ᾱ μ), C = diag(ᾱλ + 1 − ᾱ)
        p = torch.einsum("bkd,kde->bke", x[:, None, :] - a.sqrt() * means, eigenvectors)
        c = a * eigenvalues + (1 - a)
        log_resp = self.weights.to(x.device).log() - 0.5 * (p**2 / c + c.log()).sum(-1)
        resp = log_resp.softmax(dim=1)
        eps = (1 - a).sqrt() * torch.einsum("bke,kde->bkd", p / c, eigenvectors)
        return (resp[..., None] * eps).sum(1).reshape(x_t.shape).to(x_t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n draws from the prior: (n, C, H, W) with an image_shape, else (n, D)."""
        factors = self.eigenvectors * self.eigenvalues.sqrt()[:, None, :]
        draws = _sample_mixture(self.weights[None], self.means[None], factors, n, generator)[:, 0]
        return draws.reshape(n, *(self.image_shape or (self.dim,)))

    def posterior(self, y, op, sigma_y):
        """The exact p(x₀ | y) for y = H x₀ + σ_y n, H the linear `op` (probed into a dense matrix).

        σ_y = 0 is allowed: the measurement covariance H Σ Hᵀ + σ_y² I is pseudo-inverted (the likelihood
        then uses the pseudo-determinant). Only for D ≤ MAX_POSTERIOR_DIM.
        """
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
        shape = tuple(op.input_shape)
        if math.prod(shape) != self.dim:
            raise ValueError(f"the operator takes {shape} images, the prior is over {self.dim} values")
        if self.dim > MAX_POSTERIOR_DIM:
            raise ValueError(f"exact posteriors are for at most {MAX_POSTERIOR_DIM} dimensions, not {self.dim}: "
                             "use smaller images")
        device = y.device
        h = _dense_matrix(op, shape, device)
        y = y.reshape(y.shape[0], -1).to(torch.float64)
        means, covariances = self.means.to(device), self.covariances.to(device)
        noise_cov = sigma_y**2 * torch.eye(h.shape[0], dtype=torch.float64, device=device)
        log_weights, post_means, post_covs = [], [], []
        for mean, cov, weight in zip(means, covariances, self.weights.to(device)):
            s_pinv, log_det = _pinv_and_log_det(h @ cov @ h.T + noise_cov)
            gain = cov @ h.T @ s_pinv
            residual = y - mean @ h.T
            log_weights.append(weight.log() - 0.5 * (((residual @ s_pinv) * residual).sum(1) + log_det))
            post_means.append(mean + residual @ gain.T)
            post_cov = cov - gain @ h @ cov
            post_covs.append((post_cov + post_cov.T) / 2)
        weights = torch.stack(log_weights, 1).softmax(dim=1)
        return GaussianMixturePosterior(weights, torch.stack(post_means, 1), torch.stack(post_covs), shape)

    @classmethod
    def fit(cls, data, n_components: int, alphas_cumprod, iterations: int = 100, reg: float = 1e-3,
            tol: float = 1e-7, generator: torch.Generator | None = None):
        """Maximum-likelihood mixture by EM on `data` (N, D) or (N, C, H, W); reg is added to every
        covariance's diagonal (it keeps constant pixels from making a component singular). Means start at
        distinct random data points; stops after `iterations` or when the mean log-likelihood gains < tol."""
        x = torch.as_tensor(data, dtype=torch.float64)
        image_shape = tuple(x.shape[1:]) if x.dim() > 2 else None
        x = x.reshape(x.shape[0], -1)
        count, dim = x.shape
        if not 1 <= n_components <= count:
            raise ValueError(f"n_components must lie in 1…{count} (the number of samples), got {n_components}")
        eye = torch.eye(dim, dtype=torch.float64)
        means = x[torch.randperm(count, generator=generator)[:n_components]]
        covs = (torch.cov(x.T).reshape(dim, dim) + reg * eye).expand(n_components, dim, dim).clone()
        weights = torch.full((n_components,), 1 / n_components, dtype=torch.float64)
        previous = -math.inf
        for _ in range(iterations):
            log_joint = _log_gaussians(x, means, covs) + weights.log()
            log_likelihood = log_joint.logsumexp(1).mean().item()
            resp = (log_joint - log_joint.logsumexp(1, keepdim=True)).exp()
            totals = resp.sum(0) + 1e-12
            weights = totals / count
            means = resp.T @ x / totals[:, None]
            centred = x[None] - means[:, None]
            covs = torch.einsum("nk,knd,kne->kde", resp, centred, centred) / totals[:, None, None] + reg * eye
            if log_likelihood - previous < tol * abs(log_likelihood):
                break
            previous = log_likelihood
        return cls(weights, means, covs, alphas_cumprod, image_shape)


class GaussianPrior(GaussianMixturePrior):
    """p(x₀) = N(mean, covariance): the one-component mixture. mean (D,) or (C, H, W); covariance (D, D)."""

    def __init__(self, mean, covariance, alphas_cumprod, image_shape=None):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        super().__init__(torch.ones(1), mean[None], torch.as_tensor(covariance, dtype=torch.float64)[None],
                         alphas_cumprod, image_shape)


class IsotropicGaussianPrior:
    """p(x₀) = N(mean, variance · I): every closed form in O(D) time and memory, for any image size.

    x_t ~ N(√ᾱ μ, (ᾱv + 1 − ᾱ) I), so the exact ε = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱv + 1 − ᾱ).
    mean (C, H, W) or (D,), variance a positive number, alphas_cumprod (T,).
    """

    def __init__(self, mean, variance: float, alphas_cumprod, image_shape=None):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if not variance > 0:
            raise ValueError(f"the prior variance must be positive, got {variance}")
        self.image_shape = tuple(int(n) for n in (image_shape or mean.shape))
        if len(self.image_shape) != 3 or math.prod(self.image_shape) != mean.numel():
            raise ValueError(f"give mean as a (C, H, W) image or with image_shape=(C, H, W); got {tuple(mean.shape)}")
        self.mean = mean.reshape(self.image_shape)
        self.variance = torch.tensor(float(variance), dtype=torch.float64)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def __call__(self, x_t, t):
        a = self.alphas_cumprod.to(x_t.device)[torch.as_tensor(t, device=x_t.device).reshape(-1)]
        a = a.reshape(-1, 1, 1, 1)
        x = x_t.reshape(x_t.shape[0], *self.image_shape).to(torch.float64)
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.mean.to(x.device)) / (a * self.variance + 1 - a)
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None):
        z = torch.randn(n, *self.image_shape, dtype=torch.float64, generator=generator)
        return self.mean + self.variance.sqrt() * z

    def posterior(self, y, op, sigma_y):
        """Exact p(x₀ | y) for y = H x₀ + σ_y n with an SVD operator H = U diag(s) Vᵀ: in the spectral
        coordinates c = Vᵀx₀ the prior stays N(Vᵀμ, vI) and each observed coordinate i meets u_i = s_i c_i
        + σ_y n_i on its own, so the posterior is diagonal there (σ_y = 0: c_i = u_i / s_i exactly)."""
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
        y = y.to(torch.float64)
        prior_mean = op.Vt(self.mean[None].to(y.device)).expand(y.shape[0], -1)
        s = op.singulars().to(y)
        k = s.numel()
        u = op.Ut(y)[:, :k]
        v = self.variance.to(y)
        observed_var = torch.where(s > 0, v * sigma_y**2 / (sigma_y**2 + v * s**2), v)
        gain = torch.where(s > 0, v * s / (sigma_y**2 + v * s**2), 0)
        mean = prior_mean.clone()
        mean[:, :k] = prior_mean[:, :k] + gain * (u - s * prior_mean[:, :k])
        variance = torch.full_like(prior_mean[0], float(v))
        variance[:k] = observed_var
        return IsotropicGaussianPosterior(op, mean, variance, self.image_shape)


class IsotropicGaussianPosterior:
    """N(V m, V diag(w) Vᵀ): the posterior of an isotropic prior under an SVD operator, kept spectral."""

    def __init__(self, op, spectral_mean, spectral_variance, image_shape):
        self.op, self.spectral_mean, self.spectral_variance = op, spectral_mean, spectral_variance
        self.image_shape = tuple(image_shape)

    @property
    def mean(self):
        """E[x₀ | y], (B, C, H, W)."""
        return self.op.V(self.spectral_mean).reshape(-1, *self.image_shape)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n exact posterior draws per measurement: (n, B, C, H, W)."""
        batch, dim = self.spectral_mean.shape
        z = torch.randn(n * batch, dim, dtype=torch.float64, generator=generator).to(self.spectral_mean.device)
        spectral = self.spectral_mean.repeat(n, 1) + self.spectral_variance.sqrt() * z
        return self.op.V(spectral).reshape(n, batch, *self.image_shape)


class GaussianMixturePosterior:
    """p(x₀ | y) = Σ_k w_k(y) N(m_k(y), P_k) for each of B measurements.

    weights (B, K), means (B, K, D), covariances (K, D, D) (they do not depend on y).
    """

    def __init__(self, weights, means, covariances, image_shape):
        self.weights, self.means, self.covariances = weights, means, covariances
        self.image_shape = tuple(image_shape)

    @property
    def mean(self):
        """E[x₀ | y], (B, C, H, W): the MMSE estimate."""
        mean = (self.weights[..., None] * self.means).sum(1)
        return mean.reshape(-1, *self.image_shape)

    @property
    def covariance(self):
        """Cov[x₀ | y], (B, D, D)."""
        mean = (self.weights[..., None] * self.means).sum(1)
        second = torch.einsum("bk,kde->bde", self.weights, self.covariances) + torch.einsum(
            "bk,bkd,bke->bde", self.weights, self.means, self.means)
        return second - mean[:, :, None] * mean[:, None, :]

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n exact posterior draws per measurement: (n, B, C, H, W)."""
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariances)
        factors = eigenvectors * eigenvalues.clamp_min(0).sqrt()[:, None, :]
        draws = _sample_mixture(self.weights, self.means, factors, n, generator)
        return draws.reshape(n, -1, *self.image_shape)


def _sample_mixture(weights, means, factors, n, generator):
    """n draws per row of a batch of mixtures: weights (B, K), means (B, K, D), factors F_k (K, D, D) with
    F_k F_kᵀ the covariances → (n, B, D)."""
    batch, _, dim = means.shape
    components = torch.multinomial(weights, n, replacement=True, generator=generator).T  # (n, B)
    z = torch.randn(n, batch, dim, dtype=means.dtype, device=means.device, generator=generator)
    draws = torch.empty_like(z)
    rows = torch.arange(batch, device=means.device).expand(n, batch)
    for k, factor in enumerate(factors):
        chosen = components == k
        draws[chosen] = means[rows[chosen], k] + z[chosen] @ factor.T
    return draws


def _dense_matrix(op, shape, device):
    """H as an (m, D) float64 matrix, by applying the operator to the standard basis."""
    dim = math.prod(shape)
    basis = torch.eye(dim, dtype=torch.float64, device=device).reshape(dim, *shape)
    return op.H(basis).reshape(dim, -1).T


def _pinv_and_log_det(matrix, rtol=1e-12):
    """Pseudo-inverse and log pseudo-determinant of a symmetric PSD matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    kept = eigenvalues > rtol * eigenvalues.max().clamp_min(1e-300)
    inverse = torch.where(kept, 1 / torch.where(kept, eigenvalues, 1), 0)
    return (eigenvectors * inverse) @ eigenvectors.T, eigenvalues[kept].log().sum()


def _log_gaussians(x, means, covs):
    """log N(x_n; μ_k, Σ_k) → (N, K), through Cholesky factors."""
    chol = torch.linalg.cholesky(covs)
    centred = (x[None] - means[:, None]).transpose(1, 2)  # (K, D, N)
    solved = torch.linalg.solve_triangular(chol, centred, upper=False)
    log_det = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(-1)
    return (-0.5 * ((solved**2).sum(1) + log_det[:, None] + x.shape[1] * LOG_2PI)).T
